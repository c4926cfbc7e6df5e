"""Position sets in the tracer (harness/dynamic/trace/provenance.py): masks, ranges and runs.

The tracer converts between position arrays, Python-int bitmasks and half-open ranges on every
score and update. The fast paths (a contiguous run, a dense set without a sort, a one-run mask)
must give exactly what the plain set arithmetic gives; these tests compare them with it on
arrays of every shape the tracer meets: runs, shuffled runs, repeats, negatives (no position),
sparse and dense sets.
"""
from __future__ import annotations

import numpy as np
import pytest

from harness.dynamic.trace import provenance as P


def reference_set(pos: np.ndarray) -> list[int]:
    return sorted({int(x) for x in np.asarray(pos).ravel().tolist() if x >= 0})


def reference_ranges(values: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in values:
        if out and out[-1][1] == v:
            out[-1] = (out[-1][0], v + 1)
        else:
            out.append((v, v + 1))
    return out


def shapes(rng: np.random.Generator):
    yield np.zeros(0, dtype=np.int64)
    yield np.array([5])
    yield np.array([-1, -1])
    for _ in range(120):
        n = int(rng.integers(1, 300))
        lo = int(rng.integers(-3, 200))
        run = np.arange(lo, lo + n)
        yield run  # a window's slice (may start below zero)
        yield rng.permutation(run)  # the same set, shuffled
        bumped = run.copy()
        bumped[int(rng.integers(0, n))] += int(rng.integers(-2, 3))
        yield bumped  # a run with one repeat or one gap
        yield rng.integers(-2, 600, size=n)  # dense, repeats, negatives
        yield rng.integers(0, 10 ** 5, size=n)  # sparse: the sorting path
        yield np.sort(rng.integers(0, 40, size=n)).reshape(1, -1)  # sorted repeats, 2-D


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_mask_and_ranges_of_positions_equal_the_plain_set(dtype):
    for pos in shapes(np.random.default_rng(0)):
        pos = pos.astype(dtype)
        want = reference_set(pos)
        mask = P.mask_from_positions(pos)
        ref = 0
        for v in want:
            ref |= 1 << v
        assert mask == ref, pos
        ranges = P.ranges_of_positions(pos)
        assert ranges == reference_ranges(want), pos
        assert all(type(x) is int for r in ranges for x in r), "ranges must be Python ints (JSON)"
        back = P.positions_from_mask(mask)
        assert back.dtype == np.int64 and back.tolist() == want


def test_contiguous_run_only_for_an_ascending_run_from_zero_up():
    assert P.contiguous_run(np.arange(3, 9)) == (3, 8)
    assert P.contiguous_run(np.array([7])) == (7, 7)
    assert P.contiguous_run(np.array([4, 3])) is None  # descending
    assert P.contiguous_run(np.array([0, 2, 1, 3])) is None  # same span, not in order
    assert P.contiguous_run(np.array([0, 0, 3, 3])) is None  # right length and ends, not a run
    assert P.contiguous_run(np.arange(-2, 3)) is None  # no position below zero
    assert P.contiguous_run(np.zeros(0, dtype=np.int64)) is None


def test_one_run_masks_and_scattered_masks_unpack_alike():
    rng = np.random.default_rng(1)
    for _ in range(500):
        lo, n = int(rng.integers(0, 5000)), int(rng.integers(1, 3000))
        run = ((1 << n) - 1) << lo
        assert P.positions_from_mask(run).tolist() == list(range(lo, lo + n))
        scattered = int(rng.integers(1, 2 ** 62)) << int(rng.integers(0, 200))
        want = [i for i in range(scattered.bit_length()) if scattered >> i & 1]
        assert P.positions_from_mask(scattered).tolist() == want
    assert P.positions_from_mask(0).size == 0
