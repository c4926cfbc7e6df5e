"""The numpy bigram-mix fixtures are generated from baseline_sliding: the committed files must be
what the generator writes (so a change to the base fixture cannot leave them stale)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GENERATOR = Path(__file__).resolve().parents[1] / "submissions" / "numpy_bigram_mix" / "make_fixtures.py"


def test_numpy_mix_fixtures_are_up_to_date():
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout
