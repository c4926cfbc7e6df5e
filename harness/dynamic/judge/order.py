"""Order of events across ranks.

Events on one rank are ordered by `seq`. Ranks are ordered against each other only
through collectives: an event that precedes the k-th collective on its rank happens before
every event that follows the k-th collective on any rank. With `passed(e)` = number of
collectives its rank finished before `e`, `a` happens before `b` iff they are on the same
rank and `a.seq < b.seq`, or `passed(a) < passed(b)`. Sorting by (passed, rank, seq) gives
one linear order that agrees with happens-before; judges use it to walk events, and the
happens-before test itself to decide violations.
"""
from __future__ import annotations

from harness.dynamic.judge.positions import trace_cache
from harness.dynamic.trace.events import Collective, Reported, RunStart, Trace


class Timeline:
    """All events of a trace in one linear order consistent with happens-before."""

    def __init__(self, trace: Trace):
        self.trace = trace
        passed: dict[int, int] = {}
        for rank_events in trace.by_rank().values():
            n = 0
            for e in rank_events:
                passed[id(e)] = n
                if isinstance(e, Collective):
                    n += 1
        self._passed = passed
        ordered = [e for e in trace.events if not isinstance(e, Reported)]
        ordered.sort(key=lambda e: (passed.get(id(e), 0), e.rank, e.seq))
        self.events = ordered
        self.index = {id(e): i for i, e in enumerate(ordered)}
        starts = trace.of(RunStart)
        self.world_size = max([s.world_size for s in starts] + [1])
        self.ranks = sorted({e.rank for e in trace.events}) or [0]

    def passed(self, e) -> int:
        return self._passed.get(id(e), 0)

    def key(self, e) -> tuple[int, int, int]:
        return (self.passed(e), e.rank, e.seq)

    def happens_before(self, a, b) -> bool:
        if a.rank == b.rank:
            return a.seq < b.seq
        return self.passed(a) < self.passed(b)


def timeline(trace: Trace) -> Timeline:
    cache = trace_cache(trace)
    if "timeline" not in cache:
        cache["timeline"] = Timeline(trace)
    return cache["timeline"]
