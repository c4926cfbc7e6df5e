"""`golf-eval reproduce --toy`: run one seed through the dynamic harness's runner.

The runner (harness.dynamic.run.runner.run_submission) owns the CPU shims, the toy data, the
toy-scale env and the gloo launch inside the sandbox. It returns the output in one piece, so
to time lines with our own clock we tail the log file the script writes in the run's scratch
folder (contest scripts print each line and append it to `logs/<RUN_ID>.txt`) while the run is
going, then give each stdout line the time its twin appeared in that file. Should the runner
grow a per-line callback, that is used instead (LINE_CALLBACK_NAMES).
"""
from __future__ import annotations

import bisect
import inspect
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.evaluation.capture import Capture, ReproduceOptions

LINE_CALLBACK_NAMES = ("on_line", "line_callback", "on_output")
POLL_S = 0.1  # the tail's resolution: a line is stamped at most this late
LOG_SUFFIXES = (".txt", ".log")
from harness.dynamic.run.paths import STATE_DIR  # the runner's own folder in scratch; its config.json is written just before launch
from harness.dynamic.cpu.toy_env import LITERAL_NOTE  # the runner's note for a hyperparameter written as a number and shrunk
RUNNER_TIMEOUT_S = 300.0  # run_submission's default, used when --timeout is not given


@dataclass
class ToyRun:
    capture: Capture
    command: list[str]
    env_added: dict[str, str]  # what the run got for the names we passed (after toy shrinking)
    files: dict[str, int]  # files the run created or changed in its scratch folder → bytes
    entry: Path  # the entry script as it ran (the runner may rewrite it, e.g. 3.12 f-strings)
    scratch: Path
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # from the sandbox: isolation weaker than bwrap


class LogTail(threading.Thread):
    """Polls the scratch folder for log files the run writes (`logs/*`, and top-level
    *.txt/*.log not there before) and stamps each complete new line with time.time()."""

    def __init__(self, root: Path, skip: set[str], on_line: Callable[[float, str], None] | None = None):
        super().__init__(daemon=True)
        self.root, self.skip, self.on_line = root, skip, on_line
        self.lines: list[tuple[float, str]] = []  # (unix time, line)
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.wait(POLL_S):
            self.poll()

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=5)
        self.poll()

    def _candidates(self) -> list[Path]:
        out = []
        logs = self.root / "logs"
        if logs.is_dir():
            out += [p for p in logs.iterdir() if p.is_file()]
        if self.root.is_dir():
            out += [p for p in self.root.iterdir()
                    if p.is_file() and p.suffix in LOG_SUFFIXES and p.name not in self.skip]
        return sorted(out)

    def poll(self) -> None:
        try:
            paths = self._candidates()
        except OSError:
            return
        for p in paths:
            try:
                with open(p, "rb") as fh:
                    if p.stat().st_size < self._offsets.get(p, 0):  # recreated (the runner's rerun)
                        self._offsets[p], self._partial[p] = 0, b""
                    fh.seek(self._offsets.get(p, 0))
                    chunk = fh.read()
            except OSError:
                continue
            if not chunk:
                continue
            now = time.time()
            self._offsets[p] = self._offsets.get(p, 0) + len(chunk)
            data = self._partial.pop(p, b"") + chunk
            *complete, rest = data.split(b"\n")
            if rest:
                self._partial[p] = rest
            for raw in complete:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                self.lines.append((now, line))
                if self.on_line:
                    self.on_line(now, line)


def stamp_lines(stdout_lines: list[str], tailed: list[tuple[float, str]]) -> tuple[list[tuple[float, str]], int]:
    """Give each stdout line the time of its twin in the tailed log (matched in order, each
    tailed line used once). A line with no twin (a rank's stray print, a warning) gets the time
    of the line before it. Returns (stamped lines, how many were matched)."""
    where: dict[str, list[int]] = {}
    for i, (_, text) in enumerate(tailed):
        where.setdefault(text.strip(), []).append(i)
    out: list[tuple[float, str]] = []
    nxt, last_t, matched = 0, 0.0, 0
    for line in stdout_lines:
        key = line.strip()
        idx = where.get(key) if len(key) >= 3 else None  # blank/short lines match anything
        if idx:
            k = bisect.bisect_left(idx, nxt)
            if k < len(idx):
                i = idx[k]
                nxt, last_t, matched = i + 1, max(last_t, tailed[i][0]), matched + 1
        out.append((last_t, line))
    return out, matched


def _teardown_hang(scratch: Path, nproc: int) -> str:
    """Why a multi-process toy run timed out, when its records show it: rank 0 ran the script
    to the end (the bootstrap writes its record after the script returns) and other ranks never
    did. With gloo that is the process group's teardown (a DDP Reducer freed after
    destroy_process_group joins gloo threads that wait for the GIL), not the submission's work."""
    if nproc < 2:
        return ""
    records = {}
    for p in (scratch / STATE_DIR).glob("bootstrap_rank*.json"):
        try:
            rec = json.loads(p.read_text())
            records[int(rec.get("rank", -1))] = rec
        except (OSError, ValueError, TypeError):
            continue
    stuck = [r for r in range(nproc) if r not in records]
    if records.get(0, {}).get("exit_code") != 0 or not stuck:
        return ""
    return (f": rank 0 ran the script to the end (exit 0) but rank(s) {', '.join(map(str, stuck))} never "
            "returned from it: a hang in gloo process-group teardown after the script's work, not the "
            "submission's (see docs/golf-eval.md, reproduce --toy)")


def _field(obj: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(obj, dict) and obj.get(n) is not None:
            return obj[n]
        if getattr(obj, n, None) is not None:
            return getattr(obj, n)
    return default


def run(runner: Any, run_dir: Path, script: Path, seed: int, opts: ReproduceOptions, added: dict[str, str],
        doc_env: dict[str, str], on_line: Callable[[float, str], None] | None) -> ToyRun:
    """Run `run_dir` (the scratch copy without old logs) through the runner, in its own scratch
    folder `<run_dir>.toy` that is kept for measuring files."""
    notes: list[str] = []
    fn = runner.run_submission
    params = inspect.signature(fn).parameters
    # The toy data and its paths are the runner's; ours (DATA_PATH…) would point at real data.
    ours = {k: v for k, v in added.items() if k not in ("DATA_PATH", "TOKENIZER_PATH") and k not in doc_env}
    ours.update(opts.env)
    kwargs: dict[str, Any] = {"env": ours, "nproc": opts.nproc, "trace": False,
                              "toy_data": runner.get_toy_data()}  # built once, cached: not timed
    if "submission_env" in params:
        # README flags are the submission's: the runner shrinks them to toy scale (TTT_EPOCHS=3 → 2);
        # --env values are the user's and pass as given.
        kwargs["submission_env"] = {k: v for k, v in doc_env.items() if k not in opts.env}
    else:
        kwargs["env"] = {**doc_env, **ours}
        notes.append("this runner has no submission_env: README flags passed at full scale")
    timeout_s = float(opts.timeout_s or RUNNER_TIMEOUT_S)
    kwargs["timeout_s"] = timeout_s
    scratch = run_dir.with_name(run_dir.name + ".toy")
    kwargs["scratch"] = scratch
    kwargs["keep_scratch"] = True
    if getattr(opts, "allow_weak_sandbox", False) and "allow_weak_sandbox" in params:
        kwargs["allow_weak_sandbox"] = True

    cb_name = next((n for n in LINE_CALLBACK_NAMES if n in params), None)
    streamed: list[tuple[float, str]] = []
    tail = None
    if cb_name:
        def cb(line: str, *_: Any) -> None:
            t = time.time()
            streamed.append((t, line.rstrip("\n")))
            if on_line:
                on_line(t - t_call, line.rstrip("\n"))

        kwargs[cb_name] = cb
    else:
        skip = {p.name for p in run_dir.iterdir()}
        tail = LogTail(scratch, skip, (lambda t, line: on_line(t - t_call, line)) if on_line else None)
    t_call = time.time()
    if tail:
        tail.start()
    try:
        result = fn(run_dir, **kwargs)
    finally:
        if tail:
            tail.stop()
    t_return = time.time()

    rc = _field(result, "exit_code", "returncode", "rc")
    sandbox_wall = float(_field(result, "wall_s", default=0.0) or 0.0)
    # Our clock starts when the runner launches the process: it writes its config.json just
    # before; without it, when we called the runner (copy and toy-data setup then count too).
    cfg = scratch / STATE_DIR / "config.json"
    t0 = cfg.stat().st_mtime if cfg.is_file() else t_call
    end = min(t0 + sandbox_wall, t_return) if sandbox_wall else t_return
    text = str(_field(result, "stdout", default="") or "")
    stdout_lines = text.splitlines()
    if streamed:
        lines = [(t - t0, s) for t, s in streamed]
        matched = len(lines)
    else:
        # lines older than the launch belong to a run the runner repeated (its autocast retry)
        tailed = [(t - t0, s) for t, s in (tail.lines if tail else []) if t >= t0]
        stamped, matched = stamp_lines(stdout_lines, tailed)
        lines = stamped
    if matched:
        how = "the runner's line callback" if streamed else f"tailing the script's log file (±{POLL_S:.1f} s)"
        notes.append(f"seed {seed}: lines timed by {how}; clock from process launch, "
                     f"{matched}/{len(lines)} lines stamped")
    else:
        lines = [(end - t0, s) for s in stdout_lines]
        notes.append(f"seed {seed}: the script wrote no log file we could tail and the runner returned its "
                     "output in one piece: only process start → end is measured, not each pass")
    error = _field(result, "error", default="") or ""
    reason = _field(result, "killed_reason", default=None)
    if reason == "timeout":
        last = f" (last output: {stdout_lines[-1][:120]!r})" if stdout_lines else ""
        error = f"timed out after {timeout_s:.0f} s" + (_teardown_hang(scratch, opts.nproc) or last)
    cap = Capture(lines, rc, end - t0, timed_out=(reason == "timeout"), error=str(error).splitlines()[0] if error else "")
    cap.line_times = bool(matched)
    if error and rc == 0:
        cap.rc = -1  # the runner says the run failed though the process exited 0 (e.g. sandbox)
    env_seen = _field(result, "env", default={}) or {}
    env_added = {k: str(env_seen.get(k, v)) for k, v in {**doc_env, **ours}.items()}
    for n in _field(result, "notes", default=[]) or []:
        if "shrunk" in n or n.startswith(("sandbox:", "autocast", "rewrite:", LITERAL_NOTE)):
            notes.append(f"seed {seed}: {n}")
    if error or rc not in (0, None):
        stderr = [ln for ln in str(_field(result, "stderr", default="") or "").splitlines() if ln.strip()]
        notes.extend(f"seed {seed} stderr: {ln[:300]}" for ln in stderr[-5:])
    entry = _field(result, "entry_script", default=script.name)
    if opts.script and Path(opts.script).name != entry:
        notes.append(f"seed {seed}: the runner picks its own entry script and ran {entry}, not --script {opts.script}")
    as_run = scratch / entry
    cmd = [f"harness.dynamic.run.runner.run_submission({run_dir.name}, nproc={opts.nproc}, toy data)",
           "→ torchrun --standalone" if opts.nproc > 1 else "→ python", f"--nproc_per_node={opts.nproc}",
           entry, "(gloo, CPU shims, sandbox)"]
    files = {k: int(v) for k, v in (_field(result, "artifacts", default={}) or {}).items()}
    warnings = [str(w) for w in (_field(result, "warnings", default=[]) or [])]
    return ToyRun(cap, cmd, env_added, files, as_run if as_run.is_file() else script, scratch, notes, warnings)
