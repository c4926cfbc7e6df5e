"""Static audit time / bare `libcst.parse_module` time, median of several runs, in one process.

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


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(path: Path, runs: int = 5) -> float:
    source = path.read_text(encoding="utf-8")
    audit_source(source, path.name)  # warm imports and the rule registry
    parse = median_time(lambda: libcst.parse_module(source), runs)
    audit = median_time(lambda: audit_source(source, path.name), runs)
    lines = source.count("\n") + 1
    print(f"{path} ({lines} lines): parse {parse:.3f}s, full audit {audit:.3f}s")
    print(f"ratio: {audit / parse:.2f}")
    return audit / parse


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
