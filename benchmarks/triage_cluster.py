"""The same PR list through `golf-audit triage` on the local pool and on a Dask LocalCluster
(processes, one thread each, the same number of workers), without the cache; prints both wall
times and the ratio cluster/local measured in this one run, and checks the verdicts agree.

    python benchmarks/triage_cluster.py [REPO] [--prs 713,1376,...] [--jobs 2] [--claims] [--dynamic]

REPO defaults to the challenge mirror (/work/.mirror/openai+parameter-golf/repo) when present,
else a fake repository built by tests/triage_fake_repo.py in a temp dir. The cluster time is
given with and without the LocalCluster's start-up. Nothing is written into this repository."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MIRROR = "/work/.mirror/openai+parameter-golf/repo"
DEFAULT_PRS = "713,1376,1443,2058,1514,1050,968,705"


def main(argv: list[str] | None = None) -> int:
    from harness.triage.pool import DaskRunner, LocalPool
    from harness.triage.run import TriageOptions, triage

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", nargs="?", default=None)
    ap.add_argument("--prs", default=None, help=f"PR numbers (default on the mirror: {DEFAULT_PRS}; on the fake repo: all)")
    ap.add_argument("--jobs", type=int, default=2, help="workers on both sides (default 2)")
    ap.add_argument("--claims", action="store_true")
    ap.add_argument("--dynamic", action="store_true")
    ap.add_argument("--json", default=None, help="write both runs' per-PR verdicts and times here")
    args = ap.parse_args(argv)

    tmp = None
    repo = args.repo
    if repo is None and Path(MIRROR).exists():
        repo, prs = MIRROR, args.prs or DEFAULT_PRS
    elif repo is None:
        sys.path.insert(0, str(ROOT / "tests"))
        import triage_fake_repo

        tmp = tempfile.TemporaryDirectory(prefix="triage-bench-")
        repo, prs = str(triage_fake_repo.build(Path(tmp.name) / "repo")), args.prs
    else:
        prs = args.prs
    numbers = [int(x) for x in prs.split(",")] if prs else None

    def opts() -> TriageOptions:
        return TriageOptions(repo=repo, prs=numbers, claims=args.claims, dynamic=args.dynamic, jobs=args.jobs)

    t0 = time.perf_counter()
    local = triage(opts(), runner=LocalPool(args.jobs))
    t_local = time.perf_counter() - t0

    runner = DaskRunner(None, workers=args.jobs)
    t0 = time.perf_counter()
    try:
        runner.start()
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        cluster = triage(opts(), runner=runner)
        t_run = time.perf_counter() - t1
    finally:
        runner.close()
    t_cluster = t_start + t_run

    same = {r["pr"]: r["verdict"] for r in local["prs"]} == {r["pr"]: r["verdict"] for r in cluster["prs"]}
    by_pr = {r["pr"]: r for r in cluster["prs"]}
    print(f"{'PR':>6}  {'local':18} {'s':>7}  {'cluster':18} {'s':>7}")
    for r in local["prs"]:
        c = by_pr.get(r["pr"], {})
        mark = "" if c.get("verdict") == r["verdict"] else "  <- differs"
        print(f"{r['pr']:>6}  {r['verdict']:18} {r.get('time_s') or 0:7.1f}  {c.get('verdict', '-'):18} "
              f"{c.get('time_s') or 0:7.1f}{mark}")
    n = len(local["prs"])
    audited = local["timing"]["audited"]
    print(f"PRs: {n} ({audited} audits), workers: {args.jobs}, layers: static"
          f"{' + dynamic' if args.dynamic else ''}{' + claims' if args.claims else ''}")
    print(f"local pool        {t_local:8.1f} s")
    print(f"Dask LocalCluster {t_cluster:8.1f} s  (start-up {t_start:.1f} s + triage {t_run:.1f} s)")
    print(f"ratio cluster/local: {t_cluster / t_local:.2f} (without start-up: {t_run / t_local:.2f})")
    print(f"same verdicts: {same}")
    if args.json:
        import json

        rows = [{"pr": r["pr"], "local": r["verdict"], "local_s": r.get("time_s"),
                 "cluster": by_pr.get(r["pr"], {}).get("verdict"), "cluster_s": by_pr.get(r["pr"], {}).get("time_s"),
                 "not_audited": r.get("not_audited")} for r in local["prs"]]
        Path(args.json).write_text(json.dumps({"local_s": t_local, "cluster_s": t_cluster, "cluster_start_s": t_start,
                                               "same": same, "prs": rows}, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
