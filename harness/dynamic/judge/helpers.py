"""Pure helpers the trace judges share: event order across ranks, evaluation passes and
their first scores, byte counts, and turning a frame into a finding location.

Nothing here knows a rule by name. The rules in `rules/` call these helpers from their
`judge()` methods; every function is a pure function of a `Trace` (results are cached on
the trace object, which is never modified otherwise).

Order. Events on one rank are ordered by `seq`. Ranks are ordered against each other only
through collectives: an event that precedes the k-th collective on its rank happens before
every event that follows the k-th collective on any rank. With `passed(e)` = number of
collectives its rank finished before `e`, `a` happens before `b` iff they are on the same
rank and `a.seq < b.seq`, or `passed(a) < passed(b)`. Sorting by (passed, rank, seq) gives
one linear order that agrees with happens-before; judges use it to walk events, and the
happens-before test itself to decide violations.

Passes. A run scores the validation stream several times (the training loop's last
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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from harness.dynamic.trace.events import (
    Collective,
    Frame,
    LossComputed,
    Ranges,
    Reported,
    RunEnd,
    RunStart,
    Scored,
    TargetRead,
    Trace,
    Update,
    describe,
    mask_from_ranges,
    ranges_from_mask,
    ranges_from_positions,
)
from harness.challenge.shards import read_shard
from harness.core.findings import Location

LN2 = math.log(2.0)


# ---------------------------------------------------------------- synthetic examples
@dataclass(frozen=True)
class TraceExample:
    """A synthetic trace a dynamic rule must (INVALID) or must not (VALID) report on.
    `function` pins the first finding's enclosing function, `line` its line."""

    events: tuple
    meta: dict = field(default_factory=dict)
    note: str = ""
    function: str | None = None
    line: int | None = None
    message_contains: str | None = None

    def trace(self) -> Trace:
        return Trace(events=list(self.events), submission_dir="", meta=dict(self.meta))


class SyntheticRun:
    """Builds events for synthetic traces (rule examples, tests) with consecutive seqs per rank:

        run = SyntheticRun(n=9)
        run.score("eval_val", 10, [(1, 9)], nll=2.0)
        run.update("ttt", 20, [(1, 9)])
        events = run.events
    """

    def __init__(self, n: int, world_size: int = 1, path: str = "train_gpt.py"):
        self.n = n
        self.path = path
        self.events: list = []
        self._seq: dict[int, int] = {}
        self._coll: dict[int, int] = {}
        self._loss_op = 0
        for r in range(world_size):
            self.events.append(RunStart(seq=self._next(r), rank=r, world_size=world_size, val_tokens=n))

    def _next(self, rank: int) -> int:
        s = self._seq.get(rank, 0)
        self._seq[rank] = s + 1
        return s

    def frame(self, function: str, line: int) -> Frame:
        return Frame(path=self.path, line=line, function=function)

    def score(self, function: str, line: int, positions: Ranges, nll=2.0, rank: int = 0,
              grad_enabled: bool = False, sink: str = "accumulate") -> Scored:
        k = sum(b - a for a, b in positions)
        values = list(nll) if isinstance(nll, (list, tuple)) else [float(nll)] * k
        self._loss_op += 1
        self.events.append(LossComputed(seq=self._next(rank), rank=rank, loss_op=self._loss_op,
                                        positions=list(positions), grad_enabled=grad_enabled,
                                        frame=self.frame(function, line - 1)))
        ev = Scored(seq=self._next(rank), rank=rank, loss_op=self._loss_op, positions=list(positions),
                    nll=values, sink=sink, grad_enabled=grad_enabled, frame=self.frame(function, line))
        self.events.append(ev)
        return ev

    def loss(self, function: str, line: int, positions: Ranges, rank: int = 0) -> LossComputed:
        self._loss_op += 1
        ev = LossComputed(seq=self._next(rank), rank=rank, loss_op=self._loss_op, positions=list(positions),
                          grad_enabled=True, frame=self.frame(function, line))
        self.events.append(ev)
        return ev

    def update(self, function: str, line: int, positions: Ranges, rank: int = 0, via: str = "optimizer-step",
               target: str = "lm_head.weight", target_kind: str = "parameter") -> Update:
        ev = Update(seq=self._next(rank), rank=rank, target=target, target_kind=target_kind, via=via,
                    positions=list(positions), frame=self.frame(function, line),
                    step_frame=self.frame(function, line) if via == "optimizer-step" else None)
        self.events.append(ev)
        return ev

    def target_read(self, function: str, line: int, positions: Ranges, loss_function: str = "forward",
                    loss_line: int = 1, rank: int = 0) -> TargetRead:
        ev = TargetRead(seq=self._next(rank), rank=rank, positions=list(positions),
                        frame=self.frame(function, line), loss_frame=self.frame(loss_function, loss_line))
        self.events.append(ev)
        return ev

    def collective(self, op: str = "all_reduce") -> None:
        """One collective on every rank (all ranks call collectives in the same order)."""
        for r in sorted(self._seq):
            k = self._coll.get(r, 0)
            self._coll[r] = k + 1
            self.events.append(Collective(seq=self._next(r), rank=r, index=k, op=op))

    def report(self, label: str, val_loss: float | None, val_bpb: float | None = None, decimals: int = 8) -> None:
        fmt = f"{{:.{decimals}f}}"
        parts = [label]
        if val_loss is not None:
            val_loss = round(val_loss, decimals)
            parts.append("val_loss:" + fmt.format(val_loss))
        if val_bpb is not None:
            val_bpb = round(val_bpb, decimals)
            parts.append("val_bpb:" + fmt.format(val_bpb))
        self.events.append(Reported(seq=self._next(0), rank=0, label=label, val_loss=val_loss,
                                    val_bpb=val_bpb, line=" ".join(parts), decimals=decimals))

    def end(self, val_bytes_utf8: int | None = None) -> None:
        for r in sorted(self._seq):
            self.events.append(RunEnd(seq=self._next(r), rank=r, exit_code=0, wall_s=1.0,
                                      val_bytes_utf8=val_bytes_utf8 if r == 0 else None))


# ---------------------------------------------------------------- positions
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


# ---------------------------------------------------------------- order
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


# ---------------------------------------------------------------- passes
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


def n_positions(trace: Trace) -> int:
    """Length of the validation stream (from RunStart, else one past the largest position)."""
    cache = _cache(trace)
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


def _cache(trace: Trace) -> dict:
    cache = trace.__dict__.get("_judging_cache")
    if cache is None:
        cache = {}
        trace.__dict__["_judging_cache"] = cache
    return cache


def timeline(trace: Trace) -> Timeline:
    cache = _cache(trace)
    if "timeline" not in cache:
        cache["timeline"] = Timeline(trace)
    return cache["timeline"]


def _function(frame: Frame | None) -> str:
    return frame.function if frame is not None else "?"


def passes(trace: Trace) -> list[Pass]:
    """Split the trace's Scored events into evaluation passes (see the module docstring)."""
    cache = _cache(trace)
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
        fn = _function(e.frame)
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


@dataclass
class Premature:
    """Positions an update used whose score was not yet final when the update ran."""

    update: Update
    positions: np.ndarray  # unscored positions (excluding 0: never a target)
    later_pass: dict[int, np.ndarray]  # pass index -> positions first scored there after the update
    never: np.ndarray  # positions never scored at all


def boundary_mask(trace: Trace) -> np.ndarray | None:
    """True at document-boundary (BOS) positions, when tokens and BOS id are known. Boundaries
    are structure, not content: the accepted per-document TTT of PR #77 splits the stream at
    every BOS before scoring and feeds a document's BOS to its own adapters as context, while
    the previous document -- whose last target that BOS is -- may be scored later. Training on
    a boundary token reveals only where a document starts, which the split already used."""
    cache = _cache(trace)
    if "boundary_mask" not in cache:
        bos, tokens = bos_id(trace), tokens_for(trace)
        cache["boundary_mask"] = (tokens == bos) if (bos is not None and tokens is not None) else None
    return cache["boundary_mask"]


def premature_positions(trace: Trace, update: Update) -> Premature:
    """Positions in `update` for which some pass takes its (final) score after the update, or
    which no pass ever scores. Position 0 is context only (never a target) and is ignored, and
    so are document-boundary tokens (see `boundary_mask`)."""
    tl = timeline(trace)
    n = n_positions(trace)
    pos = positions_array(update.positions)
    pos = pos[(pos >= 1) & (pos < n)]
    boundary = boundary_mask(trace)
    if boundary is not None and len(pos):
        inside = pos < len(boundary)
        pos = pos[~(inside & boundary[np.minimum(pos, len(boundary) - 1)])]
    bad = np.zeros(n, dtype=bool)
    later: dict[int, np.ndarray] = {}
    ever = np.zeros(n, dtype=bool)
    for p in passes(trace):
        sel = pos[p.times[pos] > 0]
        ever[sel] = True
        if not len(sel):
            continue
        late = sel[~score_precedes(tl, p, sel, update)]
        if len(late):
            later[p.index] = late
            bad[late] = True
    never = pos[~ever[pos]]
    bad[never] = True
    return Premature(update=update, positions=np.nonzero(bad)[0], later_pass=later, never=never)


def first_loss_on(trace: Trace, positions: np.ndarray, before=None) -> LossComputed | None:
    """The first loss computation (timeline order) whose targets include any of `positions`:
    a loss with autograd on that happens before `before` (the training loss behind an update)
    when there is one, else any loss on them."""
    if not len(positions):
        return None
    tl = timeline(trace)
    m = mask_from_ranges(ranges_of(positions))
    fallback = None
    for e in tl.events:
        if isinstance(e, LossComputed) and e.positions and (mask_from_ranges(e.positions) & m):
            if e.grad_enabled and (before is None or tl.happens_before(e, before)):
                return e
            fallback = fallback or e
    return fallback


def first_score_event(trace: Trace, p: Pass, positions: np.ndarray) -> Scored | None:
    if not len(positions):
        return None
    idx = p.first_event[positions]
    idx = idx[idx >= 0]
    return p.events[int(idx.min())] if len(idx) else None


# ---------------------------------------------------------------- reported numbers
def tolerance(decimals: int) -> float:
    """How far a printed number may be from the recomputed one: half a unit in the last
    printed place, but never below 1e-6 (float32 per-token losses summed in another order)."""
    return max(0.5 * 10.0 ** (-decimals) * 1.02, 1e-6)


def reported(trace: Trace) -> list[Reported]:
    """Reported scores, `_exact` lines first (they carry more decimals), then in print order."""
    out = [r for r in trace.of(Reported) if r.val_loss is not None or r.val_bpb is not None]
    return sorted(out, key=lambda r: (-r.decimals, r.seq))


@dataclass
class PassNumbers:
    """What a pass's scores give, by the three ways a script might aggregate them."""

    pass_: Pass
    n_tokens: int
    loss: dict[str, float]  # which ("first"/"all"/"last"/"min") -> mean nll (nats)
    bytes: int | None  # true UTF-8 bytes of the scored targets
    bpb: dict[str, float]  # which -> bits per byte (empty when bytes unknown)
    counts: dict[str, int] = field(default_factory=dict)  # which -> scores summed
    bytes_by: dict[str, int] = field(default_factory=dict)  # which -> true bytes behind them


def pass_numbers(trace: Trace, p: Pass) -> PassNumbers:
    cache = _cache(trace).setdefault("pass_numbers", {})
    if p.index in cache:
        return cache[p.index]
    scored = p.scored
    nbytes = bytes_of(trace, scored)
    whichs = p.aggregations()
    loss = {w: p.mean(w) for w in whichs}
    bpb = {}
    bytes_by = {}
    if nbytes:
        bytes_by = {w: nbytes for w in whichs if w != "all"}
        if "all" in whichs:
            per = position_bytes(trace)
            if per is not None and len(per) >= len(p.times):
                bytes_by["all"] = int((per[: len(p.times)] * p.times).sum())
        bpb = {w: p.total(w) / LN2 / b for w, b in bytes_by.items() if b}
    out = PassNumbers(pass_=p, n_tokens=len(scored), loss=loss, bytes=nbytes, bpb=bpb,
                      counts={w: p.count(w) for w in whichs}, bytes_by=bytes_by)
    cache[p.index] = out
    return out


@dataclass
class Match:
    reported: Reported
    pass_: Pass | None
    which: str | None  # "first" (proper), "last"/"min" (a re-score), None: nothing matched
    loss_delta: float | None  # reported - recomputed (the best candidate)
    bpb_delta: float | None
    # another pass reproduces the number too (few printed decimals, near-equal passes), and no
    # more precise line of the same label settled which: judges of byte counts hold back
    ambiguous: bool = False


def match_reported(trace: Trace) -> list[Match]:
    """Pair each Reported number with the pass and aggregation that reproduce it. Preference:
    the first scores of a pass; then a pass's later/min scores. A report matches when its
    val_loss (or, when only a bpb is printed and the bytes are known, its val_bpb) agrees
    within `tolerance(decimals)`. Unmatched reports carry the closest candidate's deltas."""
    cache = _cache(trace)
    if "matches" in cache:
        return cache["matches"]
    numbers = [pass_numbers(trace, p) for p in passes(trace)]
    reports = reported(trace)
    settled: dict[str, Match] = {}  # base label -> the match of its most precise line
    by_report: dict[int, Match] = {}
    # most precise lines first: `x_exact` (8 decimals) settles which pass `x` (4 decimals) is
    for r in sorted(reports, key=lambda r: -r.decimals):
        tol = tolerance(r.decimals)
        matched: Match | None = None
        closest: Match | None = None
        closest_err = math.inf
        hit_passes: set[int] = set()
        best_err = math.inf
        for which in ("first", "all", "last", "min"):
            for num in numbers:
                if which not in num.loss:
                    continue
                dl = r.val_loss - num.loss[which] if r.val_loss is not None else None
                db = r.val_bpb - num.bpb[which] if (r.val_bpb is not None and which in num.bpb) else None
                # Match on the loss when printed: the bpb also depends on the byte count,
                # which byte-accounting judges separately.
                err = abs(dl) if dl is not None else (abs(db) if db is not None else math.nan)
                if math.isnan(err):
                    continue
                if err <= tol:
                    hit_passes.add(num.pass_.index)
                    # the closest aggregation wins: at the 1e-6 floor a sum that counts a few tail
                    # targets twice can sit within tolerance of the first scores too
                    if err < best_err * (1 - 1e-9) or (matched is not None and which == matched.which
                                                       and err < best_err):
                        matched, best_err = Match(r, num.pass_, which, dl, db), err
                if err < closest_err:
                    closest, closest_err = Match(r, num.pass_, None, dl, db), err
        sibling = settled.get(base_label(r.label))
        if matched is not None and sibling is not None and (sibling.pass_ is not matched.pass_
                                                            or sibling.which != matched.which):
            num = next(x for x in numbers if x.pass_ is sibling.pass_)
            dl = r.val_loss - num.loss[sibling.which] if r.val_loss is not None else None
            if dl is not None and abs(dl) <= tol:
                db = r.val_bpb - num.bpb[sibling.which] if (r.val_bpb is not None
                                                            and sibling.which in num.bpb) else None
                matched = Match(r, sibling.pass_, sibling.which, dl, db)
                hit_passes = {sibling.pass_.index}
        if matched is not None:
            matched.ambiguous = len(hit_passes) > 1 and sibling is None
            settled.setdefault(base_label(r.label), matched)
        by_report[id(r)] = matched or closest or Match(r, None, None, None, None)
    out = [by_report[id(r)] for r in reports]
    cache["matches"] = out
    return out


# ---------------------------------------------------------------- bytes
def val_stream(trace: Trace) -> np.ndarray | None:
    """The validation tokens as the submission loaded them, when the trace says where they are:
    meta["val_tokens_path"] (.npy), or RunStart.val_sources (challenge shard format)."""
    cache = _cache(trace)
    if "val_stream" in cache:
        return cache["val_stream"]
    tokens = None
    path = trace.meta.get("val_tokens_path")
    try:
        if path and Path(path).exists():
            tokens = np.load(path).astype(np.int64)
        else:
            starts = trace.of(RunStart)
            sources = starts[0].val_sources if starts else []
            if sources and all(Path(s).exists() for s in sources):
                tokens = np.concatenate([read_shard(s) for s in sources]).astype(np.int64)
    except (OSError, ValueError):
        tokens = None
    cache["val_stream"] = tokens
    return tokens


def byte_tables(tokenizer_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-token (base bytes, has leading space, is boundary) for a SentencePiece model: the
    UTF-8 bytes each token adds to the decoded text."""
    try:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    except Exception:  # noqa: BLE001 - missing or unreadable tokenizer: bytes unknown
        return None
    v = int(sp.vocab_size())
    base = np.zeros(v, dtype=np.int64)
    space = np.zeros(v, dtype=bool)
    boundary = np.ones(v, dtype=bool)
    for t in range(v):
        if sp.is_control(t) or sp.is_unknown(t) or sp.is_unused(t):
            continue
        boundary[t] = False
        if sp.is_byte(t):
            base[t] = 1
            continue
        piece = sp.id_to_piece(t)
        if piece.startswith("\u2581"):
            space[t] = True
            piece = piece[1:]
        base[t] = len(piece.encode("utf-8"))
    return base, space, boundary


def tokenizer_path(trace: Trace) -> str | None:
    """The SentencePiece model the run used: meta["tokenizer_path"], else RunEnd's, if on disk."""
    for cand in [trace.meta.get("tokenizer_path")] + [e.tokenizer_path for e in trace.of(RunEnd)]:
        if cand and Path(cand).exists():
            return str(cand)
    return None


def position_bytes(trace: Trace) -> np.ndarray | None:
    """True UTF-8 bytes contributed by the target at each position (index 0 is 0), or None."""
    cache = _cache(trace)
    if "position_bytes" in cache:
        return cache["position_bytes"]
    out = None
    path = trace.meta.get("position_bytes_path")
    if path and Path(path).exists():
        out = np.load(path).astype(np.int64)
    else:
        tokens = val_stream(trace)
        tok_path = tokenizer_path(trace)
        tables = byte_tables(tok_path) if (tokens is not None and tok_path) else None
        if tables is not None and len(tokens):
            base, space, boundary = tables
            t = np.clip(tokens, 0, len(base) - 1)
            out = np.zeros(len(tokens), dtype=np.int64)
            out[1:] = base[t[1:]] + (space[t[1:]] & ~boundary[t[:-1]])
    cache["position_bytes"] = out
    return out


def bytes_of(trace: Trace, positions: np.ndarray) -> int | None:
    """True UTF-8 bytes of the targets at `positions`: from per-position bytes when available,
    else RunEnd.val_bytes_utf8 when `positions` is exactly 1..N-1."""
    per = position_bytes(trace)
    if per is not None and (not len(positions) or positions.max() < len(per)):
        return int(per[positions].sum())
    n = n_positions(trace)
    if len(positions) == n - 1 and n > 1 and positions[0] == 1 and positions[-1] == n - 1:
        ends = [e.val_bytes_utf8 for e in trace.of(RunEnd) if e.val_bytes_utf8]
        if ends:
            return int(ends[0])
    return None


# ---------------------------------------------------------------- locations
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


def describe_positions(positions: Iterable[int] | np.ndarray, limit: int = 6) -> str:
    """'12-15, 40 (...; 5 positions)' for evidence lines."""
    return describe(ranges_of(np.fromiter(positions, dtype=np.int64)), limit)


def mask_positions(mask: int) -> np.ndarray:
    return positions_array(ranges_from_mask(mask))


# ---------------------------------------------------------------- finding builders
TRAINING_VIAS = ("gradient", "optimizer-step")


def is_training(update: Update) -> bool:
    return update.via in TRAINING_VIAS


def artifact_news(trace: Trace) -> dict[int, int]:
    """For each Update of target_kind "artifact" (a torch.save of model state), the mask of its
    validation positions that no earlier update of live state (parameters, buffers, optimizer
    state) carried: the artifact's own contribution (GPTQ statistics from val). Positions the
    weights already held came from an update that is judged itself (pre-quant TTT)."""
    cache = _cache(trace)
    if "artifact_news" in cache:
        return cache["artifact_news"]
    held = 0
    out: dict[int, int] = {}
    for e in timeline(trace).events:
        if not isinstance(e, Update) or not e.positions:
            continue
        m = mask_from_ranges(e.positions)
        if e.target_kind == "artifact":
            out[id(e)] = m & ~held
        else:
            held |= m
    cache["artifact_news"] = out
    return out


def first_score_key(trace: Trace) -> tuple[dict[int, int], int | None]:
    """Per rank, the seq of its first Scored event; and the smallest `passed` of any Scored."""
    cache = _cache(trace)
    if "first_score_key" in cache:
        return cache["first_score_key"]
    tl = timeline(trace)
    first_seq: dict[int, int] = {}
    min_passed = None
    for s in trace.of(Scored):
        first_seq[s.rank] = min(first_seq.get(s.rank, s.seq), s.seq)
        p = tl.passed(s)
        min_passed = p if min_passed is None else min(min_passed, p)
    cache["first_score_key"] = (first_seq, min_passed)
    return first_seq, min_passed


def before_any_score(trace: Trace, update: Update) -> bool:
    """True when no Scored event (any rank) happens before `update`."""
    tl = timeline(trace)
    first_seq, min_passed = first_score_key(trace)
    if update.rank in first_seq and first_seq[update.rank] < update.seq:
        return False
    return min_passed is None or not (min_passed < tl.passed(update))


@dataclass
class UpdateGroup:
    """Offending updates that share an enclosing function (one finding each)."""

    function: str
    first: Premature
    count: int = 0
    union: np.ndarray | None = None
    targets: list[str] = field(default_factory=list)


def dead_write(trace: Trace, u: Update) -> bool:
    """A write into state that no later scored loss read: a compile warm-up that trains a
    throwaway LoRA on the first validation tokens and deletes it (the April records) changes
    nothing that is scored. Known only for traces that say which state was watched."""
    watched = trace.meta.get("watched")
    if watched is None or u.target_kind not in ("parameter", "buffer", "optimizer-state"):
        return False
    # optimizer state ("p:exp_avg") acts only through later steps of its parameter
    target = u.target.rsplit(":", 1)[0] if u.target_kind == "optimizer-state" else u.target
    key = f"{u.rank}:{target}"
    cache = _cache(trace)
    if "watched_set" not in cache:
        cache["watched_set"] = set(watched)
    if key not in cache["watched_set"]:
        return False
    return int((trace.meta.get("last_read") or {}).get(key, -1)) < u.seq


def premature_update_groups(trace: Trace, select) -> list[UpdateGroup]:
    """Updates chosen by `select(update)` that used positions before their final score, grouped
    by the function of the update's step frame (else write frame), in timeline order."""
    groups: dict[str, UpdateGroup] = {}
    n = n_positions(trace)
    tl = timeline(trace)
    # An update's premature positions depend only on its positions, its rank, the collectives
    # it passed and the scores its rank made before it: updates alike in these (every parameter
    # of one optimizer step) share one computation.
    scored_on_rank: dict[int, int] = {}
    memo: dict[tuple, Premature] = {}
    for e in tl.events:
        if isinstance(e, Scored):
            scored_on_rank[e.rank] = scored_on_rank.get(e.rank, 0) + 1
            continue
        if not isinstance(e, Update) or not e.positions or not select(e) or dead_write(trace, e):
            continue
        key = (e.rank, tl.passed(e), scored_on_rank.get(e.rank, 0), tuple(map(tuple, e.positions)))
        pm = memo.get(key)
        if pm is None:
            pm = memo[key] = premature_positions(trace, e)
        else:
            pm = Premature(update=e, positions=pm.positions, later_pass=pm.later_pass, never=pm.never)
        if not len(pm.positions):
            continue
        fn = _function(update_frame(e))
        g = groups.get(fn)
        if g is None:
            g = groups[fn] = UpdateGroup(function=fn, first=pm, union=np.zeros(n, dtype=bool))
        g.count += 1
        g.union[pm.positions] = True
        if e.target not in g.targets:
            g.targets.append(e.target)
    for g in groups.values():
        g.union = np.nonzero(g.union)[0]
    return list(groups.values())


def update_group_evidence(trace: Trace, g: UpdateGroup) -> tuple[list[str], list[Location]]:
    """Evidence lines and related locations for a group of premature updates."""
    u = g.first.update
    ps = passes(trace)
    ev = [
        f"first offending update: {u.target} ({u.target_kind}, via {u.via}) at {where(update_frame(u))}"
        + (f"; value written at {where(u.frame)}"
           if u.step_frame is not None and u.frame is not None and u.frame != u.step_frame else "")
        + f" [rank {u.rank}, seq {u.seq}]",
        f"it used {len(g.first.positions)} validation positions whose final score was not yet taken: "
        + describe_positions(g.first.positions),
    ]
    related: list[Location] = []
    for idx, late in sorted(g.first.later_pass.items()):
        p = ps[idx]
        s = first_score_event(trace, p, late)
        ev.append(f"{len(late)} of them are first scored only afterwards, in {p.label()}"
                  + (f", first at {where(s.frame)}" if s is not None else ""))
        if s is not None and s.frame is not None:
            related.append(location(trace, s.frame))
    if len(g.first.never):
        ev.append(f"{len(g.first.never)} of them are never scored at all: {describe_positions(g.first.never)}")
    lc = first_loss_on(trace, g.first.positions, before=u)
    if lc is not None:
        ev.append(f"first loss computed on those positions: {where(lc.frame)} "
                  f"(autograd {'on' if lc.grad_enabled else 'off'})")
        if lc.frame is not None:
            related.append(location(trace, lc.frame))
    ev.append(f"{g.count} offending update(s) in {g.function}() in all, writing "
              f"{', '.join(g.targets[:4])}{' …' if len(g.targets) > 4 else ''}; positions involved: "
              + describe_positions(g.union))
    return ev, related


def rescored_passes(trace: Trace) -> list[Pass]:
    return [p for p in passes(trace) if p.rescored_mask or p.dup_mask]


def report_for_pass(trace: Trace, p: Pass) -> list[Match]:
    return [m for m in match_reported(trace) if m.pass_ is p and m.which is not None]


# ---------------------------------------------------------------- judges of shared rules
# The rules train-before-score, val-data-in-training and rescored-tokens have static checks
# too; their `judge()` methods call these builders with the rule instance (for its id, name,
# severity and fix text).
def judge_train_before_score(rule, trace: Trace):
    """An optimizer/gradient update, made after evaluation began, used validation positions
    whose final score was taken after it (or never). One finding per offending function."""
    from harness.core.findings import Confidence, Layer

    def select(u: Update) -> bool:
        return is_training(u) and not before_any_score(trace, u)

    for g in premature_update_groups(trace, select):
        u = g.first.update
        frame = update_frame(u)
        ev, related = update_group_evidence(trace, g)
        line = frame.line if frame is not None else 0
        yield rule.finding(
            Layer.TRACE,
            f"{g.function}() trains on validation tokens before they are scored: the update at "
            f"line {line} used {len(g.first.positions)} positions whose score is taken afterwards"
            if g.first.later_pass else
            f"{g.function}() trains on validation tokens that are never scored: the update at "
            f"line {line} used {len(g.first.positions)} unscored positions",
            location(trace, frame),
            evidence=ev,
            related=related,
            confidence=Confidence.HIGH,
        )


def judge_val_data_in_training(rule, trace: Trace):
    """Validation positions reached persistent state (a) before any token was scored, by any
    write, or (b) through a non-training write (calibration statistics, buffers, copies)
    before their final score."""
    from harness.core.findings import Confidence, Layer

    news = artifact_news(trace)

    def select(u: Update) -> bool:
        if u.target_kind == "artifact" and not news.get(id(u)):
            return False  # the saved weights hold what an update already put there (judged there)
        return before_any_score(trace, u) or not is_training(u)

    for g in premature_update_groups(trace, select):
        u = g.first.update
        frame = update_frame(u)
        ev, related = update_group_evidence(trace, g)
        early = before_any_score(trace, u)
        what = ("before any validation token was scored" if early
                else "into the saved artifact (torch.save), before those tokens were scored"
                if u.target_kind == "artifact"
                else f"through a {u.via} write to a {u.target_kind}, before those tokens were scored")
        yield rule.finding(
            Layer.TRACE,
            f"{g.function}() puts validation data into the model {what} "
            f"({len(g.first.positions)} positions, first write at line {frame.line if frame else 0})",
            location(trace, frame),
            evidence=ev,
            related=related,
            confidence=Confidence.HIGH,
        )


def judge_rescored_tokens(rule, trace: Trace):
    """Inside one evaluation pass a position was scored again. Reported only when a printed
    number comes from the repeated scores (re-scores nothing prints from are not a reported
    score: e.g. a training loss logged with .item()). High: the printed number uses scores taken
    after the model trained on those tokens (last, minimum, or all of them). Low: the printed
    number counts positions twice with no training between (the tail window of a sliding eval),
    or re-scores exist but the printed number is the first scores."""
    from harness.core.findings import Confidence, Layer, Severity

    for p in rescored_passes(trace):
        matches = report_for_pass(trace, p)
        adapted = [m for m in matches if m.which in ("last", "min", "all") and p.rescored_mask]
        doubled = [m for m in matches if m.which == "all" and not p.rescored_mask]
        proper = [m for m in matches if m.which == "first"]
        if adapted:
            severity, mask, what = Severity.HIGH, p.rescored_mask, "after training on them"
        elif doubled:
            severity, mask, what = Severity.LOW, p.dup_mask, "a second time (no training between)"
        elif proper and p.rescored_mask:
            severity, mask, what = Severity.LOW, p.rescored_mask, "after training on them (unused)"
        else:
            continue
        pos = mask_positions(mask)
        again_idx = p.later_event[pos]
        again_idx = again_idx[again_idx >= 0]
        second = p.events[int(again_idx.min())] if len(again_idx) else p.events[-1]
        first = first_score_event(trace, p, pos)
        nums = pass_numbers(trace, p)
        ev = [
            f"{len(pos)} positions scored {what} in {p.label()}: {describe_positions(pos)}",
            f"first score at {where(first.frame if first else None)}; scored again at "
            f"{where(second.frame)} (loss op {second.loss_op})",
            "mean NLL of that pass: " + ", ".join(f"{w} scores {v:.6f}" for w, v in nums.loss.items()),
        ]
        for m in matches:
            ev.append(f"printed '{m.reported.label}' = the {m.which} scores: {m.reported.line.strip()}")
        used = (adapted or doubled or proper)[0]
        f = rule.finding(
            Layer.TRACE,
            f"{_function(second.frame)}() scores validation tokens {what}; the printed "
            f"'{used.reported.label}' uses the {used.which} scores",
            location(trace, second.frame),
            evidence=ev,
            related=[location(trace, first.frame)] if first is not None and first.frame else [],
            confidence=Confidence.HIGH,
        )
        f.severity = severity
        yield f


# ---------------------------------------------------------------- coverage
def seq_len_limit(trace: Trace) -> int:
    """The longest eval/train sequence length the run was configured with (env in meta), the
    most a baseline-style loader drops from the end of the stream. Default 2048."""
    env = trace.meta.get("env") or {}
    vals = []
    for key in ("EVAL_SEQ_LEN", "TRAIN_SEQ_LEN", "VAL_SEQ_LEN", "SEQ_LEN"):
        try:
            vals.append(int(env[key]))
        except (KeyError, TypeError, ValueError):
            pass
    return max(vals) if vals else 2048


def bos_id(trace: Trace) -> int | None:
    if trace.meta.get("bos_id") is not None:
        return int(trace.meta["bos_id"])
    tok = tokenizer_path(trace)
    if not tok:
        return None
    try:
        import sentencepiece as spm

        b = int(spm.SentencePieceProcessor(model_file=str(tok)).bos_id())
        return b if b >= 0 else None
    except Exception:  # noqa: BLE001 - tokenizer unreadable: BOS unknown
        return None


def tokens_for(trace: Trace) -> np.ndarray | None:
    """The validation tokens: meta["val_tokens"] (small synthetic traces) or `val_stream`."""
    if trace.meta.get("val_tokens") is not None:
        return np.asarray(trace.meta["val_tokens"], dtype=np.int64)
    return val_stream(trace)


@dataclass
class Coverage:
    pass_: Pass
    targets: int  # N - 1
    scored: int
    missing: np.ndarray  # unscored target positions
    tail: int  # length of the unscored run that ends at N-1 (0 if the last position is scored)
    tail_allowed: bool  # the tail is shorter than one sequence (the baseline's loader drops it)
    bos: np.ndarray  # missing positions whose token is a document start (BOS)
    other: np.ndarray  # the rest of the missing positions

    @property
    def percent(self) -> float:
        return 100.0 * self.scored / self.targets if self.targets else 100.0


def coverage(trace: Trace, p: Pass) -> Coverage:
    n = n_positions(trace)
    targets = np.arange(1, n, dtype=np.int64)
    missing = targets[p.times[1:n] == 0] if n > 1 else targets
    tail = 0
    if len(missing) and missing[-1] == n - 1:
        gaps = np.nonzero(np.diff(missing) != 1)[0]
        start = missing[gaps[-1] + 1] if len(gaps) else missing[0]
        tail = int(n - start)
    tail_allowed = 0 < tail < seq_len_limit(trace)
    rest = missing[: len(missing) - tail] if tail_allowed else missing
    toks = tokens_for(trace)
    b = bos_id(trace)
    if toks is not None and b is not None and len(toks) >= n and len(rest):
        is_bos = toks[rest] == b
        bos, other = rest[is_bos], rest[~is_bos]
    else:
        bos, other = rest[:0], rest
    return Coverage(pass_=p, targets=max(n - 1, 0), scored=int((p.times[1:n] > 0).sum()), missing=missing,
                    tail=tail, tail_allowed=tail_allowed, bos=bos, other=other)


def judged_passes(trace: Trace) -> list[Pass]:
    """The passes whose numbers were printed (matched to a Reported score); if none matched,
    the last pass (the final eval)."""
    ps = passes(trace)
    chosen = []
    for m in match_reported(trace):
        if m.which is not None and m.pass_ is not None and m.pass_ not in chosen:
            chosen.append(m.pass_)
    if not chosen and ps:
        chosen = [ps[-1]]
    return sorted(chosen, key=lambda p: p.index)


def base_label(label: str) -> str:
    """'x_exact' and 'x' name one result."""
    return label[:-len("_exact")] if label.endswith("_exact") else label


def is_claimed_pass(trace: Trace, p: Pass) -> bool | None:
    """Does a printed number of this pass carry the label the submission's claim comes from
    (trace.meta["claimed_label"], from its real logs)? None when the claimed label is unknown."""
    claimed = trace.meta.get("claimed_label")
    if not claimed:
        return None
    return any(m.pass_ is p and base_label(m.reported.label) == base_label(claimed)
               for m in match_reported(trace))


def find_print_line(trace: Trace, label: str) -> Frame | None:
    """The source line in the submission that prints `label` (for report-level findings)."""
    if not trace.submission_dir or not label:
        return None
    root = Path(trace.submission_dir)
    for path in sorted(root.glob("*.py")):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for i, text in enumerate(lines, 1):
            if label in text and ("print" in text or "log" in text):
                return Frame(path=path.name, line=i, function="", code=text.strip())
    return None


# ---------------------------------------------------------------- examples of the shared rules
def _ex(build, note: str, function: str | None = None, line: int | None = None) -> TraceExample:
    run = SyntheticRun(n=25)
    build(run)
    run.end()
    return TraceExample(events=tuple(run.events), note=note, function=function, line=line)


def _score_first(run):  # PR #461/#549: score chunk k, then train on it
    run.score("eval_val", 250, [(1, 25)], nll=3.0)
    for a in (1, 9, 17):
        run.score("eval_val_ttt", 300, [(a, a + 8)], nll=2.0)
        if a < 17:
            run.loss("eval_val_ttt", 310, [(a, a + 8)])
            run.update("eval_val_ttt", 312, [(a - 1, a + 8)])


def _last_epoch(run):  # PR #713 lora_ttt_eval: train two epochs, score on the third
    run.score("eval_val", 250, [(1, 25)], nll=3.0)
    for epoch in range(3):
        for a in (1, 9, 17):
            if epoch == 2:
                run.score("lora_ttt_eval", 1220, [(a, a + 8)], nll=1.0)
            if a < 17:
                run.loss("lora_ttt_eval", 1200, [(a, a + 8)])
                run.update("lora_ttt_eval", 1265, [(a - 1, a + 8)], target="lora.q.A")


def _prequant(run):  # PR #713 test_time_train: full-model AdamW over val, then a sliding eval
    run.score("eval_val", 250, [(1, 25)], nll=3.0)
    run.update("test_time_train", 1003, [(0, 25)], target="blocks.0.attn.c_q.weight")
    run.score("eval_val_sliding", 900, [(1, 25)], nll=1.5)


def _every_epoch(run):  # PR #614/#642: score every epoch, print the last
    for nll in (2.0, 1.0):
        for a in (1, 13):
            run.score("eval_ttt", 40, [(a, a + 12)], nll=nll)
            run.update("eval_ttt", 45, [(a - 1, a + 12)])
    run.report("final_exact", 1.0)


def _calibrate(run):  # PR #624 shape: GPTQ statistics from val tokens before the final eval
    run.score("eval_val", 40, [(1, 25)], nll=3.0)
    run.update("gptq_calibrate", 700, [(0, 25)], via="direct", target="blocks.0.mlp.fc.weight")
    run.score("eval_val", 40, [(1, 25)], nll=2.9)


def _train_on_val(run):  # val shards in the training loader: updates before any score
    run.update("main", 500, [(0, 25)])
    run.score("eval_val", 40, [(1, 25)], nll=2.0)


def _ema_of_scored(run):  # legal: an EMA copy of weights trained only on scored tokens
    _score_first(run)
    run.update("eval_val_ttt", 320, [(0, 17)], via="direct", target="ema.weight", target_kind="buffer")


def _repeat_evals(run):  # legal: step validation, roundtrip and sliding evals, no training between
    for nll in (3.0, 2.9, 2.8):
        run.score("eval_val", 40, [(1, 25)], nll=nll)


def shared_trace_examples(rule_name: str) -> tuple[list[TraceExample], list[TraceExample]]:
    """TRACE_VALID, TRACE_INVALID for the rules whose static checks live with the static layer."""
    valid = [_ex(_score_first, "score-first chunked TTT"), _ex(_repeat_evals, "several evals, no training"),
             _ex(_ema_of_scored, "EMA copy of weights trained on scored tokens")]
    invalid = {
        "train-before-score": [
            _ex(_last_epoch, "multi-epoch TTT scored on the last epoch", "lora_ttt_eval", 1265),
            _ex(_prequant, "full-model TTT on val, then eval", "test_time_train", 1003),
        ],
        "val-data-in-training": [
            _ex(_calibrate, "calibration statistics from val", "gptq_calibrate", 700),
            _ex(_train_on_val, "val tokens trained on before any score", "main", 500),
        ],
        "rescored-tokens": [
            _ex(_every_epoch, "score every epoch, print the last", "eval_ttt", 40),
        ],
    }[rule_name]
    if rule_name == "rescored-tokens":
        valid = valid + [_ex(_last_epoch, "adapt-then-score is not a re-score (train-before-score)")]
    return valid, invalid
