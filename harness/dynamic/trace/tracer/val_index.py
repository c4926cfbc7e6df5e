"""ValIndex: finds where an integer array occurs in the validation stream (a hash index of
the stream's fixed-size blocks, each candidate verified in full)."""
from __future__ import annotations

import numpy as np


class ValIndex:
    """Finds where an integer array occurs in the validation stream.

    The stream is cut into blocks of W tokens; each block's hash goes into a sorted array.
    A query of length >= 2W - 1 contains a whole block at one of its first W offsets, so W
    lookups find every candidate offset; each candidate is verified in full."""

    W = 16

    def __init__(self, stream: np.ndarray):
        self.stream = np.ascontiguousarray(np.asarray(stream, dtype=np.int64).ravel())
        n = self.stream.size
        nb = n // self.W
        rng = np.random.default_rng(20240520)
        self.coef = rng.integers(1, 2**62, size=self.W, dtype=np.uint64) | np.uint64(1)
        if nb:
            blocks = self.stream[: nb * self.W].reshape(nb, self.W).astype(np.uint64)
            with np.errstate(over="ignore"):
                h = (blocks * self.coef).sum(axis=1, dtype=np.uint64)
        else:
            h = np.zeros(0, dtype=np.uint64)
        self.order = np.argsort(h, kind="stable")
        self.hashes = h[self.order]

    def find(self, q: np.ndarray, limit: int = 64) -> list[int]:
        """Offsets o with stream[o:o+len(q)] == q (at most `limit`+1 are reported)."""
        q = np.asarray(q, dtype=np.int64).ravel()
        L, W = q.size, self.W
        if L < 2 * W - 1 or L > self.stream.size:
            return []
        win = np.lib.stride_tricks.sliding_window_view(q[: 2 * W - 1], W).astype(np.uint64)
        with np.errstate(over="ignore"):
            qh = (win * self.coef).sum(axis=1, dtype=np.uint64)
        lo = np.searchsorted(self.hashes, qh, "left")
        hi = np.searchsorted(self.hashes, qh, "right")
        cands: set[int] = set()
        for j in range(W):
            for k in range(int(lo[j]), min(int(hi[j]), int(lo[j]) + limit + 1)):
                o = int(self.order[k]) * W - j
                if 0 <= o and o + L <= self.stream.size:
                    cands.add(o)
        out = []
        for o in sorted(cands):
            if self.stream[o] == q[0] and np.array_equal(self.stream[o:o + L], q):
                out.append(o)
                if len(out) > limit:
                    break
        return out
