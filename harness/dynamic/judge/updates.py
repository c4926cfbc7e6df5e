"""Premature updates: writes into model state that used validation positions before their final
score (or that no pass ever scores), grouped by the function that made them, with the
evidence a finding about them carries."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from harness.core.findings import Confidence, Finding, Layer, Location
from harness.dynamic.judge.locations import function_of, location, update_frame, where
from harness.dynamic.judge.order import timeline
from harness.dynamic.judge.passes import first_score_event, passes, score_precedes
from harness.dynamic.judge.reported import claim_outside_trace, matched_passes
from harness.dynamic.judge.positions import (
    describe_positions,
    n_positions,
    positions_array,
    ranges_of,
    trace_cache,
)
from harness.dynamic.judge.stream import bos_id, tokens_for
from harness.dynamic.trace.events import LossComputed, Scored, Trace, Update, mask_from_ranges

if TYPE_CHECKING:  # pragma: no cover
    from harness.core.rule import Rule


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
    cache = trace_cache(trace)
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
    # When the claimed number is computed outside torch (an n-gram mixer in numpy, PR #813), the
    # trace does not see when the claimed scores were taken: a pass no printed line reproduces
    # (training losses read for a progress print, a mixer's inputs) is not known to be a final
    # score, and a position it never shows is not known to be unscored. Only printed passes
    # count; the black-box probe judges the claimed totals.
    opaque = claim_outside_trace(trace)
    last = last_reader(trace, update)
    printed = matched_passes(trace) if opaque else []
    for p in passes(trace):
        if opaque and all(p is not q for q in printed):
            continue
        sel = pos[p.times[pos] > 0]
        ever[sel] = True
        if not len(sel):
            continue
        late = sel[~score_precedes(tl, p, sel, update)]
        if len(late) and last is not None:
            late = late[~_blind_to(trace, p, late, update, last)]
        if len(late):
            later[p.index] = late
            bad[late] = True
    never = pos[~ever[pos]] if not opaque else pos[:0]
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


TRAINING_VIAS = ("gradient", "optimizer-step")


def is_training(update: Update) -> bool:
    return update.via in TRAINING_VIAS


def artifact_news(trace: Trace) -> dict[int, int]:
    """For each Update of target_kind "artifact" (a torch.save of model state), the mask of its
    validation positions that no earlier update of live state (parameters, buffers, optimizer
    state) carried: the artifact's own contribution (GPTQ statistics from val). Positions the
    weights already held came from an update that is judged itself (pre-quant TTT)."""
    cache = trace_cache(trace)
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
    cache = trace_cache(trace)
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


def last_reader(trace: Trace, u: Update) -> int | None:
    """The seq of the last scored loss op whose forward read the state `u` wrote (-1: none did);
    None when the trace does not say (state it did not watch)."""
    watched = trace.meta.get("watched")
    if watched is None or u.target_kind not in ("parameter", "buffer", "optimizer-state"):
        return None
    # optimizer state ("p:exp_avg") acts only through later steps of its parameter
    target = u.target.rsplit(":", 1)[0] if u.target_kind == "optimizer-state" else u.target
    key = f"{u.rank}:{target}"
    cache = trace_cache(trace)
    if "watched_set" not in cache:
        cache["watched_set"] = set(watched)
    if key not in cache["watched_set"]:
        return None
    return int((trace.meta.get("last_read") or {}).get(key, -1))


def dead_write(trace: Trace, u: Update) -> bool:
    """A write into state that no later scored loss read: a compile warm-up that trains a
    throwaway LoRA on the first validation tokens and deletes it (the April records) changes
    nothing that is scored. Known only for traces that say which state was watched."""
    last = last_reader(trace, u)
    return last is not None and last < u.seq


def _op_seqs(trace: Trace, p) -> tuple[np.ndarray, np.ndarray]:
    """Per Scored event of pass `p`: its rank, and the seq of its loss op's LossComputed."""
    cache = trace_cache(trace)
    key = ("op_seqs", p.index)
    if key not in cache:
        if "loss_seqs" not in cache:
            cache["loss_seqs"] = {(e.rank, e.loss_op): e.seq for e in trace.of(LossComputed)}
        seqs = cache["loss_seqs"]
        cache[key] = (np.array([e.rank for e in p.events], dtype=np.int64),
                      np.array([seqs.get((e.rank, e.loss_op), -1) for e in p.events], dtype=np.int64))
    return cache[key]


def _blind_to(trace: Trace, p, positions: np.ndarray, update: Update, last: int) -> np.ndarray:
    """Which of `positions` pass `p` scored with a loss op computed after the last read of the
    state `update` wrote (its seq `last`): those scores never saw the write (a LoRA trained and
    dropped inside a TTT eval, then a later eval of the base model, PR #826)."""
    ranks, seqs = _op_seqs(trace, p)
    ev = p.first_event[positions]
    return (ranks[ev] == update.rank) & (seqs[ev] > last)


def premature_key(trace: Trace, tl, e: Update, scored_on_rank: dict[int, int]) -> tuple:
    """What an update's premature positions depend on: its rank, positions, the collectives it
    passed, the scores its rank made before it and the last read of the state it wrote. Updates
    alike in these (every parameter of one optimizer step) share one computation."""
    return (e.rank, tl.passed(e), scored_on_rank.get(e.rank, 0), tuple(map(tuple, e.positions)),
            last_reader(trace, e))


def premature_update_groups(trace: Trace, select) -> list[UpdateGroup]:
    """Updates chosen by `select(update)` that used positions before their final score, grouped
    by the function of the update's step frame (else write frame), in timeline order."""
    groups: dict[str, UpdateGroup] = {}
    n = n_positions(trace)
    tl = timeline(trace)
    # updates alike in `premature_key` share one computation
    scored_on_rank: dict[int, int] = {}
    memo: dict[tuple, Premature] = {}
    for e in tl.events:
        if isinstance(e, Scored):
            scored_on_rank[e.rank] = scored_on_rank.get(e.rank, 0) + 1
            continue
        if not isinstance(e, Update) or not e.positions or not select(e) or dead_write(trace, e):
            continue
        key = premature_key(trace, tl, e, scored_on_rank)
        pm = memo.get(key)
        if pm is None:
            pm = memo[key] = premature_positions(trace, e)
        else:
            pm = Premature(update=e, positions=pm.positions, later_pass=pm.later_pass, never=pm.never)
        if not len(pm.positions):
            continue
        fn = function_of(update_frame(e))
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


def group_finding(rule: "Rule", trace: Trace, g: UpdateGroup, message: str) -> Finding:
    """`rule`'s finding about a group of premature updates: at the first update's step line, with
    the group's evidence and related sites; high confidence (the trace shows the order)."""
    ev, related = update_group_evidence(trace, g)
    return rule.finding(Layer.TRACE, message, location(trace, update_frame(g.first.update)),
                        evidence=ev, related=related, confidence=Confidence.HIGH)
