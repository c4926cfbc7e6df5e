"""Printed numbers: each reported val_loss/val_bpb paired with the pass and the aggregation of
its scores that reproduce it, and the passes a submission's claim comes from."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from harness.dynamic.judge.passes import Pass, passes
from harness.dynamic.judge.positions import trace_cache
from harness.dynamic.judge.stream import bytes_of, position_bytes
from harness.dynamic.trace.events import Frame, Reported, Trace

LN2 = math.log(2.0)


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
    cache = trace_cache(trace).setdefault("pass_numbers", {})
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
    cache = trace_cache(trace)
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
                # which is judged separately.
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


def report_for_pass(trace: Trace, p: Pass) -> list[Match]:
    return [m for m in match_reported(trace) if m.pass_ is p and m.which is not None]


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


def claimed_label(reported_: list[Reported], claimed: str | None) -> str | None:
    """The line the submission's score comes from; else the last line with loss and bpb."""
    labels = [r.label for r in reported_ if finite(r.val_loss) or finite(r.val_bpb)]
    if claimed and claimed in labels:
        return claimed
    full = [r.label for r in reported_ if r.val_loss is not None and r.val_bpb is not None]
    return full[-1] if full else (labels[-1] if labels else None)


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def claim_outside_trace(trace: Trace) -> bool:
    """The claimed result line (else the last one) matches no pass the tracer captured: the
    eval computes it outside torch (numpy, plain Python), so the trace does not see when its
    scores were taken."""
    cache = trace_cache(trace)
    if "claim_outside" not in cache:
        label = claimed_label(trace.of(Reported), trace.meta.get("claimed_label"))
        matches = [m for m in match_reported(trace) if label is not None
                   and base_label(m.reported.label) == base_label(label)]
        cache["claim_outside"] = bool(matches) and all(m.which is None for m in matches)
    return cache["claim_outside"]


def matched_passes(trace: Trace) -> list[Pass]:
    """The passes a printed line reproduces."""
    out: list[Pass] = []
    for m in match_reported(trace):
        if m.which is not None and m.pass_ is not None and all(p is not m.pass_ for p in out):
            out.append(m.pass_)
    return out


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
