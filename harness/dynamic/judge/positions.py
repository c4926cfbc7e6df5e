"""Positions of the validation stream: ranges to arrays and back, the stream's length, and the
per-trace cache the judge helpers keep their results in (the trace is never modified otherwise)."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from harness.dynamic.trace.events import (
    Ranges,
    RunStart,
    Trace,
    describe,
    ranges_from_mask,
    ranges_from_positions,
)


def trace_cache(trace: Trace) -> dict:
    """The judge helpers' results for `trace`, kept on the trace object."""
    cache = trace.__dict__.get("_judging_cache")
    if cache is None:
        cache = {}
        trace.__dict__["_judging_cache"] = cache
    return cache


def positions_array(ranges: Ranges) -> np.ndarray:
    """Expand ranges into a sorted int64 array of positions."""
    if not ranges:
        return np.zeros(0, dtype=np.int64)
    r = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    lengths = r[:, 1] - r[:, 0]
    total = int(lengths.sum())
    # vectorised expansion: one arange over all positions, shifted per range
    offsets = np.repeat(r[:, 0] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def ranges_of(array: np.ndarray) -> Ranges:
    return ranges_from_positions(int(p) for p in np.asarray(array).ravel())


def n_positions(trace: Trace) -> int:
    """Length of the validation stream (from RunStart, else one past the largest position)."""
    cache = trace_cache(trace)
    if cache.get("n_positions_events") == len(trace.events):
        return cache["n_positions"]
    starts = trace.of(RunStart)
    n = max([s.val_tokens for s in starts] + [0])
    for e in trace.events:
        ranges = getattr(e, "positions", None)
        if ranges:
            n = max(n, ranges[-1][1])
    cache["n_positions"], cache["n_positions_events"] = n, len(trace.events)
    return n


def describe_positions(positions: Iterable[int] | np.ndarray, limit: int = 6) -> str:
    """'12-15, 40 (...; 5 positions)' for evidence lines."""
    return describe(ranges_of(np.fromiter(positions, dtype=np.int64)), limit)


def mask_positions(mask: int) -> np.ndarray:
    return positions_array(ranges_from_mask(mask))
