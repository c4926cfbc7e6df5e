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


def worst_per_function(records, badness) -> list[tuple[dict, Frame | None]]:
    """One probe record per scoring function (its frame's function), the one whose
    `badness(record)` is largest; a record with badness None is not a finding. Returns
    (record, frame) in the order the functions were first seen."""
    worst: dict[str, tuple[float, dict]] = {}
    for rec in records:
        bad = badness(rec)
        if bad is None:
            continue
        fn = (rec.get("frame") or {}).get("function", "?")
        if fn not in worst or bad > worst[fn][0]:
            worst[fn] = (bad, rec)
    return [(rec, Frame(**rec["frame"]) if rec.get("frame") else None) for _, rec in worst.values()]
