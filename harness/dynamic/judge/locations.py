"""Where a finding points: a frame turned into a location (with its source line), and the
short forms evidence lines use."""
from __future__ import annotations

from pathlib import Path

from harness.core.findings import Location
from harness.dynamic.trace.events import Frame, Trace, Update


def location(trace: Trace, frame: Frame | None) -> Location:
    """A finding location from a frame; the source line is read from the submission when the
    frame does not carry it."""
    if frame is None:
        return Location(path="<unknown>", line=1, function=None, source_line="")
    code = frame.code
    if not code and trace.submission_dir:
        try:
            lines = (Path(trace.submission_dir) / frame.path).read_text(encoding="utf-8").splitlines()
            if 1 <= frame.line <= len(lines):
                code = lines[frame.line - 1].strip()
        except OSError:
            pass
    return Location(path=frame.path, line=max(1, frame.line), function=frame.function, source_line=code)


def where(frame: Frame | None) -> str:
    if frame is None:
        return "<unknown frame>"
    return f"{frame.path}:{frame.line} in {frame.function}()"


def update_frame(update: Update) -> Frame | None:
    """The line a finding about an update points at: the optimizer.step() call when known."""
    return update.step_frame or update.frame


def function_of(frame: Frame | None) -> str:
    return frame.function if frame is not None else "?"
