"""`golf-eval reproduce`: re-run a submission per seed and compare what it claims with what we measure.

For each seed: copy the folder to scratch (without its old logs), run its own script with
`torchrun --standalone --nproc_per_node=N` and the env its README names, time every output line
ourselves (process start/end and the phase markers in the output: the last step line /
stopping_early ends training, each result line ends an eval pass), measure the files it writes,
keep the log. Then `verify` runs on the fresh logs and claimed vs measured are put side by side.

`--toy` runs the same on CPU through the dynamic harness's runner (toy data, CPU shims, gloo,
2 processes); numbers then show the pipeline works, not what an H100 would measure.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.evaluation import code_size, toy
from harness.evaluation.claim_logs import find_script
from harness.evaluation.claims import verify
from harness.evaluation.verify_report import FAIL, INFO, UNVERIFIED, Check, UsageError, VerifyReport
from harness.evaluation.logs import ParsedLog, parse_log_text
from harness.core.findings import ExitCode
from harness.evaluation.capture import Capture, ReproduceOptions

ENV_TOKEN = re.compile(r"(?:^|\s)(?:export\s+)?([A-Z][A-Z0-9_]*)=(\"[^\"]*\"|'[^']*'|[^\s;&|`]+)")
RUN_LINE = re.compile(r"(torchrun|python3?\s|\bexport\s)")
# A continued command's first line holds only assignments (`A=1 B=2 \`); prose that merely
# mentions `A=1` does not count.
ASSIGN_ONLY = re.compile(r"^(?:export\s+)?[A-Z][A-Z0-9_]*=\S+(?:\s+[A-Z][A-Z0-9_]*=\S+)*$")
# Env our run sets itself; a README value for these is ignored.
OURS = {"SEED", "DATA_PATH", "TOKENIZER_PATH", "RUN_ID", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"}
CLAIM_CHECKS = {"claimed-score", "val_loss-field", "bytes_total-field", "bytes_code-field", "per-seed-claims",
                "submission-fields"}
# On a toy run's fresh logs these compare toy numbers with 8×H100 claims (or the folder's
# paperwork, already in `claimed`): shown as info, never judged.
TOY_NOT_JUDGED = CLAIM_CHECKS | {"significance", "required-files"}
MODEL_SUFFIXES = (".ptz", ".xz", ".lzma", ".br", ".brotli", ".zst", ".zstd", ".zlib", ".gz", ".bin", ".int8", ".int6")


@dataclass
class PhaseTiming:
    label: str
    logged_s: float | None  # what the script printed
    measured_s: float  # our clock: from the previous marker to this pass's last line
    status: str  # the log's status for the pass: logged / unmeasured


@dataclass
class SeedRun:
    seed: int
    command: list[str]
    env_added: dict[str, str]
    run_dir: str
    log_path: str
    rc: int | None
    timed_out: bool
    wall_s: float
    measured_train_s: float | None  # process start → last training line (includes startup)
    measured_train_loop_s: float | None  # first step line → last training line
    measured_eval_s: float | None  # last training line → end of the last eval pass
    measured_after_train_s: float | None  # last training line → process end
    phases: list[PhaseTiming]
    files: dict[str, int]  # new/changed files → bytes
    model_file: str | None
    model_bytes: int | None
    code_bytes: int | None  # the entry script as run + the folder files it imports (code_size)
    measured_artifact_bytes: int | None
    logged: dict[str, Any]  # numbers the fresh log prints
    error: str = ""
    notes: list[str] = field(default_factory=list)
    code_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # from the sandbox (toy runs)


@dataclass
class ReproduceReport:
    target: str
    toy: bool
    runs: list[SeedRun] = field(default_factory=list)
    claimed: VerifyReport | None = None  # verify on the submission's own logs
    fresh: VerifyReport | None = None  # verify on the logs we just produced
    rows: list[dict[str, Any]] = field(default_factory=list)  # claimed vs measured, per seed
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a toy run whose writes were not confined

    def toy_problems(self) -> list[str]:
        """What a toy run failed to show; empty when every seed ran to the end and its train
        time, eval passes and artifact were measured and its log printed a score."""
        out = [] if self.runs else ["no seed ran"]
        for r in self.runs:
            if r.error:
                out.append(f"seed {r.seed}: {r.error}")
                continue
            missing = [what for what, v in (("train time", r.measured_train_s), ("eval time", r.measured_eval_s),
                                            ("artifact file", r.measured_artifact_bytes),
                                            ("score line", r.logged.get("val_bpb"))) if v is None]
            if missing:
                out.append(f"seed {r.seed}: not measured: " + ", ".join(missing))
        return out

    def exit_code(self) -> ExitCode:
        if self.toy:
            # A toy run measures the pipeline at CPU scale; the claims are 8×H100 numbers it can
            # neither confirm nor refute, so it never exits 0 or 1 (toy_problems() says whether
            # the pipeline worked). A crash is 3 too, as in golf-audit's dynamic layer: at toy
            # scale it may be the CPU shims', not the submission's.
            return ExitCode.NOT_AUDITABLE
        statuses = {c.status for c in self.checks}
        if self.fresh is not None:
            statuses |= {c.status for c in self.fresh.checks if c.name != "significance"}
        if FAIL in statuses:
            return ExitCode.FINDINGS
        if UNVERIFIED in statuses or not self.runs:
            return ExitCode.NOT_AUDITABLE
        return ExitCode.CLEAN

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "toy": self.toy, "exit_code": int(self.exit_code()),
            **({"toy_complete": not self.toy_problems(), "toy_problems": self.toy_problems()} if self.toy else {}),
            "runs": [asdict(r) for r in self.runs],
            "claimed": self.claimed.to_dict() if self.claimed else None,
            "fresh": self.fresh.to_dict() if self.fresh else None,
            "rows": self.rows, "checks": [asdict(c) for c in self.checks], "notes": self.notes,
            "warnings": self.warnings,
        }


# ---- pure parts -----------------------------------------------------------------------------


def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", p):
            raise UsageError(f"--env wants KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = v
    return out


def env_from_docs(folder: Path) -> tuple[dict[str, str], list[str]]:
    """KEY=VALUE settings on the run commands in README.md and *.sh (e.g.
    `NUM_LAYERS=10 TTT_ENABLED=1 torchrun …`). Returns (env, where each came from)."""
    env: dict[str, str] = {}
    sources: list[str] = []
    docs = [folder / "README.md"] + sorted(folder.glob("*.sh"))
    for doc in docs:
        if not doc.is_file():
            continue
        for n, line in enumerate(doc.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            s = line.strip().strip("`").rstrip("\\").strip()
            if not RUN_LINE.search(s) and not ASSIGN_ONLY.match(s):
                continue
            for m in ENV_TOKEN.finditer(s):
                key, val = m.group(1), m.group(2).strip("\"'")
                if key in OURS:
                    continue
                env[key] = val
                sources.append(f"{key}={val} ({doc.name}:{n})")
    return env, sources


def launcher(opts: ReproduceOptions) -> list[str]:
    if opts.torchrun:
        return list(opts.torchrun)
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def build_command(script: str, nproc: int, launch: list[str]) -> list[str]:
    return [*launch, "--standalone", f"--nproc_per_node={nproc}", script]


def run_env(seed: int, opts: ReproduceOptions, doc_env: dict[str, str], base: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(full env, the part we added). Precedence: ours (SEED…) > --env > README/logs."""
    added: dict[str, str] = dict(doc_env)
    added.update(opts.env)
    added["SEED"] = str(seed)
    added["RUN_ID"] = f"golf_eval_seed{seed}"
    if opts.data is not None:
        added["DATA_PATH"] = str(Path(opts.data).resolve())
    if opts.tokenizer is not None:
        added["TOKENIZER_PATH"] = str(Path(opts.tokenizer).resolve())
    env = dict(os.environ if base is None else base)
    env.update(added)
    return env, added


def entry_script(folder: Path, opts: ReproduceOptions) -> Path:
    if opts.script:
        p = folder / opts.script
        if not p.is_file():
            raise UsageError(f"--script {opts.script}: no such file in {folder}")
        return p
    scripts = find_script(folder)
    if not scripts:
        raise UsageError(f"no training script (train*.py) in {folder}")
    preferred = [p for p in scripts if p.name == "train_gpt.py"]
    return (preferred or scripts)[0]


def scratch_copy(folder: Path, dest: Path) -> Path:
    """Copy the submission without its logs, so only fresh logs are read afterwards."""

    def ignore(d: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n.endswith((".log",)) or n in ("logs", "__pycache__", ".git")}
        skip |= {n for n in names if re.match(r"^train.*\.txt$", n) or re.match(r".*_log_.*\.txt$", n)}
        return skip

    shutil.copytree(folder, dest, ignore=ignore)
    return dest


def snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime)
    return out


def changed_files(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]) -> dict[str, int]:
    return {k: v[0] for k, v in sorted(after.items()) if k not in before or before[k] != v}


def pick_model_file(files: dict[str, int]) -> str | None:
    """The compressed model the run wrote: a model-like suffix, not the raw .pt checkpoint,
    not a log."""
    cands = {k: v for k, v in files.items()
             if not k.startswith("logs/") and not k.endswith((".log", ".txt", ".pt", ".py", ".json", ".md"))}
    preferred = {k: v for k, v in cands.items() if k.endswith(MODEL_SUFFIXES)}
    pool = preferred or cands
    if not pool:
        return None
    return max(pool, key=lambda k: pool[k])


def time_phases(cap: Capture) -> tuple[ParsedLog, dict[str, Any]]:
    """Parse the captured output and time training and each eval pass with our own clock."""
    text = "\n".join(line for _, line in cap.lines)
    log = parse_log_text(text, "captured")
    times = [t for t, _ in cap.lines]

    def t_at(line_no: int) -> float:  # 1-based line → seconds since start
        return times[min(max(line_no - 1, 0), len(times) - 1)] if times else 0.0

    train_end_line = _train_end_line(cap.lines)
    first_step_line = _first_step_line(cap.lines)
    out: dict[str, Any] = {"train_end_line": train_end_line}
    if train_end_line is None or not cap.line_times:
        out.update(measured_train_s=None, measured_train_loop_s=None, measured_eval_s=None,
                   measured_after_train_s=None, phases=[])
        return log, out
    t_train_end = t_at(train_end_line)
    out["measured_train_s"] = t_train_end
    out["measured_train_loop_s"] = t_train_end - t_at(first_step_line) if first_step_line else None
    phases = []
    prev_end = t_train_end
    for p in log.phases:
        end = t_at(p.last_line) if p.result is not None else cap.wall_s
        phases.append(PhaseTiming(p.label, p.time_s, max(end - prev_end, 0.0), p.status))
        prev_end = end
    out["phases"] = phases
    out["measured_eval_s"] = (prev_end - t_train_end) if phases else None
    out["measured_after_train_s"] = cap.wall_s - t_train_end
    return log, out


def _train_end_line(lines: list[tuple[float, str]]) -> int | None:
    from harness.evaluation.logs import STEP_NEW, STEP_OLD, STOPPING

    end = None
    for i, (_, s) in enumerate(lines, 1):
        body = s.strip()
        if STOPPING.match(body):
            return i
        if STEP_OLD.match(body) or STEP_NEW.match(body):
            end = i
    return end


def _first_step_line(lines: list[tuple[float, str]]) -> int | None:
    from harness.evaluation.logs import STEP_NEW, STEP_OLD

    for i, (_, s) in enumerate(lines, 1):
        if STEP_OLD.match(s.strip()) or STEP_NEW.match(s.strip()):
            return i
    return None


# ---- running --------------------------------------------------------------------------------


def run_process(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float | None,
                on_line: Callable[[float, str], None] | None = None) -> Capture:
    """Run `cmd`, stamping each output line with seconds since start. On timeout the whole
    process group we started is killed."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, errors="replace", start_new_session=True)
    except OSError as e:
        return Capture([], None, 0.0, error=f"could not start {cmd[0]}: {e}")
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout_s, kill) if timeout_s else None
    if timer:
        timer.start()
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        t = time.monotonic() - start
        line = raw.rstrip("\n")
        lines.append((t, line))
        if on_line:
            on_line(t, line)
    rc = proc.wait()
    wall = time.monotonic() - start
    if timer:
        timer.cancel()
    return Capture(lines, rc, wall, timed_out=timed_out.is_set())


class SandboxRefused(Exception):
    """`--toy` without bubblewrap and without --allow-weak-sandbox: nothing is run (exit 3)."""


def _check_sandbox(opts: ReproduceOptions) -> None:
    from harness.dynamic.run.sandbox import SandboxUnavailable, choose_isolation

    try:
        choose_isolation(allow_weak=opts.allow_weak_sandbox)
    except SandboxUnavailable as exc:
        raise SandboxRefused(str(exc)) from None


def _toy_runner():
    """The dynamic harness's runner, when it is installed (it is written separately)."""
    try:
        from harness.dynamic.run import runner  # type: ignore
    except ImportError as e:
        raise UsageError(f"--toy needs harness.dynamic.run.runner, which is not available: {e}") from e
    return runner


def run_seed(folder: Path, seed: int, opts: ReproduceOptions, work: Path, doc_env: dict[str, str],
             on_line: Callable[[float, str], None] | None = None) -> tuple[SeedRun, Capture]:
    run_dir = work / f"seed{seed}"
    scratch_copy(folder, run_dir)
    script = entry_script(run_dir, opts)
    before = snapshot(run_dir)
    env, added = run_env(seed, opts, doc_env)
    notes: list[str] = []
    warnings: list[str] = []
    if opts.toy:
        toy_run = _run_toy(run_dir, script, seed, opts, added, doc_env, on_line)
        cap, cmd, added, notes = toy_run.capture, toy_run.command, toy_run.env_added, toy_run.notes
        warnings = toy_run.warnings
        # the runner ran a copy of run_dir in its own scratch folder: measure there
        files, ran_in, ran_script = toy_run.files, toy_run.scratch, toy_run.entry
    else:
        cmd = build_command(script.name, opts.nproc, launcher(opts))
        cap = run_process(cmd, run_dir, env, opts.timeout_s, on_line)
        files, ran_in, ran_script = changed_files(before, snapshot(run_dir)), run_dir, script
    code_bytes, code_files = code_size.code_bytes(ran_in, ran_script, package=folder.resolve().name)
    log_path = work / "fresh" / f"train_seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("\n".join(line for _, line in cap.lines) + "\n", encoding="utf-8")
    (work / "fresh" / f"train_seed{seed}.timed.tsv").write_text(
        "".join(f"{t:.3f}\t{line}\n" for t, line in cap.lines), encoding="utf-8")
    model = pick_model_file(files)
    log, timing = time_phases(cap)
    art = log.artifact
    logged = {
        "val_bpb": (r.val_bpb if (r := log.final_result()) else None),
        "val_loss": (r.val_loss if r else None),
        "score_label": (r.label if r else None),
        "train_s": log.train_total_s,
        "eval_logged_s": log.eval_logged_s,
        "artifact_bytes": art.value if art else None,
        "code_bytes": log.code_bytes,
        # every result line after training, so the claimed line can be found in the fresh log
        "results": {r.label: r.val_bpb for r in log.results if r.after_training},
    }
    error = cap.error
    if cap.timed_out:
        error = cap.error or f"timed out after {opts.timeout_s} s"
    elif cap.rc not in (0, None):
        error = f"exit status {cap.rc}"
    run = SeedRun(
        seed=seed, command=cmd, env_added=added, run_dir=str(ran_in), log_path=str(log_path), rc=cap.rc,
        timed_out=cap.timed_out, wall_s=cap.wall_s,
        measured_train_s=timing.get("measured_train_s"),
        measured_train_loop_s=timing.get("measured_train_loop_s"),
        measured_eval_s=timing.get("measured_eval_s"),
        measured_after_train_s=timing.get("measured_after_train_s"),
        phases=timing.get("phases", []), files=files, model_file=model,
        model_bytes=files.get(model) if model else None, code_bytes=code_bytes,
        measured_artifact_bytes=(files[model] + code_bytes) if model and code_bytes is not None else None,
        logged=logged, error=error, notes=notes, code_files=code_files, warnings=warnings,
    )
    return run, cap


def _run_toy(run_dir: Path, script: Path, seed: int, opts: ReproduceOptions, added: dict[str, str],
             doc_env: dict[str, str], on_line: Callable[[float, str], None] | None):
    """Run through harness.dynamic.run.runner (CPU shims, toy data, gloo): harness.evaluation.toy."""
    runner = _toy_runner()
    return toy.run(runner, run_dir, script, seed, opts, added, doc_env, on_line)


# ---- the command ----------------------------------------------------------------------------


def reproduce(folder: Path, opts: ReproduceOptions, console=None) -> ReproduceReport:
    if not folder.is_dir():
        raise UsageError(f"not a folder: {folder}")
    if not opts.seeds:
        raise UsageError("--seeds needs at least one seed")
    if opts.nproc < 1:
        raise UsageError("--nproc must be ≥ 1")
    entry_script(folder, opts)  # fail early on a folder without a script
    if opts.toy:
        _check_sandbox(opts)  # refuse before any copying: the toy run is the sandbox's
    rep = ReproduceReport(target=str(folder), toy=opts.toy)
    rep.claimed = verify(folder, opts.verify)
    doc_env, sources = env_from_docs(folder)
    if sources:
        rep.notes.append("env from README/scripts: " + ", ".join(sources))
    if opts.toy:
        rep.notes.append("toy run on CPU: times and sizes show the pipeline, not 8×H100 numbers; the fresh "
                         "logs' agreement with submission.json is shown but does not set the exit code")
    own_tmp = opts.scratch is None
    work = Path(tempfile.mkdtemp(prefix="golf-eval-")) if own_tmp else Path(opts.scratch)
    work.mkdir(parents=True, exist_ok=True)
    try:
        for seed in opts.seeds:
            run, _ = _run_with_display(folder, seed, opts, work, doc_env, console)
            rep.runs.append(run)
            rep.warnings += [w for w in run.warnings if w not in rep.warnings]
        fresh_dir = work / "fresh"
        for name in ("README.md", "submission.json"):
            if (folder / name).is_file():
                shutil.copy2(folder / name, fresh_dir / name)
        script = entry_script(folder, opts)
        shutil.copy2(script, fresh_dir / script.name)
        rep.fresh = verify(fresh_dir, opts.verify)
        rep.fresh.target = f"{folder} (fresh logs)"
        if opts.toy:
            for c in rep.fresh.checks:
                if c.name in TOY_NOT_JUDGED and c.status != INFO:
                    c.summary = f"not judged on a toy run (as a full run: {c.status}): {c.summary}"
                    c.status = INFO
        _compare(rep)
        if opts.keep or not own_tmp:
            rep.notes.append(f"scratch kept at {work}")
    finally:
        if own_tmp and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    return rep


def _run_with_display(folder, seed, opts, work, doc_env, console):
    if not opts.live or console is None:
        return run_seed(folder, seed, opts, work, doc_env)
    from rich.live import Live
    from rich.panel import Panel
    from rich.text import Text

    tail: deque[str] = deque(maxlen=12)
    state = {"t": 0.0}

    def view():
        return Panel(Text("\n".join(tail)), title=f"seed {seed} — {state['t']:.0f} s", subtitle="live log tail")

    with Live(view(), console=console, refresh_per_second=4) as live:
        def on_line(t: float, line: str) -> None:
            state["t"] = t
            tail.append(line[:200])
            live.update(view())

        return run_seed(folder, seed, opts, work, doc_env, on_line)


def _compare(rep: ReproduceReport) -> None:
    """Claimed (submission.json + its logs) vs measured (fresh logs + our clock), per seed."""
    claimed_rows = {row.seed: row for row in (rep.claimed.seeds if rep.claimed else [])}
    label = rep.claimed.score_label if rep.claimed else None
    for run in rep.runs:
        c = claimed_rows.get(run.seed)
        # the claimed line's value in the fresh log; without a claimed line, the last result
        fresh_label = label if label in run.logged.get("results", {}) else run.logged["score_label"]
        rep.rows.append({
            "seed": run.seed,
            "status": "ok" if not run.error else run.error,
            "val_bpb": {"claimed": c.val_bpb if c else None, "label": fresh_label,
                        "fresh_log": run.logged.get("results", {}).get(fresh_label, run.logged["val_bpb"])},
            "train_s": {"claimed_log": c.train_s if c else None, "fresh_log": run.logged["train_s"],
                        "measured_loop": run.measured_train_loop_s, "measured_from_start": run.measured_train_s},
            "eval_s": {"claimed_log": c.eval_logged_s if c else None, "fresh_log": run.logged["eval_logged_s"],
                       "measured": run.measured_eval_s, "measured_after_train": run.measured_after_train_s},
            "artifact_bytes": {"claimed_log": c.artifact_bytes if c else None,
                               "fresh_log": run.logged["artifact_bytes"],
                               "measured_files": run.measured_artifact_bytes},
            "phases": [asdict(p) for p in run.phases],
        })
        if run.error:
            rep.checks.append(Check("run", FAIL if not (run.timed_out or rep.toy) else UNVERIFIED,
                                    f"seed {run.seed}: {run.error}",
                                    evidence=[line for line in _tail_of(run.log_path)]))
            continue
        # Our clock vs what the fresh log prints: a script whose own timers leave out work.
        if run.measured_eval_s is not None and run.logged["eval_logged_s"] is not None:
            logged = run.logged["eval_logged_s"]
            gap = run.measured_eval_s - logged
            if gap > max(0.5, 0.1 * run.measured_eval_s):
                rep.notes.append(f"seed {run.seed}: measured {run.measured_eval_s:.1f} s from the end of training to "
                                 f"the last eval pass vs {logged:.1f} s the log's own timers add up to: {gap:.1f} s "
                                 "of work is not in any printed time (serialization/quantization included)")
        if run.measured_artifact_bytes is not None and run.logged["artifact_bytes"] is not None:
            if run.measured_artifact_bytes != run.logged["artifact_bytes"]:
                rep.notes.append(
                    f"seed {run.seed}: files on disk {run.model_file} {run.model_bytes:,} + code "
                    f"{run.code_bytes:,} ({len(run.code_files)} file(s)) = {run.measured_artifact_bytes:,} bytes vs log "
                    f"{run.logged['artifact_bytes']:,} (scripts may count compressed code)")
        elif run.model_file is None:
            rep.notes.append(f"seed {run.seed}: the run wrote no model-like file we could measure")


def _tail_of(path: str, n: int = 8) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-n:]
    except OSError:
        return []
