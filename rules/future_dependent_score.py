"""GA010 future-dependent-score: the score of a validation position changed when only tokens
after it were changed (causality probe). Dynamic only (probe layer)."""
from __future__ import annotations

from harness.dynamic.judge.locations import worst_per_function
from harness.dynamic.judge.synthetic import SyntheticRun, TraceExample
from harness.dynamic.trace.events import describe
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Rule


def _example(max_delta: float, note: str = "", not_run: str | None = None) -> TraceExample:
    """A baseline run plus the record of one causality probe (how `harness.dynamic.probes` stores it)."""
    run = SyntheticRun(n=40)
    run.score("eval_ttt", 70, [(1, 40)], nll=2.0)
    run.end()
    probes = {
        "tol": 1e-4,
        "noise": 0.0,
        "causality": [{
            "run": "causality-1",
            "changed": [(21, 40)],
            "watched": [(1, 21)],
            "max_delta": max_delta,
            "worst_position": 20,
            "baseline_nll": 2.0,
            "probe_nll": 2.0 + max_delta,
            "changed_count": 12 if max_delta > 1e-4 else 0,
            "changed_positions": [(9, 21)] if max_delta > 1e-4 else [],
            "frame": {"path": "train_gpt.py", "line": 70, "function": "eval_ttt", "code": ""},
            "why": "position 20: in the longest document, past its first 256-token chunk",
        }],
    }
    if not_run:
        probes = {"not_run": not_run}
    return TraceExample(events=tuple(run.events), meta={"probes": probes}, note=note, function="eval_ttt", line=70)


class FutureDependentScore(Rule, id="GA010", name="future-dependent-score",
                           severity=Severity.HIGH, confidence=Confidence.HIGH, layers=(Layer.PROBE,)):
    summary = "Checks, by re-running the eval on an altered stream, that a score never depends on later tokens."
    why = """
A proper sequential code predicts token i from tokens before i only. If the score of position i moves
when tokens after i change, the eval used the future: it trained on a chunk before scoring it, scored
after several epochs over the document, built a cache from the whole batch before scoring it, or
normalised over the batch. The probe re-runs the submission's own eval (same seed, same trained toy
model) with the rest of a long document after position i replaced by other tokens, and compares every
score of every position up to i with the unmodified run. It sees what provenance cannot: pure-Python
caches, numpy detours, custom kernels.
"""
    example = """
for epoch in range(3):                      # adapt on the whole document ...
    for chunk in chunks:
        if epoch == 2: loss_sum += score(chunk)   # ... then score it
        train(chunk)
"""
    use_instead = """
for chunk in chunks:
    loss_sum += score(chunk)   # score first: this number is final
    train(chunk)               # then adapt on what was just scored
"""
    known_problems = """
Needs a deterministic eval: scores no change can reach must be identical in every run (when a probe
run differs, an unmodified re-run tells noise from cause; a nondeterministic eval is "not audited"). Only the positions chosen are probed (a long document past its first
TTT chunk, and everything before it); a dependence that shows elsewhere only is missed. Tokens are
replaced by other non-boundary tokens that occur in the stream, so document boundaries stay in place.
"""
    references = (
        "PR #518 (closed: 'reporting the score on a doc after its weights have adapted to it')",
        "PR #713 (multi-epoch LoRA TTT scored on the final epoch)",
        "PR #461 / PR #549 (legal score-first chunked TTT)",
    )
    fix = "Take each token's score before anything that token (or a later one) influences; never re-score."

    TRACE_VALID = [
        _example(0.0, note="scores before position 21 unchanged"),
        _example(5e-5, note="delta below tolerance"),
        _example(0.3, note="probe not run: nothing to judge (reported as not audited)", not_run="nondeterministic eval"),
    ]
    TRACE_INVALID = [
        _example(0.3, note="score of position 20 moved when tokens 21.. changed"),
    ]

    def judge(self, trace):
        probes = trace.meta.get("probes") or {}
        if probes.get("not_run"):
            return
        tol = float(probes.get("tol", 1e-4))
        # one finding per scoring function: the probe run that moved its scores the most
        moved_most = worst_per_function(
            probes.get("causality", []),
            lambda rec: float(rec["max_delta"]) if float(rec.get("max_delta", 0.0)) > tol else None)
        for rec, frame in moved_most:
            changed = [tuple(r) for r in rec.get("changed", [])]
            moved = [tuple(r) for r in rec.get("changed_positions", [])]
            yield self.trace_finding(
                Layer.PROBE, trace, frame,
                f"scores in {frame.function if frame else '?'}() depend on later tokens: position "
                f"{rec['worst_position']} moved by {rec['max_delta']:.4g} nats when only positions "
                f"{describe(changed, 2).split(';')[0]} changed",
                evidence=[
                    f"probe run '{rec.get('run', '?')}': replaced the tokens at {describe(changed)}",
                    f"watched the scores of positions {describe([tuple(r) for r in rec.get('watched', [])])}",
                    f"{rec.get('changed_count', 0)} watched positions changed beyond {tol:g} nats: "
                    + (describe(moved) if moved else "-"),
                    f"worst: position {rec['worst_position']}: {rec['baseline_nll']:.6f} -> "
                    f"{rec['probe_nll']:.6f} nats (run-to-run noise {probes.get('noise', 0.0):.2g})",
                    f"why these positions: {rec.get('why', '-')}",
                ],
            )
