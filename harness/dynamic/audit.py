"""The dynamic audit of one submission folder: run it traced at toy scale, judge the trace with
every rule that has a judge, then probe it, and return an `AuditResult`.

    run_dynamic(folder, options) -> AuditResult

options (all optional): env (dict: flags for the run, over the submission's own flags and the
toy profile), nproc (1; 2 runs under torchrun with gloo), exhaustive (False: properness over
the whole vocabulary), probe_budget (6 extra runs at most for the causality probe), blackbox_budget (6 runs per
layout of the black-box code-length probe: 4 candidates, one shorter stream, one repeat; fewer
candidates lose power against cache "hit" bonuses), probes (True), timeout_s (300 per
run), allow_network (False), allow_weak_sandbox (False: without bubblewrap the run is refused,
not audited; True runs under `unshare -Urn`, writes not confined, with a warning), static_first (False: also add the flags static findings need),
toy_data (a dict from `reference_model.toy_data.make_toy_data`, else built and cached).

The engine knows no rule by name: judges come from `harness.core.registry.all_rules()`; trace judges run
on the traced run, probe judges on the same trace once `trace.meta["probes"]` holds the probe
record. Anything that could not be checked becomes a `NotAudited` entry (exit 3 unless a
finding forces 1), never a silent pass.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.dynamic.judge.coverage import coverage
from harness.dynamic.judge.passes import passes
from harness.dynamic.judge.positions import n_positions
from harness.dynamic.judge.reported import (claim_outside_trace, claimed_label, judged_passes, match_reported,
                                            pass_numbers)
from harness.dynamic.judge.stream import bos_id, byte_tables, target_bytes, tokenizer_path, tokens_for
from harness.dynamic import probes as P
from harness.dynamic.judge.sites import site_index
from harness.dynamic.trace.events import Reported, RunStart, Scored, Trace
from harness.core.findings import AuditResult, Layer, NotAudited
from harness.core.registry import all_rules
from harness.challenge.flags import submission_flags

DEFAULTS: dict[str, Any] = {
    "env": {},
    "nproc": 1,
    "exhaustive": False,
    "probe_budget": 6,
    "probe_workers": 2,  # probe runs at a time (each is single-threaded)
    # probe on the stream's first N tokens, against a baseline run of that stream (0: the whole
    # stream, the trace run as baseline); see _probe
    "probe_stream_tokens": 8192,
    "probes": True,
    "timeout_s": 300,
    "allow_network": False,
    "allow_weak_sandbox": False,
    "static_first": False,
    "toy_data": None,
    "blackbox_budget": 6,  # runs per layout of the code-length probe (K = budget - 2 candidates)
    "blackbox": "auto",  # the code-length probe: "auto" (when the tracer saw no scores), "always", "off"
    # CPU autocast of the runs: None = float32, rerun in bf16 when the script needs it; the
    # trace run's choice is kept for the probe runs (a failed float32 attempt each costs a run)
    "autocast": None,
}

# ---------------------------------------------------------------- inputs
def toy_data(options: dict) -> dict:
    """The toy dataset (tokenizer, shards): the caller's, else the runner's cached one."""
    if options.get("toy_data"):
        return options["toy_data"]
    from harness.dynamic.run.runner import get_toy_data

    return get_toy_data()


def val_tokens_file(data: dict, override: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """The validation stream the run loaded (the toy shards, or the override) and a .npy copy
    that judges can read after the run's scratch folder is gone."""
    import hashlib

    from harness.challenge.shards import read_shard

    if override is not None:
        tokens = np.asarray(override, dtype=np.int64)
    else:
        parts = [read_shard(p) for p in data["val_files"]]
        tokens = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    digest = hashlib.sha256(tokens.tobytes()).hexdigest()[:16]
    root = Path(os.environ.get("GOLF_AUDIT_CACHE", Path(tempfile.gettempdir()) / "golf-audit-cache")) / "val"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"val-{digest}.npy"
    if not path.exists():
        tmp = root / f".{digest}.{os.getpid()}.npy"
        np.save(tmp, tokens)
        os.replace(tmp, path)
    return tokens, str(path)


def _run(folder: Path, env: dict, data: dict, options: dict, *, trace: bool = True,
         tracer_options: dict | None = None, val_override: np.ndarray | None = None):
    """`env` holds the submission's own flags (shrunk to toy scale by the runner) under
    options["env"], the caller's explicit values (passed as given)."""
    from harness.dynamic.run.runner import run_submission

    explicit = {str(k): str(v) for k, v in (options.get("env") or {}).items()}
    own = {k: v for k, v in env.items() if k not in explicit}
    kwargs: dict[str, Any] = dict(env=explicit, submission_env=own, toy_data=data, nproc=int(options["nproc"]), trace=trace,
                                  tracer_options=tracer_options, val_override=val_override,
                                  timeout_s=int(options["timeout_s"]))
    if options.get("autocast"):
        kwargs["shim_options"] = {"autocast": str(options["autocast"])}
    if options.get("toy_literals") is False:
        from harness.dynamic.cpu.toy_env import ToyOptions

        kwargs["toy_options"] = ToyOptions(literals=False)
    if options.get("allow_network"):
        kwargs["allow_network"] = True
    if options.get("allow_weak_sandbox"):
        kwargs["allow_weak_sandbox"] = True
    return run_submission(str(folder), **kwargs)


def _claimed_label(folder: Path) -> str | None:
    """The result line the submission's score comes from (golf-eval reads its logs and
    submission.json), so judges can tell the claimed pass from diagnostic ones."""
    try:
        from harness.evaluation.claims import verify

        return verify(folder).score_label
    except Exception:  # noqa: BLE001 - no logs / no submission.json: unknown
        return None


def _failure(result) -> str | None:
    """One line saying why a run cannot be judged, or None."""
    if getattr(result, "error", None):
        return str(result.error).strip().splitlines()[0][:300]
    if result.exit_code != 0:
        tail = [ln for ln in (result.stderr or "").strip().splitlines() if ln.strip()]
        return f"the submission exited with code {result.exit_code}" + (f": {tail[-1][:240]}" if tail else "")
    if result.trace is None:
        return "the run produced no trace"
    return None


def _result_trace(result, folder: Path, env: dict, data: dict, tokens_path: str | None = None) -> Trace:
    trace = result.trace
    # the run's scratch copy is deleted after the run: quote lines from the folder itself, and
    # point judges at files that outlive the run
    trace.submission_dir = str(folder)
    trace.meta.setdefault("env", dict(env))
    trace.meta["tokenizer_path"] = str(data.get("tokenizer", ""))
    if tokens_path:
        trace.meta["val_tokens_path"] = tokens_path
    if not trace.of(Reported):  # the runner normally adds these; parse stdout if it did not
        from harness.dynamic.trace.reported import parse_reported

        trace.events.extend(parse_reported(result.stdout or ""))
    return trace


# ---------------------------------------------------------------- the audit
def run_dynamic(folder: str | Path, options: dict | None = None) -> AuditResult:
    opts = {**DEFAULTS, **(options or {})}
    folder = Path(folder)
    res = AuditResult(target=str(folder), layers_run=["trace"])
    t_start = time.perf_counter()

    flags = submission_flags(folder)
    env = {**flags, **{str(k): str(v) for k, v in (opts["env"] or {}).items()}}
    res.env_flags = dict(flags)
    if flags:
        res.notes.append("ran with the submission's own flags: " + " ".join(f"{k}={v}" for k, v in sorted(flags.items())))
    if opts["env"]:
        res.notes.append("flags from options: " + " ".join(f"{k}={v}" for k, v in sorted(opts["env"].items())))
    if opts.get("static_first"):
        res.notes.append("static_first: flags of reachable static findings are the CLI's to pass in options['env']")

    # refuse before building toy data: without bubblewrap the submission's writes are not
    # confined, and a submission that knows it is audited could rewrite its own trace
    from harness.dynamic.run.sandbox import SandboxUnavailable, choose_isolation

    try:
        choose_isolation(allow_weak=bool(opts.get("allow_weak_sandbox")), allow_network=bool(opts.get("allow_network")))
    except SandboxUnavailable as exc:
        res.not_audited.append(NotAudited(path=str(folder), layer=Layer.TRACE, reason=f"not audited: {exc}"))
        return res

    try:
        data = toy_data(opts)
    except Exception as exc:  # noqa: BLE001 - no toy data: nothing can run
        res.not_audited.append(NotAudited(path=str(folder), layer=Layer.TRACE,
                                          reason=f"not audited: toy data could not be built: {exc}"))
        return res

    result = _run(folder, env, data, opts, trace=True)
    res.stats["trace_run_wall_s"] = round(float(result.wall_s or 0.0), 1)
    from harness.dynamic.run.runner import BF16_RERUN_NOTE, LITERALS_RERUN_NOTE

    # the probe runs repeat the trace run's choices, not its failed first attempts
    if not opts.get("autocast") and any(str(n).startswith(BF16_RERUN_NOTE) for n in (result.notes or [])):
        opts = {**opts, "autocast": "bf16"}
    if any(str(n).startswith(LITERALS_RERUN_NOTE) for n in (result.notes or [])):
        opts = {**opts, "toy_literals": False}
    res.notes.extend(str(n) for n in (result.notes or []))
    res.warnings.extend(w for w in getattr(result, "warnings", []) if w not in res.warnings)
    why = _failure(result)
    if why is not None:
        res.not_audited.append(NotAudited(path=str(folder), layer=Layer.TRACE, reason=f"not audited: {why}",
                                          detail=(result.stderr or "")[-2000:]))
        return res
    try:
        _, tokens_path = val_tokens_file(data)
    except (OSError, ValueError, KeyError):
        tokens_path = None
        res.notes.append("validation tokens unreadable: coverage by document, bytes and probes limited")
    trace = _result_trace(result, folder, env, data, tokens_path)
    trace.meta["claimed_label"] = _claimed_label(folder)
    _shim_notes(res, trace)
    if trace.meta.get("untrusted"):
        # the submission removed the tracer's modes/hooks mid-run: what the trace lacks proves
        # nothing, so only judges of the trace's integrity run, and the printed totals are
        # judged by the black-box probe, which needs no instrumentation
        res.notes.append(f"trace not trusted ({trace.meta['untrusted']}): trace judges skipped, verdict from "
                         "the black-box code-length probe")
        for rule in all_rules():
            if rule.has_judge() and rule.judges_untrusted and Layer.TRACE in rule.layers:
                res.findings.extend(_judge(rule, trace, res))
        _blackbox(folder, env, data, opts, trace, res, required=True)
        res.stats["dynamic_wall_s"] = round(time.perf_counter() - t_start, 1)
        return res
    if not trace.of(Scored) and opts.get("blackbox") == "off":
        res.not_audited.append(NotAudited(
            path=str(folder), layer=Layer.TRACE,
            reason="not audited: the tracer recorded no scored validation positions (eval not recognised)"))
        return res
    if not trace.of(Scored):
        # the eval computes its scores outside torch (numpy, plain Python, a C extension): no
        # provenance to judge, so the printed totals are judged instead
        res.notes.append("the tracer recorded no scored validation positions (the eval computes its scores "
                         "outside torch); trace judges skipped, verdict from the black-box code-length probe")
        _blackbox(folder, env, data, opts, trace, res, required=True)
        res.stats["dynamic_wall_s"] = round(time.perf_counter() - t_start, 1)
        return res

    # 0. an eval whose claimed line matches no traced pass computes it outside torch: the
    # black-box probe judges those printed totals (trace judges read its record too)
    if opts.get("blackbox") == "always" or (opts.get("blackbox") == "auto" and claim_outside_trace(trace)):
        _blackbox(folder, env, data, opts, trace, res, required=False, judge=False)

    # 1. trace judges
    rules = [r for r in all_rules() if r.has_judge()]
    judged_before = len(res.not_audited)
    for rule in rules:
        if Layer.TRACE in rule.layers:
            res.findings.extend(_judge(rule, trace, res))
    _trace_stats(res, trace)
    if len(res.not_audited) == judged_before and not trace.meta.get("untrusted") and not claim_outside_trace(trace):
        # a complete, judged trace: the fused verdict may refute static suspicions with it
        # (not one whose claimed number is computed outside torch: it cannot see those scores)
        res.trace_sites = site_index(trace)

    # 2. probes
    probe_judged = False
    if opts.get("probes", True) and any(Layer.PROBE in r.layers for r in rules):
        if "probe" not in res.layers_run:
            res.layers_run.append("probe")
        report = _probe(folder, env, data, opts, trace, res)
        trace.meta["probes"] = report.as_meta()
        res.stats.update(P.summary(report))
        if report.not_run:
            names = ", ".join(r.name for r in rules if Layer.PROBE in r.layers)
            res.not_audited.append(NotAudited(path=str(folder), layer=Layer.PROBE,
                                              reason=f"probe not run: {report.not_run} ({names} not audited)"))
        else:
            probe_judged = True
            for rule in rules:
                if Layer.PROBE in rule.layers:
                    for f in _judge(rule, trace, res):
                        if not _fold_into_trace_finding(res, f):
                            res.findings.append(f)
    if not probe_judged and "blackbox" in trace.meta and not trace.meta["blackbox"].get("not_run"):
        for rule in rules:
            if Layer.PROBE in rule.layers:
                res.findings.extend(f for f in _judge(rule, trace, res) if _from_blackbox(f))
    res.stats["dynamic_wall_s"] = round(time.perf_counter() - t_start, 1)
    return res


def _from_blackbox(f) -> bool:
    return any("black-box" in e for e in f.evidence[:1])


def _blackbox(folder: Path, env: dict, data: dict, opts: dict, trace: Trace, res: AuditResult, *,
              required: bool, judge: bool = True) -> None:
    """Run the black-box code-length probe; with `judge`, judge it with the probe rules now.
    `required`: it is the only verdict (the tracer saw no scores), so a probe that cannot run is
    "not audited"."""
    from harness.dynamic import blackbox as B

    rules = [r for r in all_rules() if r.has_judge() and Layer.PROBE in r.layers]
    reported = trace.of(Reported)
    label = claimed_label(reported, trace.meta.get("claimed_label"))
    report = B.BlackboxReport()
    tokens = tokens_for(trace)
    tok_path = tokenizer_path(trace)
    tables = byte_tables(tok_path) if tok_path else None
    if label is None:
        report.not_run = "the run printed no val_loss line to judge"
    elif tokens is None or tables is None:
        report.not_run = "the validation tokens or the tokenizer the run used are unknown"
    else:
        base, _, boundary = tables

        def run_fn(stream: np.ndarray, what: str, extra: dict) -> list:
            run_opts = {**opts, "env": {**(opts.get("env") or {}), **extra}} if extra else opts
            r = _run(folder, env, data, run_opts, trace=False, val_override=stream)
            if getattr(r, "error", None) or r.exit_code != 0:
                why = _failure(r) or "the run failed"
                raise B.BlackboxError(f"{what}: {why}")
            return list(r.reported)

        line = B.pick_line(reported, label)
        exclude = {int(t) for t in np.nonzero(boundary | (base == 0))[0]}
        bos = bos_id(trace)
        if bos is not None:
            exclude.add(int(bos))
        used = {**env, **(trace.meta.get("env") or {})}
        report = B.run_blackbox(np.asarray(tokens, dtype=np.int64), run_fn, label=label,
                                decimals=line.decimals if line else 4,
                                target_bytes=lambda stream: target_bytes(tables, stream),
                                period=_eval_period(used), budget=int(opts.get("blackbox_budget", 6)),
                                exclude=exclude, workers=int(opts.get("probe_workers", 2)),
                                occurrence=B.occurrences(reported, label) or None)
    trace.meta["blackbox"] = report.as_meta()
    res.stats["blackbox"] = {k: v for k, v in report.as_meta().items() if k != "runs"}
    res.stats["blackbox_wall_s"] = report.wall_s
    if "probe" not in res.layers_run:
        res.layers_run.append("probe")
    if report.not_run:
        names = ", ".join(r.name for r in rules)
        if required:
            res.not_audited.append(NotAudited(path=str(folder), layer=Layer.PROBE, reason=(
                "not audited: the tracer recorded no scored validation positions, and the black-box "
                f"code-length probe could not judge the printed totals: {report.not_run} ({names} not audited)")))
        else:
            # the claimed line matches no traced pass (computed outside torch), and nothing else
            # can judge it: said as loudly as a layer that did not run
            res.not_audited.append(NotAudited(path=str(folder), layer=Layer.PROBE, reason=(
                f"not audited: the claimed line '{label}' matches no traced pass (its eval computes it outside "
                f"torch) and the black-box code-length probe could not judge it: {report.not_run} "
                f"({names} not audited for it)")))
        return
    res.notes.append(f"black-box code-length probe on '{label}': probabilities of {len(report.candidates)} candidates "
                     f"for the last token sum to {report.sum_p:.6f} (tolerance {report.tolerance:.2e}); "
                     + "; ".join(report.notes))
    if judge:
        for rule in rules:
            res.findings.extend(_judge(rule, trace, res))


def _eval_period(used: dict) -> int | None:
    """A length every eval window and stride the run was configured with divides."""
    import math

    lens = [int(used[k]) for k in ("TRAIN_SEQ_LEN", "EVAL_SEQ_LEN", "TTT_EVAL_SEQ_LEN")
            if str(used.get(k, "")).isdigit() and int(used[k]) > 0]
    if not lens:
        return None
    period = 2 * max(lens)
    for k in ("EVAL_STRIDE", "TRAIN_SEQ_LEN", "EVAL_SEQ_LEN", "TTT_EVAL_SEQ_LEN"):
        if str(used.get(k, "")).isdigit() and int(used[k]) > 0:
            period = period * int(used[k]) // math.gcd(period, int(used[k]))
    return period


def _fold_into_trace_finding(res: AuditResult, probe_finding) -> bool:
    """A probe finding is a symptom; when a trace finding already names its cause — the same
    scoring site appears as the trace finding's location or related location (e.g. the pass that
    scores positions after a TTT step) — the probe's evidence is added to that finding as
    confirmation instead of a second finding for one violation. Returns True when folded."""
    loc = probe_finding.location
    if not loc.function:
        return False

    def distance(f) -> int | None:
        """0: the finding's own site is the probed scoring site; k: its k-th related site is
        (related sites are the passes after its updates, nearest first); None: unrelated."""
        sites = [f.location] + list(f.related)
        hits = [i for i, s in enumerate(sites) if s.path == loc.path and s.function == loc.function]
        return hits[0] if hits else None

    # the nearest cause wins: a sliding eval after two TTT phases belongs to the later one
    # ... and only a cause at least as severe: a low tail re-score at the same site explains
    # nothing about scores that moved with later tokens
    candidates = sorted((d, i) for i, f in enumerate(res.findings)
                        if f.layer is Layer.TRACE and f.severity.value >= probe_finding.severity.value
                        and (d := distance(f)) is not None)
    if not candidates:
        return False
    f = res.findings[candidates[0][1]]
    f.evidence.append(f"confirmed by the {probe_finding.rule} probe: {probe_finding.message}")
    f.evidence.extend("  " + e for e in probe_finding.evidence[:3])
    res.notes.append(f"{probe_finding.rule} ({probe_finding.location.function}) folded into "
                     f"{f.rule} ({f.location.function}): same violation, seen by the probe")
    return True


def _judge(rule, trace: Trace, res: AuditResult) -> list:
    try:
        return list(rule.judge(trace))
    except Exception as exc:  # noqa: BLE001 - a judge bug is reported, never a traceback
        res.not_audited.append(NotAudited(path=res.target, layer=Layer.TRACE,
                                          reason=f"not audited: judge of {rule.name} failed: "
                                                 f"{type(exc).__name__}: {exc}"))
        return []


def _shim_notes(res: AuditResult, trace: Trace) -> None:
    seen = set(res.notes)
    for start in trace.of(RunStart):
        for s in start.shims:
            if s not in seen:
                res.notes.append(s)
                seen.add(s)


def _trace_stats(res: AuditResult, trace: Trace) -> None:
    """Coverage, recomputed vs printed numbers, byte counts."""
    n = n_positions(trace)
    ps = passes(trace)
    res.stats["val_tokens"] = n
    res.stats["ranks"] = len({e.rank for e in trace.events})
    res.stats["passes"] = [
        {"pass": p.index + 1, "functions": p.functions, "scored": p.n_scored,
         "coverage_pct": round(coverage(trace, p).percent, 4),
         "mean_nll": round(p.mean("first"), 8), "rescored": int(bin(p.rescored_mask).count("1"))}
        for p in ps
    ]
    judged = judged_passes(trace)
    if judged:
        cov = coverage(trace, judged[-1])
        res.stats["coverage_pct"] = round(cov.percent, 4)
        if cov.tail:
            res.stats["unscored_tail"] = cov.tail
            if cov.tail_allowed:
                res.notes.append(f"the last {cov.tail} positions are never scored (shorter than one sequence: "
                                 "the baseline loader's truncation; not a finding)")
    reports = []
    from harness.challenge.bpb import implied_bytes

    for m in match_reported(trace):
        r = m.reported
        entry: dict[str, Any] = {"label": r.label, "printed_loss": r.val_loss, "printed_bpb": r.val_bpb,
                                 "decimals": r.decimals, "matches": m.which}
        if m.pass_ is not None:
            nums = pass_numbers(trace, m.pass_)
            w = m.which or "first"  # the aggregation that matched (closest pass's first scores if none)
            bpb = nums.bpb.get(w)
            entry.update(pass_=m.pass_.index + 1, aggregation=w, recomputed_loss=nums.loss.get(w),
                         recomputed_bpb=bpb, loss_delta=m.loss_delta,
                         bpb_delta=(r.val_bpb - bpb) if (r.val_bpb is not None and bpb is not None) else None,
                         true_bytes=nums.bytes_by.get(w), tokens=nums.counts.get(w, nums.n_tokens))
            if r.val_loss and r.val_bpb:
                entry["script_bytes"] = round(implied_bytes(entry["tokens"], r.val_loss, r.val_bpb), 2)
        reports.append({k.rstrip("_"): v for k, v in entry.items()})
    res.stats["reported"] = reports
    nan = [r.label for r in trace.of(Reported)
           if any(v is not None and v != v for v in (r.val_loss, r.val_bpb))]
    if nan:
        res.not_audited.append(NotAudited(
            path=res.target, layer=Layer.TRACE,
            reason="not audited: printed scores are NaN at toy scale (" + ", ".join(nan[:4]) + "): "
                   "the printed numbers and their bytes cannot be compared with the scores"))
    if reports and all(e.get("true_bytes") is None for e in reports if e.get("matches")):
        res.notes.append("byte accounting not audited: true bytes unknown (no tokenizer or shards in the trace)")


def _probe(folder: Path, env: dict, data: dict, opts: dict, trace: Trace, res: AuditResult) -> P.ProbeReport:
    tokens = tokens_for(trace)
    if tokens is None:
        return P.ProbeReport(not_run="the validation tokens the submission loaded are unknown")
    n = n_positions(trace)
    tokens = tokens[:n] if len(tokens) >= n else tokens

    def run_fn(override: np.ndarray, label: str) -> Trace:
        r = _run(folder, env, data, opts, trace=True, tracer_options={"capture_scores_only": True},
                 val_override=override)
        why = _failure(r)
        if why is not None:
            raise P.ProbeError(f"{label}: {why}")
        return r.trace

    used = {**env, **(trace.meta.get("env") or {})}  # what the run actually had (toy profile included)
    chunk = None
    for key in ("TTT_CHUNK_SIZE", "TTT_CHUNK_TOKENS", "TTT_CHUNK"):
        if str(used.get(key, "")).isdigit():
            chunk = int(used[key])
            break
    vocab = None
    try:
        vocab = int(data.get("vocab_size") or used.get("VOCAB_SIZE") or 0) or None
    except (TypeError, ValueError):
        pass
    # exhaustive properness in one run: copies one period apart, a period being a multiple of
    # every eval window and stride the run was configured with
    period = _eval_period(used)
    budget = int(opts.get("probe_budget", 6))
    tokens = np.asarray(tokens, dtype=np.int64)

    def probes(baseline: Trace, stream: np.ndarray) -> P.ProbeReport:
        return P.run_probes(baseline, stream, run_fn, budget=budget,
                            exhaustive=bool(opts.get("exhaustive")), bos=bos_id(trace), vocab=vocab,
                            chunk_hint=chunk, period=period, workers=int(opts.get("probe_workers", 2)),
                            log=lambda s: None)

    # A probe run re-runs the whole script, and at toy scale its eval (TTT above all) takes most
    # of it, in proportion to the stream. So the probes run on the stream's first N tokens,
    # compared with a baseline run of that same shorter stream (one more, short, run): each run
    # compares like with like, and the positions are the full stream's. A script that cannot
    # score the shorter stream is probed on the whole one, against the trace run.
    short = int(opts.get("probe_stream_tokens") or 0)
    if short and len(tokens) > 2 * short and not opts.get("exhaustive"):
        cut = tokens[:short].copy()
        t0 = time.perf_counter()
        why = None
        try:
            baseline = run_fn(cut, "baseline (shorter stream)")
        except P.ProbeError as exc:
            why = str(exc)
        wall = round(time.perf_counter() - t0, 2)
        if why is None:
            rep = probes(baseline, cut)
            rep.runs.insert(0, {"label": "baseline (shorter stream)", "wall_s": wall})
            rep.stream = {"tokens": len(cut), "of": len(tokens), "baseline": "a run of the shorter stream"}
            if not rep.not_run:
                return rep
            why = rep.not_run
        res.notes.append(f"probes: the first {short} tokens could not be probed ({why}); "
                         "probed the whole stream against the trace run")
        rep = probes(trace, tokens)
        rep.runs.insert(0, {"label": "baseline (shorter stream), not usable", "wall_s": wall})
        return rep
    return probes(trace, tokens)
