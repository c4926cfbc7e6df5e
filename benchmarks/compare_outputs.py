"""Capture the tool's machine outputs on the bundled fixtures, or compare two captures.

A restructure must not change what users see. This runs the commands whose output is a
contract (`golf-audit --format json` static and `--dynamic`, SARIF, `golf-eval verify`, the
CI gate's `verdict.json` and `summary.md`) and writes each output to DIR; `--compare A B`
reports every file that differs. Timings and temp paths are masked, nothing else.

    python benchmarks/compare_outputs.py capture /tmp/before
    python benchmarks/compare_outputs.py capture /tmp/after
    python benchmarks/compare_outputs.py compare /tmp/before /tmp/after
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
       "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z", "OMP_NUM_THREADS": "1"}
# Values that legitimately differ between two runs of the same code.
VOLATILE_KEYS = {"seconds", "wall_s", "elapsed_s", "duration_s", "time_s", "started", "finished",
                 "timestamp", "cache_dir", "scratch", "tmp"}


def volatile(key: str) -> bool:
    return key in VOLATILE_KEYS or key.endswith("_wall_s")


def mask(value):
    if isinstance(value, dict):
        return {k: ("<volatile>" if volatile(k) else mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    if isinstance(value, str):
        value = re.sub(r"/tmp/[A-Za-z0-9_.\-/]+", "<tmp>", value)
        value = re.sub(r"RUN_ID=(?:<run>)?[\w-]+", "RUN_ID=<run>", value)  # a uuid per run (also in older captures)
        value = re.sub(r"\b\d+ms\b", "<t>ms", value)
        return re.sub(r"\b\d+(\.\d+)? ?s\b", "<t>s", value)
    return value


def load_masked(path: Path) -> str:
    """A capture re-masked on load, so a mask added later applies to older captures too."""
    text = path.read_text()
    if path.suffix == ".json":
        text = json.dumps(mask(json.loads(text)), indent=1, sort_keys=True)
    else:
        text = mask(text)
    if path.name.startswith("gate_"):  # commit ids of the throwaway repository
        text = re.sub(r"\b[0-9a-f]{12}(?:[0-9a-f]{28})?\b", "<sha>", text)
    return text


def run(args: list[str], cwd: Path = ROOT) -> tuple[int, str]:
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    return proc.returncode, proc.stdout


def write_json(out: Path, name: str, rc: int, text: str) -> None:
    try:
        body = mask(json.loads(text))
    except json.JSONDecodeError:
        body = {"unparsed": mask(text)}
    (out / f"{name}.json").write_text(json.dumps({"exit": rc, "output": body}, indent=1, sort_keys=True))


def gate(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        (repo / "records/track_10min_16mb").mkdir(parents=True)
        (repo / "README.md").write_text("challenge\n")
        git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], env=ENV, check=True, capture_output=True)
        git("init", "-q", "-b", "main")
        git("add", "-A")
        git("commit", "-q", "-m", "base")
        git("checkout", "-q", "-b", "pr")
        shutil.copytree(ROOT / "submissions/pr713", repo / "records/track_10min_16mb/pr713")
        git("add", "-A")
        git("commit", "-q", "-m", "pr")
        gate_out = Path(tmp) / "out"
        rc, _ = run([sys.executable, "-m", "harness.cli.audit", "ci", "--base", "main", "--head", "pr",
                     "--repo", str(repo), "--out", str(gate_out)])
        verdict = json.loads((gate_out / "verdict.json").read_text())
        (out / "gate_verdict.json").write_text(json.dumps({"exit": rc, "output": mask(verdict)}, indent=1, sort_keys=True))
        (out / "gate_summary.md").write_text(mask((gate_out / "summary.md").read_text()))


def capture(out: Path, dynamic: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    audit = [sys.executable, "-m", "harness.cli.audit", "--no-cache"]
    for fixture in ("pr713", "legal_score_first_ttt", "hash_leak", "packed", "unpackable"):
        write_json(out, f"static_{fixture}", *run(audit + ["--format", "json", f"submissions/{fixture}"]))
    write_json(out, "sarif_pr713", *run(audit + ["--format", "sarif", "submissions/pr713"]))
    write_json(out, "verify_pr713", *run([sys.executable, "-m", "harness.cli.eval", "verify", "--format", "json",
                                          "submissions/pr713"]))
    gate(out)
    if dynamic:
        write_json(out, "dynamic_pr713", *run(audit + ["--format", "json", "--dynamic", "submissions/pr713"]))


def compare(a: Path, b: Path) -> int:
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    bad = 0
    for name in names:
        pa, pb = a / name, b / name
        if not pa.exists() or not pb.exists():
            print(f"MISSING {name}: only in {'after' if not pa.exists() else 'before'}")
            bad += 1
        elif load_masked(pa) != load_masked(pb):
            print(f"DIFFERS {name}")
            bad += 1
        else:
            print(f"same    {name}")
    print(f"{len(names) - bad} identical, {bad} different")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("out", type=Path)
    c.add_argument("--no-dynamic", action="store_true")
    d = sub.add_parser("compare")
    d.add_argument("before", type=Path)
    d.add_argument("after", type=Path)
    args = p.parse_args()
    if args.cmd == "capture":
        capture(args.out, not args.no_dynamic)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
