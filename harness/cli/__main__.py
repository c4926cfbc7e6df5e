"""`python -m harness.cli`: the `golf-audit` command."""
import sys

from harness.cli.audit import main

sys.exit(main())
