"""What the black-box code-length probe costs, as a ratio to one run of the submission.

For each folder: one untraced toy run (train at toy scale + eval: what each probe run repeats),
then the dynamic audit with the probe forced on (`blackbox="always"`); prints the probe's wall
time, its number of runs and the ratio probe / one run, measured in this one process.

    OMP_NUM_THREADS=1 python benchmarks/blackbox_cost.py submissions/numpy_bigram_mix submissions/baseline_sliding
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from harness.challenge.flags import submission_flags
from harness.dynamic import audit as A


def main(folders: list[str]) -> int:
    print(f"{'folder':34} {'one run s':>10} {'probe s':>9} {'runs':>5} {'ratio':>7}  verdict")
    for name in folders:
        folder = Path(name)
        opts = {**A.DEFAULTS, "blackbox": "always"}
        data = A.toy_data(opts)
        env = submission_flags(folder)
        t0 = time.perf_counter()
        A._run(folder, env, data, opts, trace=False)
        one = time.perf_counter() - t0
        res = A.run_dynamic(folder, {"blackbox": "always"})
        bb = res.stats.get("blackbox") or {}
        wall = float(res.stats.get("blackbox_wall_s") or 0.0)
        runs = len((bb.get("candidates") or [])) + 2 if not bb.get("not_run") else 0
        verdict = bb.get("not_run") or f"sum {bb.get('sum_p', float('nan')):.4f}"
        print(f"{folder.name:34} {one:10.1f} {wall:9.1f} {runs:5d} {wall / one if one else float('nan'):7.2f}  {verdict[:60]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["submissions/numpy_bigram_mix"]))
