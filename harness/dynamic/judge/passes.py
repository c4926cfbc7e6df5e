"""Evaluation passes and their first scores.

A run scores the validation stream several times (the training loop's last
validation, the post-quantization roundtrip, a sliding-window or TTT eval). Scored events are
split into *passes*: a new pass starts when a position that the current pass already scored is
scored again, unless the model was trained on that position in between by the same scoring
function *while the pass was in progress* (training interleaved with scoring, then a re-score:
"score every epoch", "min-NLL epoch"). A finished eval followed by a block of training and the
same eval again (pre-quant TTT between two calls of one eval function) is two passes. Inside a
pass the first score of each position is its final score; what happens to later scores is the
business of the rescoring rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.dynamic.judge.locations import function_of
from harness.dynamic.judge.order import Timeline, timeline
from harness.dynamic.judge.positions import n_positions, positions_array, trace_cache
from harness.dynamic.trace.events import Scored, Trace, Update, mask_from_ranges


@dataclass
class Pass:
    """One evaluation pass: Scored events of all ranks, with per-position first scores."""

    index: int
    events: list = field(default_factory=list)  # Scored, in timeline order
    functions: list[str] = field(default_factory=list)  # scoring functions, first-seen order
    mask: int = 0  # every position this pass scored
    rescored_mask: int = 0  # positions scored again after the model trained on them (same pass)
    dup_mask: int = 0  # positions scored again with no training between (double counting)
    all_sum: float = 0.0  # every score of the pass, duplicates included (how a script sums them)
    all_count: int = 0
    min_pos: int = -1  # the lowest position the pass scored (where an eval restarts)
    # per-position arrays (length n_positions); -1 / nan where not scored
    first_nll: np.ndarray | None = None
    last_nll: np.ndarray | None = None
    min_nll: np.ndarray | None = None
    times: np.ndarray | None = None
    first_event: np.ndarray | None = None  # index into `events`
    first_rank: np.ndarray | None = None
    first_seq: np.ndarray | None = None
    first_passed: np.ndarray | None = None
    later_event: np.ndarray | None = None  # index of the second score's event, -1 if none

    @property
    def scored(self) -> np.ndarray:
        return np.nonzero(self.times > 0)[0]

    @property
    def n_scored(self) -> int:
        return int((self.times > 0).sum())

    def total(self, which: str = "first") -> float:
        """Sum of scores: first/last/min per position, or every score counted ("all")."""
        if which == "all":
            return self.all_sum
        arr = {"first": self.first_nll, "last": self.last_nll, "min": self.min_nll}[which]
        return float(np.nansum(arr, dtype=np.float64))

    def count(self, which: str = "first") -> int:
        return self.all_count if which == "all" else self.n_scored

    def mean(self, which: str = "first") -> float:
        n = self.count(which)
        return self.total(which) / n if n else float("nan")

    def aggregations(self) -> list[str]:
        """The ways this pass's scores could have been summed into a printed number."""
        out = ["first"]
        if self.dup_mask or self.rescored_mask:
            out.append("all")
        if self.rescored_mask:
            out += ["last", "min"]
        return out

    def label(self) -> str:
        return f"pass {self.index + 1} (scored in {', '.join(self.functions) or '?'})"


def passes(trace: Trace) -> list[Pass]:
    """Split the trace's Scored events into evaluation passes (see the module docstring)."""
    cache = trace_cache(trace)
    if "passes" in cache:
        return cache["passes"]
    tl = timeline(trace)
    n = n_positions(trace)
    out: list[Pass] = []
    cur: Pass | None = None
    trained_since = 0  # positions of `cur` that an update used after they were scored
    interleaved = False  # `cur` scored new positions after such an update (TTT inside the eval)
    scorer_of: dict[str, int] = {}  # function -> mask of positions it scored in `cur`

    def start() -> Pass:
        p = Pass(index=len(out))
        p.first_nll = np.full(n, np.nan)
        p.last_nll = np.full(n, np.nan)
        p.min_nll = np.full(n, np.nan)
        p.times = np.zeros(n, dtype=np.int32)
        p.first_event = np.full(n, -1, dtype=np.int64)
        p.later_event = np.full(n, -1, dtype=np.int64)
        p.first_rank = np.full(n, -1, dtype=np.int64)
        p.first_seq = np.full(n, -1, dtype=np.int64)
        p.first_passed = np.full(n, -1, dtype=np.int64)
        out.append(p)
        return p

    for e in tl.events:
        if isinstance(e, Update):
            # only training counts: a re-score inside one eval follows a TTT step, while a
            # direct write (calibration, copy) between two evals does not merge them
            if cur is not None and e.positions and e.via in ("gradient", "optimizer-step"):
                trained_since |= mask_from_ranges(e.positions) & cur.mask
            continue
        if not isinstance(e, Scored) or not e.positions:
            continue
        m = mask_from_ranges(e.positions)
        fn = function_of(e.frame)
        if cur is None:
            cur = start()
        else:
            repeated = m & cur.mask
            if repeated:
                # Still the same eval when the same function re-scores: after training on the
                # positions (score every epoch, min-NLL), or without training and without
                # restarting from the pass's first position (a window scored twice at the end
                # of a sliding eval). Anything else is a new eval.
                same_fn = bool(repeated & scorer_of.get(fn, 0))
                trained = bool(repeated & trained_since) and interleaved
                restart = cur.min_pos >= 0 and bool((m >> cur.min_pos) & 1)
                if not (same_fn and (trained or not restart)):
                    cur = start()
                    trained_since = 0
                    interleaved = False
                    scorer_of = {}
                elif not trained:
                    cur.dup_mask |= repeated
            elif trained_since:
                interleaved = True
        cur.events.append(e)
        if fn not in cur.functions:
            cur.functions.append(fn)
        scorer_of[fn] = scorer_of.get(fn, 0) | m
        cur.rescored_mask |= m & cur.mask & trained_since
        cur.mask |= m
        lo = e.positions[0][0]
        cur.min_pos = lo if cur.min_pos < 0 else min(cur.min_pos, lo)
        pos = positions_array(e.positions)
        nll = np.asarray(e.nll, dtype=np.float64)
        if len(nll) != len(pos):  # malformed event: keep what aligns
            k = min(len(nll), len(pos))
            pos, nll = pos[:k], nll[:k]
        ev_index = len(cur.events) - 1
        new = cur.times[pos] == 0
        fresh, again = pos[new], pos[~new]
        cur.first_nll[fresh] = nll[new]
        cur.first_event[fresh] = ev_index
        cur.first_rank[fresh] = e.rank
        cur.first_seq[fresh] = e.seq
        cur.first_passed[fresh] = tl.passed(e)
        cur.min_nll[fresh] = nll[new]
        if len(again):
            cur.min_nll[again] = np.minimum(cur.min_nll[again], nll[~new])
            second = again[cur.later_event[again] < 0]
            cur.later_event[second] = ev_index
        cur.last_nll[pos] = nll
        cur.times[pos] += 1
        cur.all_sum += float(nll.sum(dtype=np.float64))
        cur.all_count += len(nll)
    cache["passes"] = out
    return out


def scored_mask(trace: Trace) -> int:
    """Every position scored at least once, in any pass, on any rank."""
    m = 0
    for p in passes(trace):
        m |= p.mask
    return m


def score_precedes(tl: Timeline, p: Pass, positions: np.ndarray, event) -> np.ndarray:
    """For each position (scored in `p`), does its first score in `p` happen before `event`?"""
    ranks = p.first_rank[positions]
    seqs = p.first_seq[positions]
    passed = p.first_passed[positions]
    same_rank = ranks == event.rank
    return np.where(same_rank, seqs < event.seq, passed < tl.passed(event))


def any_score_before(trace: Trace, event) -> bool:
    """Did any Scored event (any rank) happen before `event`?"""
    tl = timeline(trace)
    return any(tl.happens_before(s, event) for s in trace.of(Scored))


def first_score_event(trace: Trace, p: Pass, positions: np.ndarray) -> Scored | None:
    if not len(positions):
        return None
    idx = p.first_event[positions]
    idx = idx[idx >= 0]
    return p.events[int(idx.min())] if len(idx) else None


def rescored_passes(trace: Trace) -> list[Pass]:
    return [p for p in passes(trace) if p.rescored_mask or p.dup_mask]
