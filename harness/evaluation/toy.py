"""`golf-eval reproduce --toy`: run one seed through the dynamic harness's runner.

The runner (harness.dynamic.runner.run_submission, written separately) owns the CPU shims, the
toy data and the gloo launch. This adapter only passes it the seed/env, and turns what it
returns into a Capture. Where the runner streams lines to a callback we time each line
ourselves; where it returns the output in one piece we only have process start/end, and say so.
"""
from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Callable

from harness.evaluation.reproduce import Capture, ReproduceOptions

LINE_CALLBACK_NAMES = ("on_line", "line_callback", "on_output")


def _field(obj: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


def run(runner: Any, run_dir: Path, script: Path, seed: int, opts: ReproduceOptions, added: dict[str, str],
        on_line: Callable[[float, str], None] | None) -> tuple[Capture, list[str], dict[str, str], list[str]]:
    notes: list[str] = []
    env = {k: v for k, v in added.items() if k not in ("DATA_PATH", "TOKENIZER_PATH")}  # the runner's toy data
    fn = runner.run_submission
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {"env": env, "nproc": opts.nproc, "trace": False}
    if "toy_data" in params:
        kwargs["toy_data"] = True
    if "script" in params:
        kwargs["script"] = script.name
    if "timeout_s" in params and opts.timeout_s:
        kwargs["timeout_s"] = opts.timeout_s
    kwargs = {k: v for k, v in kwargs.items() if k in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())}
    stamped: list[tuple[float, str]] = []
    start = time.monotonic()
    cb_name = next((n for n in LINE_CALLBACK_NAMES if n in params), None)
    if cb_name:
        def cb(line: str, *_: Any) -> None:
            t = time.monotonic() - start
            stamped.append((t, line.rstrip("\n")))
            if on_line:
                on_line(t, line.rstrip("\n"))

        kwargs[cb_name] = cb
    result = fn(run_dir, **kwargs)
    wall = time.monotonic() - start
    rc = _field(result, "returncode", "rc", "exit_code")
    cmd = list(_field(result, "command", "cmd", "argv", default=[]) or [])
    if stamped:
        lines = stamped
    else:
        text = _field(result, "stdout", "output", "log", default="") or ""
        if isinstance(text, (list, tuple)):
            text = "\n".join(text)
        # No per-line times from the runner: every line gets the process end; phase times are
        # then not measured by us (time_phases reports None for them), only start→end.
        lines = [(wall, ln) for ln in str(text).splitlines()]
        notes.append("the runner returned the output in one piece: per-pass times are not measured by "
                     "golf-eval on this run, only process start → end")
    reason = _field(result, "killed_reason", "error", default=None)
    cap = Capture(lines, rc, _field(result, "wall_s", default=wall) or wall,
                  timed_out=(reason == "timeout"), error=str(reason) if reason and reason != "timeout" else "")
    cap.line_times = bool(stamped)
    return cap, cmd or ["harness.dynamic.runner.run_submission", str(run_dir)], added, notes
