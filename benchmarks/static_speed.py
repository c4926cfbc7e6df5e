"""Static audit time / bare `libcst.parse_module` time, median over interleaved runs, in one process.

    python benchmarks/static_speed.py [SCRIPT ...]

It always measures the largest fixture under submissions/ (or says it skipped it), then every
script given: pass a real ~1,700-line contest script (e.g. PR #713's train_gpt.py from a clone of
openai/parameter-golf); none is bundled here. Prints one `ratio: X` line per script (target: <= 2).
"Full audit" is `audit_source`: unpacking, one LibCST parse, the fact index, every static rule.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import libcst

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.static.audit import audit_source  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(path: Path, runs: int = 7) -> float:
    """Parse and audit run in turn, `runs` times each: this machine's speed drifts by up to 2x
    within a minute, and a drift between two blocks of runs moved the ratio by 0.2. The ratio
    is the median of the pairs' ratios."""
    source = path.read_text(encoding="utf-8")
    audit_source(source, path.name)  # warm imports and the rule registry
    pairs = [(timed(lambda: libcst.parse_module(source)), timed(lambda: audit_source(source, path.name)))
             for _ in range(runs)]
    parse = statistics.median(p for p, _ in pairs)
    audit = statistics.median(a for _, a in pairs)
    ratio = statistics.median(a / p for p, a in pairs)
    lines = source.count("\n") + 1
    print(f"{path} ({lines} lines): parse {parse:.3f}s, full audit {audit:.3f}s (medians of {runs})")
    print(f"ratio: {ratio:.2f}")
    return ratio


def main(argv: list[str]) -> int:
    fixtures = sorted(REPO.glob("submissions/*/train_gpt.py"), key=lambda p: p.stat().st_size)
    if fixtures:
        measure(fixtures[-1])
    else:
        print("no fixture under submissions/: skipped")
    for arg in argv:
        path = Path(arg)
        if not path.is_file():
            print(f"{path}: not found, skipped")
            continue
        measure(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
