"""Black-box code-length probes: judge an eval by the totals it prints, with no provenance.

The printed val_loss is a mean over the targets the eval scored, so L = val_loss x n is the
total code length in nats. For a legal eval it is a sum of one term per target, and for the
last target of the stream, changing its token changes only its own term:

    L(v) = P + l(v),      sum over candidates v of exp(-l(v)) <= 1  (= 1 over the vocabulary)

where P is the code length of everything else. P is measured by one more run on the stream
without that last token. Nothing here looks inside the eval, so it judges evals computed in
numpy, plain Python, C extensions or unknown kernels, and TTT too: an eval that adapts on the
last token before scoring it gives every candidate a high probability and breaks the bound.

What it needs, and checks before it judges:
- the eval scores every target at both stream lengths (N and N-1 tokens) with their true UTF-8
  bytes: the printed val_loss / val_bpb pair must satisfy bpb = loss x n / (ln 2 x bytes) with
  n = N-1 (resp. N-2) and the bytes of the decoded stream. An eval that drops a partial last
  window, or counts bytes its own way, fails this and the probe says so ("not run") instead of
  guessing; its byte numbers are reported;
- a deterministic eval: one candidate stream runs twice;
- enough printed precision: each total is known to 0.5 x 10^-d x n nats (d printed decimals);
  the stream is made short enough for the bound to be meaningful, and the tolerance is reported.

The stream is the toy validation stream cut to a length the eval's windows divide (N - 1 a
multiple of `period`), with the last context planted: the second-to-last token is one that was
followed by many different tokens earlier in the stream, and the candidates are its most
frequent successors. A cache or mixture that rewards tokens it has seen in that context (an
unnormalised n-gram "hit", a count taken before the score) then gives every candidate its bonus.

Power: with K candidates the test is one-sided (a small improper bonus can stay below one over
K tokens); the tolerance exp(eps) grows with the printed rounding eps, so 4-decimal prints are
judged on short streams only.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from harness.challenge.bpb import LN2
from harness.dynamic.judge.reported import finite
from harness.dynamic.trace.events import Reported

# A run of the submission on a given validation stream, with extra env flags: the result lines it printed.
RunFn = Callable[[np.ndarray, str, dict], list[Reported]]

# Layouts tried in turn, each only when the last one's printed totals do not fit a complete score.
# - Sliding windows whose last window is aligned to the stream end (`last_full_start`, PRs #779,
#   #813) score a stream one token shorter in another layout; with a stride of one token every
#   target is scored once, in its own full window, at any stream length.
# - Most records' loaders keep only a multiple of TRAIN_SEQ_LEN tokens, so a stream one token
#   shorter loses a whole window; with one-token sequences every stream length is scored whole.
# The eval's own logic (caches, mixers, TTT, byte counting) runs unchanged; only the windows, or
# the network's context, change, and every run of one attempt shares them. A third element caps
# the stream's targets: stride-1 windows and one-token sequences run the eval's per-window code
# once per target, so their stream is a quarter of the default (PR #797, judged with one-token
# sequences: its black-box probe spent 138 s at 4,096 targets).
# Not judged by any layout (said, not guessed): windows kept while any target is left
# (`min(ws + seq_len, total) - ws >= 1`, PRs #659, #770, #797) score the last stride of every
# stream again in shorter windows, at any stride below the window (their sliding eval runs only
# then). Two windows (one over all targets but the last, a stride just below it) would lay both
# streams out alike, but these scripts' loaders keep a multiple of max(TRAIN_SEQ_LEN,
# EVAL_SEQ_LEN) tokens, so one of the two streams always loses its tail (tried on #770).
LAYOUTS: list[tuple] = [
    ("the toy profile", {}),
    ("stride-1 windows", {"EVAL_STRIDE": "1"}, 1024),  # a window per target: a shorter stream
    ("one-token sequences", {"TRAIN_SEQ_LEN": "1", "EVAL_SEQ_LEN": "1", "EVAL_STRIDE": "1"}, 1024),  # here too
]

TOL_P = 1e-3  # on the probability sum, over the rounding bound exp(eps)

# Reasons not to judge that no other layout changes (a layout's own failures -- totals that do not
# fit a complete score, a run that prints no result line in that layout -- try the next one).
_FINAL = ("the eval is not deterministic", "no context in the stream", "the validation stream is too short")


class BlackboxError(Exception):
    """A probe run failed; the message is one line for the report."""


@dataclass
class PrintedTotal:
    """One run's claimed result line and what it implies."""

    stream: str  # which stream: "candidate v", "without the last token", "repeat"
    tokens: int  # stream length
    targets: int  # targets a complete score covers (tokens - 1)
    val_loss: float | None
    val_bpb: float | None
    decimals: int
    true_bytes: int  # UTF-8 bytes of targets 1..tokens-1
    implied_bytes: float | None  # targets x loss / (ln 2 x bpb)
    consistent: bool  # the printed pair fits a complete score with true bytes
    total: float = 0.0  # the code length in nats: loss x targets (bpb x ln 2 x true bytes for a bpb-only line)


@dataclass
class BlackboxReport:
    not_run: str = ""  # why no verdict (empty: judged)
    label: str = ""  # the result line judged
    stream_tokens: int = 0
    position: int = -1  # the probed (last) position
    context_token: int = -1
    candidates: list[int] = field(default_factory=list)
    code_lengths: list[float] = field(default_factory=list)  # l(v) in nats, per candidate
    sum_p: float = float("nan")
    tolerance: float = TOL_P  # the sum may exceed 1 by this much (rounding bound included)
    rounding_nats: float = 0.0  # eps: how well one difference of printed totals is known
    runs: list[PrintedTotal] = field(default_factory=list)
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_meta(self) -> dict:
        d = asdict(self)
        d["runs"] = [asdict(r) for r in self.runs]
        return d


# ---------------------------------------------------------------- streams
def stream_length(available: int, period: int | None, decimals: int, most: int = 4096) -> int:
    """N with N - 1 a multiple of the eval's period, short enough that printed rounding
    (0.5 x 10^-decimals nats per target) stays small against one target's code length, and at
    most about `most` targets (two periods at least)."""
    period = max(1, int(period or 128))
    budget_targets = int(0.05 / (0.5 * 10.0 ** -decimals)) if decimals < 12 else 1 << 30
    target = max(2 * period, min(most, budget_targets))
    m = max(2, target // period)
    while m > 2 and m * period + 1 > available:
        m -= 1
    return min(available, m * period + 1)


def plant_context(tokens: np.ndarray, k: int, exclude: set[int]) -> tuple[np.ndarray, int, list[int]]:
    """The stream with its second-to-last token set to a context seen often before, and the k
    most frequent successors of that context (the candidates for the last token)."""
    stream = np.asarray(tokens, dtype=np.int64).copy()
    n = len(stream)
    prev, nxt = stream[: n - 3], stream[1: n - 2]
    best: tuple[int, int, list[int]] | None = None
    for c in np.unique(prev):
        if int(c) in exclude:
            continue
        succ = nxt[prev == c]
        vals, counts = np.unique(succ, return_counts=True)
        keep = [(int(cnt), int(v)) for v, cnt in zip(vals, counts) if int(v) not in exclude]
        if len(keep) < 2:
            continue
        keep.sort(reverse=True)
        score = (min(len(keep), k), sum(c for c, _ in keep[:k]))
        if best is None or score > best[:2]:
            best = (score[0], score[1], [int(c)] + [v for _, v in keep[:k]])
    if best is None:
        raise BlackboxError("no context in the stream is followed by two different tokens")
    context, cands = best[2][0], best[2][1:]
    stream[n - 2] = context
    stream[n - 1] = cands[0]
    return stream, context, cands


# ---------------------------------------------------------------- printed totals
def _printed(reported: list[Reported], label: str) -> list[Reported]:
    """The lines with `label` that print a finite val_loss or val_bpb, in execution order."""
    return [r for r in reported if r.label == label and (finite(r.val_loss) or finite(r.val_bpb))]


def pick_line(reported: list[Reported], label: str, occurrence: int | None = None) -> Reported | None:
    """The `occurrence`-th printed line with `label` (1-based), else the last. A layout can run an
    eval block the toy profile skips (PR #770 prints its claimed label again after a stride-64
    eval that runs only when EVAL_STRIDE != 64): the claim is the print the trace run made,
    counted in execution order."""
    lines = _printed(reported, label)
    if occurrence is None:
        return lines[-1] if lines else None
    return lines[occurrence - 1] if len(lines) >= occurrence else None


def occurrences(reported: list[Reported], label: str) -> int:
    """How many finite lines with `label` a run printed."""
    return len(_printed(reported, label))


def total_of(r: Reported, stream: np.ndarray, what: str, target_bytes: Callable[[np.ndarray], np.ndarray]) -> PrintedTotal:
    n = len(stream) - 1
    true_bytes = int(target_bytes(stream)[1:].sum())
    implied = consistent = None
    if not finite(r.val_loss):
        # a bpb-only line: its code length is bpb x ln 2 x bytes, with the true bytes assumed
        # (nothing printed can check them); the judge notes it
        return PrintedTotal(stream=what, tokens=len(stream), targets=n, val_loss=None, val_bpb=r.val_bpb,
                            decimals=r.decimals, true_bytes=true_bytes, implied_bytes=None, consistent=True,
                            total=float(r.val_bpb) * LN2 * true_bytes)
    if r.val_bpb:
        implied = n * r.val_loss / (LN2 * r.val_bpb)
        # the printed bpb, against what the printed loss gives with n targets and true bytes:
        # both were rounded to their printed decimals
        unit = 0.5 * 10.0 ** -r.decimals
        predicted = r.val_loss * n / (LN2 * true_bytes) if true_bytes else float("inf")
        consistent = abs(predicted - r.val_bpb) <= unit + unit * n / (LN2 * max(true_bytes, 1)) + 1e-12
    return PrintedTotal(stream=what, tokens=len(stream), targets=n, val_loss=float(r.val_loss),
                        val_bpb=r.val_bpb, decimals=r.decimals, true_bytes=true_bytes,
                        implied_bytes=None if implied is None else round(implied, 3),
                        consistent=bool(consistent), total=float(r.val_loss) * n)


# ---------------------------------------------------------------- the probe
def run_blackbox(tokens: np.ndarray, run_fn: RunFn, *, label: str, decimals: int,
                 target_bytes: Callable[[np.ndarray], np.ndarray], period: int | None = None,
                 budget: int = 6, exclude: set[int] | None = None, workers: int = 2,
                 layouts: list[tuple] | None = None, occurrence: int | None = None) -> BlackboxReport:
    """Probe the eval with `budget` runs per layout: K = budget - 2 candidate streams, the stream
    without its last token, and one repeat (determinism); two runs only for a layout whose first
    candidate or shorter stream prints totals that do not fit. The next layout is tried only when the
    printed totals do not fit a complete score (the loader or the windows drop targets).
    `occurrence`: which print of `label` is the claim (the trace run's count; default the last)."""
    t0 = time.perf_counter()
    tried: list[str] = []
    rep = BlackboxReport(label=label)
    for name, extra, *most in (layouts if layouts is not None else LAYOUTS):
        rep = _attempt(tokens, run_fn, label, decimals, target_bytes, period, budget, exclude, workers, extra,
                       occurrence, most[0] if most else 4096)
        tried.append(f"{name}: {rep.not_run or 'judged'}")
        if not rep.not_run or rep.not_run.startswith(_FINAL):
            break  # judged, or a reason no other layout changes
    rep.notes[:0] = [f"layout {t}" for t in tried[:-1]]
    if len(tried) > 1 and rep.not_run and not rep.not_run.startswith(_FINAL):
        # every layout failed, each for its own reason: the first one's is the eval as it runs
        rep.not_run = f"no layout gave totals to judge ({len(tried)} tried; " + "; ".join(tried) + ")"
    if tried and not rep.not_run:
        rep.notes.insert(0, f"layout: {tried[-1].split(':')[0]}")
    rep.wall_s = round(time.perf_counter() - t0, 1)
    return rep


def _attempt(tokens, run_fn, label, decimals, target_bytes, period, budget, exclude, workers, extra,
             occurrence: int | None, most: int) -> BlackboxReport:
    rep = BlackboxReport(label=label)
    k = max(2, int(budget) - 2)
    n_tok = stream_length(len(tokens), period, decimals, most)
    if n_tok < 8:
        rep.not_run = f"the validation stream is too short ({len(tokens)} tokens)"
        return rep
    try:
        base, context, cands = plant_context(tokens[:n_tok], k, exclude or set())
    except BlackboxError as exc:
        rep.not_run = str(exc)
        return rep
    rep.stream_tokens, rep.position, rep.context_token, rep.candidates = n_tok, n_tok - 1, context, cands
    jobs: list[tuple[str, np.ndarray]] = []
    for v in cands:
        s = base.copy()
        s[-1] = v
        jobs.append((f"candidate {v}", s))
    jobs.append(("without the last token", base[:-1].copy()))
    jobs.append((f"repeat of candidate {cands[0]}", jobs[0][1].copy()))

    def one(job):
        what, stream = job
        r = pick_line(run_fn(stream, what, extra), label, occurrence)
        if r is None:
            raise BlackboxError(f"{what}: the run printed no '{label}' line")
        return total_of(r, stream, what, target_bytes)

    # a first candidate and the shorter stream first: when their printed pairs do not fit a
    # complete score, this layout is done after one round, not three
    first, rest = [jobs[0], jobs[-2]], jobs[1:-2] + [jobs[-1]]
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            head = list(pool.map(one, first))
            misfit = [r for r in head if not r.consistent]
            if misfit:
                rep.runs = head
                rep.not_run = _misfit(label, misfit[0])
                return rep
            tail = list(pool.map(one, rest))
    except BlackboxError as exc:
        rep.not_run = str(exc)
        return rep
    rep.runs = [head[0], *tail[:-1], head[1], tail[-1]]
    _judge(rep)
    return rep


def _misfit(label: str, r: PrintedTotal) -> str:
    return (f"the printed val_loss/val_bpb of '{label}' do not fit a score of all {r.targets} targets "
            f"of a {r.tokens}-token stream with their true UTF-8 bytes ({r.stream}: implied "
            f"{r.implied_bytes} bytes, true {r.true_bytes}): the eval drops targets at this length "
            "(a partial last window, a document filter) or counts bytes its own way")


def _judge(rep: BlackboxReport) -> None:
    cand_runs, minus, again = rep.runs[:-2], rep.runs[-2], rep.runs[-1]
    unit = max(0.5 * 10.0 ** -r.decimals for r in rep.runs)
    # a printed mean is known to `unit` per target; a printed bpb to `unit` x ln 2 per byte
    per = [r.true_bytes * LN2 if r.val_loss is None else r.targets for r in (cand_runs[0], minus)]
    rep.rounding_nats = unit * sum(per)
    if cand_runs[0].val_loss is None:
        rep.notes.append(f"'{rep.label}' prints no val_loss: totals from val_bpb x ln 2 x the true bytes "
                         "(the eval's own byte count is assumed right)")
    noise = abs(again.total - cand_runs[0].total)
    if noise > rep.rounding_nats:
        rep.not_run = (f"the eval is not deterministic: the same stream gave totals {cand_runs[0].total:.6f} and "
                       f"{again.total:.6f} nats")
        return
    bad = [r for r in cand_runs + [minus] if not r.consistent]
    if bad:
        rep.not_run = _misfit(rep.label, bad[0])
        return
    p = minus.total
    rep.code_lengths = [round(r.total - p, 9) for r in cand_runs]
    rep.sum_p = float(sum(math.exp(-x) for x in rep.code_lengths))
    rep.tolerance = math.exp(rep.rounding_nats) - 1.0 + TOL_P
    rep.notes.append(f"{len(rep.runs)} runs; totals known to {rep.rounding_nats:.2e} nats "
                     f"({cand_runs[0].decimals} printed decimals x {cand_runs[0].targets + minus.targets} targets)")
