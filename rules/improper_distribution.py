"""GA011 improper-distribution: the probabilities the eval gives the candidate values of one
token sum to more than one (properness probe). Dynamic only (probe layer)."""
from __future__ import annotations

import math

from harness.dynamic import judging as J
from harness.dynamic.judging import SyntheticRun, TraceExample
from harness.dynamic.trace import Frame
from harness.findings import Confidence, Layer, Severity
from harness.rule import Rule


def _example(probs: list[float], exhaustive: bool = False, note: str = "") -> TraceExample:
    run = SyntheticRun(n=40)
    run.score("eval_val", 80, [(1, 40)], nll=2.0)
    run.end()
    rec = {
        "position": 25,
        "true_token": 7,
        "candidates": list(range(7, 7 + len(probs))),
        "nll": [-math.log(p) for p in probs],
        "sum_p": sum(probs),
        "exhaustive": exhaustive,
        "occurrence": 0,
        "frame": {"path": "train_gpt.py", "line": 80, "function": "eval_val", "code": ""},
        "why": "position 25: middle of the stream",
    }
    return TraceExample(events=tuple(run.events), meta={"probes": {"tol_p": 1e-3, "properness": [rec]}},
                        note=note, function="eval_val", line=80)


class ImproperDistribution(Rule):
    id = "GA011"
    name = "improper-distribution"
    severity = Severity.HIGH
    confidence = Confidence.HIGH
    layers = (Layer.PROBE,)

    summary = "Checks, by re-running the eval with one token replaced, that the implied probabilities sum to at most one."
    why = """
A score is a code length only if it comes from a probability distribution over the whole vocabulary:
for a fixed prefix, the probabilities the eval would give every possible value of token i sum to one.
A model that sees its target (a hash key that includes the next token, an n-gram cache counted with the
current token before scoring, a mixture that adds a "hit" bonus for the realised token only) gives
high probability to whatever the token is. The probe re-runs the submission's eval with x_i replaced by
other values v and adds exp(-NLL_i(v)) over the true token and K-1 others: more than one is impossible
for a proper code. With `--exhaustive` every vocabulary value is tried and the sum must be one.
"""
    example = """
key = hash(tokens[i], tokens[i + 1])      # the key at position i includes the target
logits[i] += bigram_table[key]
"""
    use_instead = """
key = hash(tokens[i - 1], tokens[i])      # prefix only: tokens <= i predict token i + 1
logits[i] += bigram_table[key]
"""
    known_problems = """
With K candidates the test is one-sided: an improper eval that gives the realised token only a small
bonus can still sum below one over a small subset (use `--exhaustive` on small vocabularies). Each
probe run changes one position only, so its prefix is the same in every run (the test is exact for that
position); only a few positions are probed.
"""
    references = (
        "PR #1420 (n-gram expert gating read the target token; acknowledged)",
        "PR #713 review: BigramHash keys on t[i], t[i-1] (clean); a key with t[i+1] leaks the target",
        "shared/rules.md: eval-time caches and mixtures must be normalised",
    )
    fix = "Build every feature, key and cache entry for position i from tokens before i only, and normalise mixtures."

    TRACE_VALID = [
        _example([0.3, 0.01, 0.02, 0.005], note="true token likely, others not: sum < 1"),
        _example([0.25] * 4, exhaustive=True, note="exhaustive over a 4-token vocabulary: sum = 1"),
    ]
    TRACE_INVALID = [
        _example([0.9, 0.8, 0.85, 0.9], note="every candidate gets high probability: the model sees the target"),
        _example([0.2, 0.2, 0.2, 0.2], exhaustive=True, note="exhaustive sum 0.8: not normalised"),
    ]

    def judge(self, trace):
        probes = trace.meta.get("probes") or {}
        if probes.get("not_run"):
            return
        tol = float(probes.get("tol_p", 1e-3))
        # one finding per scoring function: its worst probability sum
        worst: dict[str, dict] = {}
        for rec in probes.get("properness", []):
            s = float(rec["sum_p"])
            bad = s > 1.0 + tol or (rec.get("exhaustive") and abs(s - 1.0) > tol)
            if not bad:
                continue
            fn = (rec.get("frame") or {}).get("function", "?")
            if fn not in worst or abs(s - 1.0) > abs(float(worst[fn]["sum_p"]) - 1.0):
                worst[fn] = rec
        for rec in worst.values():
            s = float(rec["sum_p"])
            frame = Frame(**rec["frame"]) if rec.get("frame") else None
            cands = rec["candidates"]
            pairs = ", ".join(f"{v}: {math.exp(-x):.4f}" for v, x in list(zip(cands, rec["nll"]))[:8])
            yield self.finding(
                Layer.PROBE,
                f"the eval's probabilities for position {rec['position']} sum to {s:.4f} over "
                f"{'the whole vocabulary' if rec.get('exhaustive') else f'{len(cands)} candidate tokens'}"
                f" in {frame.function if frame else '?'}(): not a distribution",
                J.location(trace, frame),
                evidence=[
                    f"position {rec['position']} (true token {rec['true_token']}); re-ran the eval with that "
                    f"token replaced by each candidate, the rest of the stream unchanged",
                    f"exp(-NLL) per candidate: {pairs}{' …' if len(cands) > 8 else ''}",
                    f"sum {s:.6f}; a proper code gives <= 1 (= 1 over the whole vocabulary), tolerance {tol:g}",
                    f"why this position: {rec.get('why', '-')}",
                ],
            )
