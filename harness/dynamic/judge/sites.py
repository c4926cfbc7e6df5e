"""What the traced run did at each line of the submission: the updates made there (and whether
each used only positions already scored) and the scores taken there.

The fused verdict (harness/fusion.py) reads this to tell a static suspicion that the run
proved wrong (the flagged line ran, every event there was legal) from one on code the toy run
never executed. Nothing here knows a rule by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.dynamic.judge.order import timeline
from harness.dynamic.judge.positions import describe_positions, n_positions, positions_array
from harness.dynamic.judge.updates import dead_write, premature_key, premature_positions
from harness.dynamic.trace.events import Frame, LossComputed, Scored, Trace, Update


@dataclass
class Site:
    """One line of the submission, as the trace saw it."""

    path: str
    line: int
    function: str = ""
    updates: int = 0  # updates (steps, writes) with validation provenance made at this line
    premature: int = 0  # ... of which used a position before its final score (or never scored)
    scores: int = 0  # scores and loss computations on validation targets at this line
    positions: int = 0  # distinct validation positions those updates used
    first_update: str = ""  # what the first update wrote, for evidence
    examples: list[str] = field(default_factory=list)  # a few concrete facts

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def key(path: str, line: int) -> str:
    return f"{path}:{line}"


def site_index(trace: Trace) -> dict[str, Site]:
    """Every line where the run updated state from validation data or scored it."""
    sites: dict[str, Site] = {}
    n = n_positions(trace)

    def site(frame: Frame | None) -> Site | None:
        if frame is None or not frame.path or frame.line < 1:
            return None
        k = key(frame.path, frame.line)
        s = sites.get(k)
        if s is None:
            s = sites[k] = Site(path=frame.path, line=frame.line, function=frame.function or "")
        return s

    used: dict[str, np.ndarray] = {}
    tl = timeline(trace)
    memo: dict[tuple, int] = {}
    scored_on_rank: dict[int, int] = {}
    for e in tl.events:
        if isinstance(e, (Scored, LossComputed)):
            if isinstance(e, Scored):
                scored_on_rank[e.rank] = scored_on_rank.get(e.rank, 0) + 1
            s = site(e.frame)
            if s is not None:
                s.scores += 1
            continue
        if not isinstance(e, Update) or not e.positions or dead_write(trace, e):
            continue
        mk = premature_key(trace, tl, e, scored_on_rank)
        bad = memo.get(mk)
        if bad is None:
            bad = memo[mk] = len(premature_positions(trace, e).positions)
        frames = {id(f): f for f in (e.step_frame, e.frame) if f is not None}
        for f in frames.values():
            s = site(f)
            if s is None:
                continue
            s.updates += 1
            s.premature += 1 if bad else 0
            if not s.first_update:
                s.first_update = f"{e.target} ({e.target_kind}, via {e.via})"
            k = key(s.path, s.line)
            mask = used.get(k)
            if mask is None:
                mask = used[k] = np.zeros(max(n, 1), dtype=bool)
            pos = positions_array(e.positions)
            mask[pos[(pos >= 0) & (pos < len(mask))]] = True
    for k, mask in used.items():
        sites[k].positions = int(mask.sum())
        if sites[k].positions:
            sites[k].examples.append("positions used: " + describe_positions(np.nonzero(mask)[0]))
    return sites
