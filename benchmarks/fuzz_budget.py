"""The long fuzz budget: >= 10,000 generated inputs through the static analyzer, the unpacker and
the log parser (the strategies and checks of tests/test_fuzz.py), with fresh randomness.

    OMP_NUM_THREADS=1 nice -n 10 timeout 3600 python benchmarks/fuzz_budget.py [--scale 1.0] [--seed N]

Each target runs in its own subprocess, which writes every input to a scratch file before checking
it: a hard crash (a segfault in a native parser) is reported with the input that caused it, like
any other failure. Every failing input is saved under tests/fuzz_regressions/ (test_fuzz.py
replays them). Prints one line per target (cases, failures, slowest case, seconds) and a total;
exit 1 when anything failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
# which regression target each fuzz target's inputs replay through
KIND = {"random_python": "source", "mutated_scripts": "source", "packs_static_audit": "source",
        "bytes_as_train_script": "folder", "packs_unpacker": "unpack", "logs": "log"}


def child(name: str, n: int, seed: int | None, last_path: str) -> dict:
    sys.path[:0] = [str(ROOT), str(TESTS)]
    import test_fuzz as T
    from hypothesis import given, settings
    from hypothesis import seed as hseed

    strategy, check, _ = T.LONG_TARGETS[name]
    stats = {"cases": 0, "slowest_s": 0.0, "failure": None, "saved": None}
    last = {"value": None}

    def remember(value) -> None:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        with open(last_path, "wb") as fh:
            fh.write(raw)

    @settings(max_examples=n, derandomize=False, **T._COMMON)
    @given(strategy)
    def run(value):
        stats["cases"] += 1
        last["value"] = value
        remember(value)
        t0 = time.perf_counter()
        check(value)
        stats["slowest_s"] = max(stats["slowest_s"], time.perf_counter() - t0)

    if seed is not None:
        run = hseed(seed)(run)
    try:
        run()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failing case: keep its (shrunk) input
        stats["failure"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        if last["value"] is not None:
            stats["saved"] = str(T.save_regression(KIND[name], last["value"], label=name))
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every target's case count")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--only", default="", help="comma-separated targets")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--last", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.seed, args.last)), flush=True)
        return 0

    sys.path[:0] = [str(ROOT), str(TESTS)]
    import test_fuzz as T

    names = [n for n in T.LONG_TARGETS if not args.only or n in args.only.split(",")]
    total_cases, failures, t_all = 0, [], time.perf_counter()
    print(f"{'target':24s} {'cases':>7s} {'failures':>8s} {'slowest':>8s} {'seconds':>8s}")
    for name in names:
        n = max(1, int(T.LONG_TARGETS[name][2] * args.scale))
        last = Path(tempfile.mkstemp(prefix=f"fuzz-{name}-", suffix=".last")[1])
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--n", str(n), "--last", str(last)]
        if args.seed is not None:
            cmd += ["--seed", str(args.seed)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT),
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])})
        dt = time.perf_counter() - t0
        out_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and out_lines:
            stats = json.loads(out_lines[-1])
        else:  # the child died (signal, OOM): the input it was checking is in `last`
            stats = {"cases": None, "slowest_s": None, "saved": None,
                     "failure": f"subprocess died with code {proc.returncode}: {proc.stderr.strip()[-300:]}"}
            if last.exists() and last.stat().st_size:
                stats["saved"] = str(T.save_regression(KIND[name], last.read_bytes(), label=f"{name}-crash"))
        last.unlink(missing_ok=True)
        cases = stats["cases"] or 0
        total_cases += cases
        slow = f"{stats['slowest_s']:.2f}s" if stats.get("slowest_s") is not None else "?"
        print(f"{name:24s} {cases:7d} {1 if stats['failure'] else 0:8d} {slow:>8s} {dt:8.1f}", flush=True)
        if stats["failure"]:
            failures.append((name, stats["failure"], stats.get("saved")))
    print(f"{'total':24s} {total_cases:7d} {len(failures):8d} {'':>8s} {time.perf_counter() - t_all:8.1f}")
    for name, why, saved in failures:
        print(f"FAILED {name}: {why}" + (f"\n  input kept: {saved}" if saved else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
