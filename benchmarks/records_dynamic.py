"""Run the dynamic audit over many submission folders (e.g. the challenge's merged records,
extracted to a temp dir) and print one row per folder: wall time, verdict, findings, and why a
run did not complete. Nothing is written into this repository.

    python benchmarks/records_dynamic.py /tmp/pg/records/track_10min_16mb/*/ [--budget 4]
        [--no-probes] [--json OUT.json]

Verdicts: "clean" (exit 0), "findings" (exit 1, medium or worse), "not audited" (exit 3, with the
first reason). The summary line counts runs that completed (clean or findings).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def audit_one(folder: Path, budget: int, probes: bool) -> dict:
    from harness.dynamic.audit import run_dynamic

    t0 = time.perf_counter()
    try:
        res = run_dynamic(folder, {"probe_budget": budget, "probes": probes})
    except Exception as exc:  # noqa: BLE001 - a harness bug is a row, not a crash of the batch
        return {"folder": folder.name, "wall_s": round(time.perf_counter() - t0, 1), "verdict": "harness error",
                "reason": f"{type(exc).__name__}: {exc}"}
    code = int(res.exit_code())
    active = [f for f in res.active_findings if f.severity.value >= 2]
    verdict = {0: "clean", 1: "findings", 3: "not audited"}.get(code, f"exit {code}")
    return {
        "folder": folder.name,
        "wall_s": round(time.perf_counter() - t0, 1),
        "trace_run_s": res.stats.get("trace_run_wall_s"),
        "verdict": verdict,
        "findings": sorted({f"{f.rule}@{f.location.function or '?'}" for f in active}),
        "low": sorted({f.rule for f in res.active_findings if f.severity.value < 2}),
        "coverage_pct": res.stats.get("coverage_pct"),
        "passes": len(res.stats.get("passes") or []),
        "reason": res.not_audited[0].reason if res.not_audited else "",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--budget", type=int, default=4, help="probe runs per audit (default 4)")
    ap.add_argument("--no-probes", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = []
    for folder in args.folders:
        if not folder.is_dir():
            continue
        row = audit_one(folder, args.budget, not args.no_probes)
        rows.append(row)
        print(f"{row['folder'][:60]:60} {row['wall_s']:7.1f}s  {row['verdict']:12} "
              f"{','.join(row.get('findings') or [])} {row.get('reason', '')[:160]}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    done = [r for r in rows if r["verdict"] in ("clean", "findings")]
    walls = sorted(r["wall_s"] for r in rows)
    median = walls[len(walls) // 2] if walls else 0.0
    print(f"\n{len(done)}/{len(rows)} completed ({100.0 * len(done) / max(len(rows), 1):.0f}%); "
          f"clean {sum(r['verdict'] == 'clean' for r in rows)}, findings {sum(r['verdict'] == 'findings' for r in rows)}, "
          f"not audited {sum(r['verdict'] == 'not audited' for r in rows)}; median wall {median:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
