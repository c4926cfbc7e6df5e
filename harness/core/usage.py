"""The argument parser every command uses: a usage error is one line and exit code 2
(ExitCode.USAGE), the same for golf-audit, its subcommands and golf-eval."""
from __future__ import annotations

import argparse

from harness.core.findings import ExitCode


class UsageParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 already; keep the message to one line
        self.exit(ExitCode.USAGE, f"{self.prog}: usage error: {message}\n")
