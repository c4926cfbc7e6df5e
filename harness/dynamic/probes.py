"""Black-box probes: re-run the submission's eval on an altered validation stream and compare
the scores. They catch what provenance cannot see (a hash key on the target, an n-gram cache in
pure Python, adapt-then-score through numpy).

- causality: replace the rest of a long document after position i;
  every score of every position <= i must stay the same.
- properness: replace x_i by K-1 other values, one run each; the
  probabilities exp(-NLL_i(v)) over the true token and the others must sum to <= 1 (= 1 over
  the whole vocabulary with `exhaustive`). Each run changes position i only, so the prefix of i
  is identical in every run and the sum is exact; the run also checks causality for all
  positions before i.

Runs are compared score by score: the k-th score any pass gives position p in one run against
the k-th score of p in the other. First an unmodified re-run measures run-to-run noise; if the
eval is not deterministic the probes are not run (reported as not audited).

`run_probes` takes the baseline trace and a `run_fn(val_override, label) -> Trace` so that it
can be tested without subprocesses; `harness.dynamic.audit` passes one that calls the runner.
The result is a JSON-able dict stored as `trace.meta["probes"]`, which the probe rules judge.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from harness.dynamic.judge.order import timeline
from harness.dynamic.judge.positions import positions_array, ranges_of
from harness.dynamic.trace.events import Frame, Scored, Trace, describe

RunFn = Callable[[np.ndarray, str], Trace]

NOISE_LIMIT = 1e-5  # an unmodified re-run may differ by at most this (nats) for probes to run
TOL_FLOOR = 1e-4  # causality tolerance (nats), raised to 10x the measured noise
TOL_P = 1e-3  # properness tolerance on the probability sum


class ProbeError(Exception):
    """A probe run failed; the message is one line for the not-audited report."""


# ---------------------------------------------------------------- scores of one run
@dataclass
class Occurrences:
    """nll[k][p]: the k-th score (timeline order) that position p received in the run; frame[k][p]:
    index into `frames` of the Scored event that gave it (-1 where none)."""

    nll: list[np.ndarray]
    frame: list[np.ndarray]
    frames: list[Frame | None]
    # time[k][p]: when (timeline index) the k-th score of p was taken; inf where none. Causality
    # is judged in this order: the order the eval scored in, not the order of the stream.
    time: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def of(cls, trace: Trace, n: int) -> "Occurrences":
        nll: list[np.ndarray] = []
        frame: list[np.ndarray] = []
        frames: list[Frame | None] = []
        time: list[np.ndarray] = []
        frame_ids: dict = {}
        count = np.zeros(n, dtype=np.int64)
        for t_index, e in enumerate(timeline(trace).events):
            if not isinstance(e, Scored) or not e.positions:
                continue
            pos = positions_array(e.positions)
            vals = np.asarray(e.nll, dtype=np.float64)
            k = min(len(pos), len(vals))
            pos, vals = pos[:k], vals[:k]
            keep = pos < n
            pos, vals = pos[keep], vals[keep]
            key = (e.frame.path, e.frame.line, e.frame.function) if e.frame else None
            if key not in frame_ids:
                frame_ids[key] = len(frames)
                frames.append(e.frame)
            fid = frame_ids[key]
            # positions repeated inside one event go to successive occurrences
            order = np.argsort(pos, kind="stable")
            pos, vals = pos[order], vals[order]
            while len(pos):
                first = np.ones(len(pos), dtype=bool)
                first[1:] = pos[1:] != pos[:-1]
                p, v = pos[first], vals[first]
                occ = count[p]
                for kk in np.unique(occ):
                    while len(nll) <= kk:
                        nll.append(np.full(n, np.nan))
                        frame.append(np.full(n, -1, dtype=np.int64))
                        time.append(np.full(n, np.inf))
                    sel = occ == kk
                    nll[kk][p[sel]] = v[sel]
                    frame[kk][p[sel]] = fid
                    time[kk][p[sel]] = t_index
                count[p] += 1
                pos, vals = pos[~first], vals[~first]
        return cls(nll=nll, frame=frame, frames=frames, time=time)

    def depth(self) -> int:
        return len(self.nll)


def compare(base: Occurrences, other: Occurrences, watched: np.ndarray,
            before: float = np.inf) -> tuple[float, np.ndarray, int, int]:
    """Largest |delta| over every score of the watched positions that the baseline took before
    timeline index `before` (or with it: one batch); also the watched positions that changed (by more than 0), and the
    worst position and its occurrence. A score present in one run and missing in the other counts
    as an infinite change."""
    n_occ = max(base.depth(), other.depth())
    worst, worst_pos, worst_k = 0.0, -1, 0
    delta_by_pos = np.zeros(len(watched))
    for k in range(n_occ):
        if k < base.depth() and base.time and np.isfinite(before):
            # a score taken after a changed token was scored may depend on it (training on scored
            # tokens is legal): only the scores taken before are watched
            if not (base.time[k][watched] <= before).any():
                continue
        a = base.nll[k][watched] if k < base.depth() else np.full(len(watched), np.nan)
        b = other.nll[k][watched] if k < other.depth() else np.full(len(watched), np.nan)
        both = ~np.isnan(a) & ~np.isnan(b)
        one = np.isnan(a) ^ np.isnan(b)
        d = np.zeros(len(watched))
        d[both] = np.abs(a[both] - b[both])
        d[one] = np.inf
        if k < base.depth() and base.time and np.isfinite(before):
            d[~(base.time[k][watched] <= before)] = 0.0
        delta_by_pos = np.maximum(delta_by_pos, d)
        if len(d) and d.max() > worst:
            j = int(np.argmax(d))
            worst, worst_pos, worst_k = float(d[j]), int(watched[j]), k
    return worst, delta_by_pos, worst_pos, worst_k


# ---------------------------------------------------------------- choosing positions
@dataclass
class Plan:
    position: int  # the probed position i
    doc: tuple[int, int]  # the document holding i, [start, end)
    why: str
    changed: np.ndarray  # causality: positions replaced (after i, same document)
    candidates: list[int]  # properness: values tried at i (true token first)


def documents(tokens: np.ndarray, bos: int | None) -> list[tuple[int, int]]:
    """[start, end) of each document: a document starts at each BOS token."""
    n = len(tokens)
    if bos is None:
        return [(0, n)]
    starts = list(np.nonzero(tokens == bos)[0])
    if not starts or starts[0] != 0:
        starts = [0] + starts
    ends = starts[1:] + [n]
    return [(int(a), int(b)) for a, b in zip(starts, ends) if b > a]


def choose(tokens: np.ndarray, scored: np.ndarray, bos: int | None, k: int, vocab: int | None,
           exhaustive: bool, chunk_hint: int | None = None) -> Plan:
    """Pick the probed position: in the longest document, about 60% of the way in (past its first
    TTT chunk when the document spans several), a position every run scored, whose token is not a
    document boundary, with room after it in the same document."""
    n = len(tokens)
    docs = documents(tokens, bos)
    docs.sort(key=lambda d: d[1] - d[0], reverse=True)
    values, first_index = np.unique(tokens, return_index=True)
    first_seen = dict(zip(values.tolist(), first_index.tolist()))
    for start, end in docs:
        if end - start < 4:
            continue
        target = start + int(0.6 * (end - start))
        if chunk_hint and end - start > 2 * chunk_hint:
            target = max(target, start + chunk_hint + chunk_hint // 2)
        # Prefer, near the target, a position whose previous token is rare in the stream so far:
        # a cache keyed on it has few entries, so an unnormalised "hit" shows most strongly.
        lo = start + 1 + (chunk_hint if chunk_hint and end - start > 2 * chunk_hint else 0)
        near = [p for p in range(max(lo, target - 32), min(end - 1, target + 32))] or list(range(start + 1, end - 1))
        seen = {p: int((tokens[:p] == tokens[p - 1]).sum()) for p in near}
        # Best of all: a previous token that never occurred before (a cache keyed on it is empty,
        # so a cache filled before scoring gives every candidate its full weight), anywhere in
        # the document past the first chunk, nearest the target.
        fresh = [p for p in range(max(lo, start + 2), end - 1) if first_seen[tokens[p - 1]] == p - 1]
        fresh.sort(key=lambda p: (abs(p - target), p))
        order = fresh[:64] + sorted(near, key=lambda p: (seen[p], abs(p - target), p)) + \
            sorted(range(start + 1, end - 1), key=lambda p: (abs(p - target), p))
        for p in order:
            if scored[p] and (bos is None or tokens[p] != bos):
                changed = np.arange(p + 1, end, dtype=np.int64)
                if bos is not None:
                    changed = changed[tokens[changed] != bos]
                if not len(changed):
                    continue
                why = (f"position {p}: {100 * (p - start) / (end - start):.0f}% into the longest document "
                       f"(its previous token occurs {int((tokens[:p] == tokens[p - 1]).sum())}x before it) "
                       f"[{start}, {end}) of {end - start} tokens"
                       + (f", past its first {chunk_hint}-token chunk" if chunk_hint and p - start > chunk_hint else "")
                       + f"; scored in the baseline run; stream of {n} tokens")
                return Plan(position=p, doc=(start, end), why=why, changed=changed,
                            candidates=candidates(tokens, p, bos, k, vocab, exhaustive))
    raise ProbeError("no scored position with a later token in the same document to probe")


def candidates(tokens: np.ndarray, p: int, bos: int | None, k: int, vocab: int | None, exhaustive: bool) -> list[int]:
    """The true token first, then the most frequent other non-boundary tokens of the stream (or
    every vocabulary value when exhaustive)."""
    true = int(tokens[p])
    if exhaustive:
        v = vocab or int(tokens.max()) + 1
        return [true] + [t for t in range(v) if t != true]
    values, counts = np.unique(tokens, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    out = [true]
    for t in values[order]:
        t = int(t)
        if t != true and t != bos and len(out) < k:
            out.append(t)
    return out


def replacement(tokens: np.ndarray, positions: np.ndarray, bos: int | None, seed: int = 0) -> np.ndarray:
    """Other tokens for `positions`: each drawn from the stream's non-boundary tokens, never equal
    to the original."""
    rng = np.random.default_rng(seed)
    pool = tokens[tokens != bos] if bos is not None else tokens
    pool = np.unique(pool)
    if len(pool) < 2:
        raise ProbeError("validation stream has fewer than two distinct tokens")
    out = rng.choice(pool, size=len(positions))
    same = out == tokens[positions]
    while same.any():
        out[same] = rng.choice(pool, size=int(same.sum()))
        same = out == tokens[positions]
    return out.astype(tokens.dtype)


# ---------------------------------------------------------------- running
@dataclass
class ProbeReport:
    """What the probes did; stored as trace.meta["probes"] (via `as_meta`)."""

    not_run: str | None = None
    noise: float | None = None
    tol: float = TOL_FLOOR
    tol_p: float = TOL_P
    causality: list[dict] = field(default_factory=list)
    properness: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)  # label, wall_s
    plan: dict = field(default_factory=dict)
    # the stream the probes ran on: {"tokens": probed stream, "of": the trace run's, "baseline":
    # the run they were compared with} (empty: the trace run's stream, the trace as baseline)
    stream: dict = field(default_factory=dict)

    def as_meta(self) -> dict:
        return asdict(self)


def _frame_dict(occ: Occurrences, k: int, p: int) -> dict | None:
    if k >= occ.depth() or p < 0:
        return None
    fid = int(occ.frame[k][p])
    f = occ.frames[fid] if fid >= 0 else None
    return asdict(f) if f is not None else None


def run_probes(trace: Trace, tokens: np.ndarray, run_fn: RunFn, *, budget: int = 6, exhaustive: bool = False,
               bos: int | None = None, vocab: int | None = None, k: int = 4, chunk_hint: int | None = None,
               period: int | None = None, workers: int = 1,
               log: Callable[[str], None] = lambda s: None) -> ProbeReport:
    """Run the causality and properness probes against `trace` (the baseline run). `budget` caps
    the number of extra runs (one goes to the noise re-run); `exhaustive` tries every vocabulary
    value at the probed position and ignores the budget: in one run of copied contexts when
    `period` (a multiple of every eval window and stride) is given, else one run per value.
    The runs are independent of each other; `workers` of them run at a time."""
    rep = ProbeReport()
    n = len(tokens)
    base = Occurrences.of(trace, n)
    if not base.depth():
        rep.not_run = "the baseline run recorded no scores"
        return rep
    if budget < 2 and not exhaustive:
        rep.not_run = f"probe budget {budget} is too small (needs a noise re-run and one probe run)"
        return rep
    scored = ~np.isnan(base.nll[0])
    try:
        plan = choose(tokens, scored, bos, k, vocab, exhaustive, chunk_hint)
    except ProbeError as exc:
        rep.not_run = str(exc)
        return rep
    i = plan.position
    rep.plan = {"position": i, "doc": list(plan.doc), "why": plan.why,
                "changed": [list(r) for r in ranges_of(plan.changed)], "candidates": plan.candidates}

    # every run, planned up front: causality, properness (one value each); the noise re-run
    # (unmodified) is run only when a probe run shows a difference (see below)
    jobs: list[tuple[str, np.ndarray]] = []
    extra = budget - 1
    if extra > 0 or exhaustive:
        override = tokens.copy()
        override[plan.changed] = replacement(tokens, plan.changed, bos, seed=i)
        jobs.append(("causality", override))
        extra -= 1
    copies = bool(exhaustive and period)
    cands = plan.candidates if exhaustive else plan.candidates[: max(1, min(len(plan.candidates), extra + 1))]
    if not copies:
        for j, v in enumerate(cands[1:], 1):
            override = tokens.copy()
            override[i] = v
            jobs.append((f"properness-{j}", override))

    def run(job: tuple[str, np.ndarray]) -> Occurrences | ProbeError:
        label, override = job
        t0 = time.perf_counter()
        try:
            t = run_fn(override, label)
        except ProbeError as exc:
            return exc
        finally:
            rep.runs.append({"label": label, "wall_s": round(time.perf_counter() - t0, 2)})
            log(f"probe run {label}: {rep.runs[-1]['wall_s']} s")
        return Occurrences.of(t, n)

    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = dict(zip([j[0] for j in jobs], pool.map(run, jobs)))
    else:
        results = {job[0]: run(job) for job in jobs}

    # 1. noise. A deterministic eval scores every position that no change can reach exactly as
    # the baseline did; when all probe runs show that (and no sum above one), an unmodified
    # re-run would measure nothing, and is saved: the noise is what those positions show.
    # Any difference, failure or improper sum pays for the re-run, which tells noise from cause.
    def judge_runs() -> None:
        """Causality and properness records of the probe runs in `results`, at tolerance rep.tol."""
        i = plan.position

        def causality(occ: Occurrences, changed: np.ndarray, label: str) -> None:
            first = int(changed.min())
            watched = np.arange(1, first, dtype=np.int64)
            watched = watched[scored[watched]]
            # execution order: the scores taken before any changed position was first scored
            before = float(base.time[0][changed].min()) if base.time else np.inf
            worst, delta, wpos, wk = compare(base, occ, watched, before)
            moved = watched[delta > rep.tol]
            rep.causality.append({
                "run": label,
                "changed": [list(r) for r in ranges_of(changed)],
                "watched": [list(r) for r in ranges_of(watched)],
                "max_delta": worst if np.isfinite(worst) else 1e9,
                "worst_position": wpos,
                "baseline_nll": float(base.nll[wk][wpos]) if wpos >= 0 and wk < base.depth() else float("nan"),
                "probe_nll": float(occ.nll[wk][wpos]) if wpos >= 0 and wk < occ.depth() else float("nan"),
                "changed_count": int(len(moved)),
                "changed_positions": [list(r) for r in ranges_of(moved)],
                "frame": _frame_dict(base, wk, wpos),
                "why": plan.why,
            })

        # 2. causality: the rest of the document after i replaced
        if "causality" in results:
            occ = results["causality"]
            if isinstance(occ, ProbeError):
                rep.causality.append({"run": "causality", "error": str(occ), "max_delta": 0.0})
            else:
                causality(occ, plan.changed, "causality")
        # 3. properness
        V = vocab or int(tokens.max()) + 1
        if copies:
            occ = results.get("exhaustive-copies")
            if occ is None:
                try:
                    occ = exhaustive_in_one_run(tokens, i, period, V, run_fn, rep)
                except ProbeError as exc:
                    occ = exc
                results["exhaustive-copies"] = occ
            if not isinstance(occ, ProbeError):
                try:
                    _copies_properness(rep, occ, i, int(tokens[i]), period, V, plan.why)
                    return
                except ProbeError as exc:
                    occ = exc
            if not any(r.get("note") for r in rep.runs if r["label"] == "exhaustive-copies"):
                rep.runs.append({"label": "exhaustive-copies", "wall_s": 0.0, "note": str(occ)})
                log(f"exhaustive copies not usable: {occ}; one run per value instead")
            for j, v in enumerate(cands[1:], 1):
                if f"properness-{j}" not in results:
                    override = tokens.copy()
                    override[i] = v
                    results[f"properness-{j}"] = run((f"properness-{j}", override))
        depth = base.depth()
        nll_by_cand: list[np.ndarray] = [np.array([base.nll[kk][i] for kk in range(depth)])]
        for j, v in enumerate(cands[1:], 1):
            occ = results.get(f"properness-{j}")
            if occ is None:
                break
            if isinstance(occ, ProbeError):
                rep.not_run = f"a properness run failed: {occ}"
                return
            nll_by_cand.append(np.array([occ.nll[kk][i] if kk < occ.depth() else np.nan for kk in range(depth)]))
            causality(occ, np.array([i]), f"properness-{j}")
        used = cands[: len(nll_by_cand)]
        if len(used) > 1:
            mat = np.vstack(nll_by_cand)  # candidates x occurrences
            sums = np.nansum(np.exp(-mat), axis=0)
            for kk in range(depth):
                if np.isnan(mat[:, kk]).any():
                    continue  # this occurrence was not produced in every run
                rep.properness.append({
                    "position": i,
                    "true_token": int(tokens[i]),
                    "candidates": [int(c) for c in used],
                    "nll": [float(x) for x in mat[:, kk]],
                    "sum_p": float(sums[kk]),
                    "exhaustive": bool(exhaustive and len(used) >= (vocab or 0)),
                    "occurrence": kk,
                    "frame": _frame_dict(base, kk, i),
                    "why": plan.why,
                })

    judge_runs()
    quiet = (not rep.not_run and all("error" not in c and c["max_delta"] <= NOISE_LIMIT for c in rep.causality)
             and all(p["sum_p"] <= 1.0 for p in rep.properness))
    if quiet and (rep.causality or rep.properness):
        rep.noise = max([c["max_delta"] for c in rep.causality] or [0.0])
        rep.tol = max(TOL_FLOOR, 10 * rep.noise)
        rep.plan["noise_from"] = "the probe runs' positions that no change reaches (no re-run needed)"
        return rep
    rep.causality, rep.properness, rep.not_run = [], [], None
    results["noise"] = run(("noise", tokens.copy()))
    again = results["noise"]
    if isinstance(again, ProbeError):
        rep.not_run = f"the unmodified re-run failed: {again}"
        return rep
    noise, _, npos, _ = compare(base, again, np.arange(n, dtype=np.int64))
    rep.noise = noise
    if not np.isfinite(noise) or noise > NOISE_LIMIT:
        rep.not_run = (f"nondeterministic eval: an unmodified re-run changed the score of position {npos} by "
                       f"{noise:.3g} nats (limit {NOISE_LIMIT:g})")
        return rep
    rep.tol = max(TOL_FLOOR, 10 * noise)
    rep.plan["noise_from"] = "an unmodified re-run"
    judge_runs()
    return rep


def _copy_values(true: int, vocab: int) -> list[int]:
    """The last token of each copy: copy 0 warms up, the last pads, both keep the true token."""
    return [true, true] + list(range(vocab)) + [true, true]


def _copies_stream(tokens: np.ndarray, i: int, period: int, vocab: int) -> np.ndarray:
    if i + 1 < period:
        raise ProbeError(f"position {i} has fewer than {period} tokens before it")
    seg = tokens[i - period + 1: i + 1].copy()
    values = _copy_values(int(tokens[i]), vocab)
    return np.concatenate([np.concatenate([seg[:-1], [v]]) for v in values] + [seg[:1]]).astype(tokens.dtype)


def exhaustive_in_one_run(tokens: np.ndarray, i: int, period: int, vocab: int, run_fn: RunFn,
                          rep: ProbeReport) -> Occurrences:
    """Every vocabulary value at once, for evals whose prediction at p depends only on a bounded
    window before p (plain and sliding-window evals). The stream is rebuilt from copies of the
    `period` tokens ending at i, laid end to end; copy k ends with value v_k. With `period` a
    multiple of every window length and stride, each copy's last token is predicted from the same
    context at the same place in its window, so the copies give NLL_i(v) for every v in one run
    (read by _copies_properness)."""
    stream = _copies_stream(tokens, i, period, vocab)
    t0 = time.perf_counter()
    t = run_fn(stream, "exhaustive-copies")
    rep.runs.append({"label": "exhaustive-copies", "wall_s": round(time.perf_counter() - t0, 2),
                     "tokens": int(len(stream))})
    occ = Occurrences.of(t, len(stream))
    if not occ.depth():
        raise ProbeError("the copied stream produced no scores")
    return occ


def _copies_properness(rep: ProbeReport, occ: Occurrences, i: int, true: int, period: int, vocab: int,
                       why: str) -> None:
    """Copies 1 and the last keep the true token: if their scores differ the eval carries state
    across windows (TTT, caches) and the premise fails (ProbeError: fall back to one run per value)."""
    values = _copy_values(true, vocab)
    ends = np.arange(len(values)) * period + period - 1
    found = False
    for kk in range(occ.depth()):
        nll = occ.nll[kk][ends]
        if np.isnan(nll[1:-1]).any():
            continue
        check = abs(nll[1] - nll[-2])
        if check > rep.tol:
            raise ProbeError(f"copies of one context scored differently ({check:.3g} nats): the eval keeps "
                             f"state across windows")
        cand = nll[2:-2]
        rep.properness.append({
            "position": i, "true_token": true, "candidates": list(range(vocab)),
            "nll": [float(x) for x in cand], "sum_p": float(np.exp(-cand).sum()), "exhaustive": True,
            "occurrence": kk, "frame": _frame_dict(occ, kk, int(ends[2])),
            "why": why + f"; every value tried in one run of {len(values)} copies of the {period} tokens "
                         f"ending at {i}",
        })
        found = True
    if not found:
        raise ProbeError("no pass scored every copy")


def summary(rep: ProbeReport) -> dict:
    """The numbers an AuditResult's stats carry about the probes."""
    if rep.not_run:
        return {"probes_not_run": rep.not_run, "probe_runs": len(rep.runs)}
    return {
        "probe_runs": len(rep.runs),
        "probe_wall_s": round(sum(r["wall_s"] for r in rep.runs), 1),
        "probe_noise_nats": rep.noise,
        "probe_tolerance_nats": rep.tol,
        "probe_position": rep.plan.get("position"),
        "probe_why": rep.plan.get("why"),
        "probe_changed": describe([tuple(r) for r in rep.plan.get("changed", [])]),
        "probe_max_causal_delta": max([c.get("max_delta", 0.0) for c in rep.causality] or [0.0]),
        "probe_prob_sums": [round(p["sum_p"], 6) for p in rep.properness],
        **({"probe_stream_tokens": rep.stream["tokens"]} if rep.stream else {}),
    }
