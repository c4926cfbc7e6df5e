"""The fused verdict on real submissions, one row per folder: what each layer said and what
the user is told. Runs `golf-audit --dynamic --format json` (default options, as a new user
would) on each folder in a subprocess and prints

    label  static  trace  probes  fused  seconds

static / trace / probe: that layer's findings at medium or worse (rule@line, with the fused
status: P proven, S suspected, R refuted), or what stopped it; fused: the exit code's meaning.
Nothing is written into this repository; extract the folders outside it first, e.g.

    python benchmarks/real_prs.py 770=/tmp/pr/770/records/track_10min_16mb/2026-03-25_X ... \
        [--json OUT.json] [--static-only]

A label is optional (`LABEL=PATH`); without one the folder's name is used.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXIT = {0: "clean", 1: "flagged", 2: "usage", 3: "not audited"}
STATUS = {"proven": "P", "suspected": "S", "refuted": "R"}


def run_one(folder: Path, dynamic: bool, timeout: int) -> tuple[int, dict | None, float, str]:
    cmd = [sys.executable, "-m", "harness.cli", "--no-cache", "--format", "json", str(folder)]
    if dynamic:
        cmd.insert(3, "--dynamic")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return -1, None, time.perf_counter() - t0, f"timed out after {timeout}s"
    wall = time.perf_counter() - t0
    try:
        return p.returncode, json.loads(p.stdout), wall, ""
    except json.JSONDecodeError:
        return p.returncode, None, wall, (p.stderr or p.stdout).strip().splitlines()[-1:][0][:200] if (p.stderr or p.stdout).strip() else "no output"


def layer_cell(findings: list[dict], layer: str) -> str:
    cells = sorted({f"{f['rule']}@{f['location'].get('line') or '?'}{STATUS.get(f.get('status', ''), '')}"
                    for f in findings if f.get("layer") == layer and f["severity"] in ("medium", "high")})
    return ",".join(cells) or "-"


def row_for(label: str, folder: Path, dynamic: bool, timeout: int) -> dict:
    code, report, wall, err = run_one(folder, dynamic, timeout)
    row = {"label": label, "folder": str(folder), "exit": code, "fused": EXIT.get(code, f"exit {code}"),
           "seconds": round(wall, 1)}
    if report is None:
        row.update(static=err, trace="", probe="", not_audited=[err])
        return row
    res = report["results"][0]
    fs = res.get("findings", [])
    row["static"] = layer_cell(fs, "static")
    row["trace"] = layer_cell(fs, "trace")
    row["probe"] = layer_cell(fs, "probe")
    bb = (res.get("stats") or {}).get("blackbox") or {}
    if bb:
        row["blackbox"] = (f"sum_p={bb.get('sum_p'):.4f}/{len(bb.get('candidates') or [])}"
                           if not bb.get("not_run") else f"not run: {bb['not_run'][:120]}")
    stats = res.get("stats") or {}
    # where the time went: the traced run, the black-box probe, the causality/properness probes
    # (probe_wall_s sums its runs, two at a time)
    row["stages_s"] = {k: stats[k] for k in ("trace_run_wall_s", "blackbox_wall_s", "probe_wall_s", "dynamic_wall_s")
                       if k in stats}
    row["not_audited"] = [n.get("reason", "")[:200] for n in res.get("not_audited", [])]
    row["low"] = sorted({f"{f['rule']}{STATUS.get(f.get('status', ''), '')}" for f in fs if f["severity"] == "low"})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="[LABEL=]PATH")
    ap.add_argument("--static-only", action="store_true", help="no --dynamic")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per folder (default 900)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = []
    print(f"{'label':8} {'fused':12} {'s':>6}  static | trace | probe | black-box | not audited", flush=True)
    for item in args.folders:
        label, _, path = item.rpartition("=")
        folder = Path(path)
        row = row_for(label or folder.name, folder, not args.static_only, args.timeout)
        rows.append(row)
        print(f"{row['label'][:8]:8} {row['fused']:12} {row['seconds']:6.0f}  {row['static']} | {row['trace']} | "
              f"{row['probe']} | {row.get('blackbox', '-')} | {'; '.join(row['not_audited'])[:200]}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    counts = {v: sum(r["fused"] == v for r in rows) for v in sorted({r["fused"] for r in rows})}
    walls = sorted(r["seconds"] for r in rows)
    print(f"\n{len(rows)} folders: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f"; median {walls[len(walls) // 2] if walls else 0:.0f}s, max {walls[-1] if walls else 0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
