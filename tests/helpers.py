"""What several test files use: the adapt-then-score source the static tests audit, the line of a
marked statement, and how an expected function name matches a finding's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rules.train_before_score import CHUNK_HELPERS, adapt_then_score  # noqa: F401 - sources the static tests audit


def marker_line(path: str | Path, marker: str) -> int:
    """The line number (1-based) of the one statement in `path` that ends with `# <marker>`."""
    lines = Path(path).read_text().splitlines()
    hits = [i + 1 for i, s in enumerate(lines) if s.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def function_matches(found: str | None, wanted: str) -> bool:
    """`wanted` names a function; a qualified name (Class.method, outer.<locals>.inner) matches
    on its last components."""
    if not found:
        return False
    return found == wanted or found.endswith("." + wanted)


def run_fresh(code: str, timeout: int = 120) -> list[str]:
    """Run `code` in a fresh interpreter (what it puts in sys.modules stays there); the lines it
    printed. A non-zero exit fails the calling test with the interpreter's stderr."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()
