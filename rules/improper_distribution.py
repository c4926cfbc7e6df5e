"""GA011 improper-distribution: the probabilities the eval gives the candidate values of one
token sum to more than one. The properness probe proves it by running the eval; the static check
sees one shape of it in the code: a count cache updated with a token and then read, in the same
step, for the probability of that same token."""
from __future__ import annotations

import math

import libcst as cst

from harness.static import dataflow as D
from harness.dynamic.judge.locations import location
from harness.dynamic.judge.synthetic import SyntheticRun, TraceExample
from harness.dynamic.trace.events import Frame
from harness.static.engine import ModuleContext, dotted, walk
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Invalid, Rule, Valid

_COUNT_FIRST = '''
import math
def cache_nll(tokens, nll, vocab, mix):
    counts = [[0] * vocab for _ in range(vocab)]
    totals = [0] * vocab
    out = []
    for p in range(1, len(tokens)):
        prev, target = tokens[p - 1], tokens[p]
        counts[prev][target] += 1
        totals[prev] += 1
        p_cache = counts[prev][target] / totals[prev]
        out.append(-math.log((1 - mix) * math.exp(-nll[p]) + mix * p_cache))
    return out
'''

_DICT_COUNT_FIRST = '''
import math
def cache_nll(tokens, nll, mix):
    counts, seen = {}, {}
    total = 0.0
    for p in range(1, len(tokens)):
        key = (tokens[p - 1], tokens[p])
        counts[key] = counts.get(key, 0) + 1
        seen[tokens[p - 1]] = seen.get(tokens[p - 1], 0) + 1
        hit = counts.get(key, 0) / seen[tokens[p - 1]]
        total += -math.log((1 - mix) * math.exp(-nll[p]) + mix * hit)
    return total
'''

_COLLECTED = '''
import numpy as np
import torch
def cache_nll(tokens, nll, vocab, mix):
    counts = np.zeros((vocab, vocab))
    totals = np.zeros(vocab)
    p_cache = np.empty(len(tokens) - 1)
    for p in range(1, len(tokens)):
        prev, target = tokens[p - 1], tokens[p]
        counts[prev, target] += 1
        totals[prev] += 1
        p_cache[p - 1] = counts[prev, target] / totals[prev]
    return -torch.log((1 - mix) * torch.exp(-nll) + mix * torch.from_numpy(p_cache))
'''

_COLLECTED_SCORE_FIRST = _COLLECTED.replace('''        counts[prev, target] += 1
        totals[prev] += 1
        p_cache[p - 1] = counts[prev, target] / totals[prev]
''', '''        p_cache[p - 1] = counts[prev, target] / max(totals[prev], 1)
        counts[prev, target] += 1
        totals[prev] += 1
''')

_SCORE_FIRST = _COUNT_FIRST.replace('''        counts[prev][target] += 1
        totals[prev] += 1
        p_cache = counts[prev][target] / totals[prev]
        out.append(-math.log((1 - mix) * math.exp(-nll[p]) + mix * p_cache))
''', '''        p_cache = counts[prev][target] / max(totals[prev], 1)
        out.append(-math.log((1 - mix) * math.exp(-nll[p]) + mix * p_cache))
        counts[prev][target] += 1
        totals[prev] += 1
''')
_LOG_NAMES = ("log", "log2", "log10", "log1p", "log_softmax")


def _subscript_key(node: cst.CSTNode, ctx: ModuleContext):
    """(container, key) source texts of `c[k]`, `c[a][b]` (-> "c", "a][b"), or `c.get(k, ...)`."""
    if isinstance(node, cst.Subscript):
        keys = []
        base = node
        while isinstance(base, cst.Subscript):
            keys.insert(0, ", ".join(ctx.code(el.slice) for el in base.slice))
            base = base.value
        return ctx.code(base), "][".join(keys)
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value == "get" \
            and node.args:
        return ctx.code(node.func.value), ctx.code(node.args[0].value)
    return None


def _count_update(st, ctx: ModuleContext):
    """`c[k] += 1` or `c[k] = c.get(k, 0) + 1`: (container, key) of a count incremented in place."""
    node = st.node
    if isinstance(node, cst.AugAssign) and isinstance(node.operator, cst.AddAssign):
        return _subscript_key(node.target, ctx)
    if isinstance(node, cst.Assign) and len(node.targets) == 1 and isinstance(node.value, cst.BinaryOperation) \
            and isinstance(node.value.operator, cst.Add):
        written = _subscript_key(node.targets[0].target, ctx)
        if written is not None and any(_subscript_key(n, ctx) == written for n in walk(node.value)):
            return written
    return None


def _reads_key(st, ctx: ModuleContext, key) -> bool:
    """Does the statement read the cache at that key (not as the target of an update)?"""
    node = st.node
    value = node.value if isinstance(node, (cst.Assign, cst.AugAssign, cst.AnnAssign, cst.Return, cst.Expr)) else None
    if value is None or _count_update(st, ctx) is not None:
        return False
    return any(_subscript_key(n, ctx) == key for n in walk(value))


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
    layers = (Layer.PROBE, Layer.STATIC)

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

The static check sees one shape only: a count incremented at a key and then, in the same loop step,
read at that same key into a value that reaches a log (`counts[prev, tgt] += 1` before
`p = counts[prev, tgt] / totals[prev]`). Caches prefilled from the whole stream, hashed keys and
mixtures that are improper for other reasons are left to the probe.
"""
    references = (
        "PR #1420 (n-gram expert gating read the target token; acknowledged)",
        "PR #713 review: BigramHash keys on t[i], t[i-1] (clean); a key with t[i+1] leaks the target",
        "shared/rules.md: eval-time caches and mixtures must be normalised",
    )
    fix = "Build every feature, key and cache entry for position i from tokens before i only, and normalise mixtures."

    VALID = [Valid(_SCORE_FIRST, "the cache is read for the token, then counts it: score first"),
             Valid(_COLLECTED_SCORE_FIRST, "numpy cache read first, blended in torch after the loop")]
    INVALID = [
        Invalid(_COUNT_FIRST, line=9, function="cache_nll", message_contains="before",
                note="the count of (prev, target) is incremented, then read for the same token's probability"),
        Invalid(_DICT_COUNT_FIRST, line=8, function="cache_nll",
                note="dict counts: counts[key] = counts.get(key, 0) + 1"),
        Invalid(_COLLECTED, line=10, function="cache_nll",
                note="probabilities collected in the loop, blended and logged after it"),
    ]

    # ------------------------------------------------------------------ static
    def check_static(self, ctx: ModuleContext):
        """A count incremented at key k and, later in the same iteration, read at the same key
        into a value that reaches a log (the score): the cache holds the token it is asked about,
        so every candidate value of that token would "hit" — the probabilities sum past one."""
        for q, fn in ctx.functions.items():
            for loop_id in fn.loops:
                body = fn.loop_body(loop_id)
                for w in body:
                    if w.loops[-1:] != (loop_id,):
                        continue  # judged in its innermost loop
                    key = _count_update(w, ctx)
                    if key is None:
                        continue
                    for r in body:
                        if r.order <= w.order or not _reads_key(r, ctx, key):
                            continue
                        scored = self._reaches_log(ctx, fn, r)
                        if scored is None:
                            continue
                        yield self.finding(
                            Layer.STATIC,
                            f"{q}() counts a token into `{key[0]}[{key[1]}]` before reading that same entry for "
                            "the token's probability: the cache always holds the token it predicts, so the "
                            "implied distribution sums to more than one",
                            ctx.location(w.line, q),
                            [f"update at line {w.line}: `{ctx.code(w.node)[:120]}`",
                             f"read at line {r.line}, same iteration: `{ctx.code(r.node)[:120]}`",
                             f"enters the score at line {scored.line}: `{ctx.code(scored.node)[:120]}`"],
                            confidence=Confidence.MEDIUM,
                            fix="Read the cache for position i first, score it, and only then add the token to the "
                                "counts (using the target to update after scoring is fine).",
                            **ctx.reach_fields(q, w),
                        )
                        break
                    else:
                        continue
                    break

    @staticmethod
    def _reaches_log(ctx: ModuleContext, fn, r):
        """The statement (r itself or a later one: in the loop, or after it on the collected
        values) where r's value enters a log."""
        derived = D.tainted_names(ctx, fn, set(r.writes)) if r.writes else set()
        for st in fn.stmts[r.order:]:
            if st is not r and not set(st.reads) & derived:
                continue
            if any(dotted(c.func).split(".")[-1] in _LOG_NAMES for c in st.calls):
                return st
        return None

    TRACE_VALID = [
        _example([0.3, 0.01, 0.02, 0.005], note="true token likely, others not: sum < 1"),
        _example([0.25] * 4, exhaustive=True, note="exhaustive over a 4-token vocabulary: sum = 1"),
    ]
    TRACE_INVALID = [
        _example([0.9, 0.8, 0.85, 0.9], note="every candidate gets high probability: the model sees the target"),
        _example([0.2, 0.2, 0.2, 0.2], exhaustive=True, note="exhaustive sum 0.8: not normalised"),
    ]

    def judge(self, trace):
        yield from self._judge_blackbox(trace)
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
                location(trace, frame),
                evidence=[
                    f"position {rec['position']} (true token {rec['true_token']}); re-ran the eval with that "
                    f"token replaced by each candidate, the rest of the stream unchanged",
                    f"exp(-NLL) per candidate: {pairs}{' …' if len(cands) > 8 else ''}",
                    f"sum {s:.6f}; a proper code gives <= 1 (= 1 over the whole vocabulary), tolerance {tol:g}",
                    f"why this position: {rec.get('why', '-')}",
                ],
            )

    def _judge_blackbox(self, trace):
        """The code-length probe: probabilities of the last token's candidates, from printed totals."""
        from harness.dynamic.judge.reported import find_print_line

        bb = trace.meta.get("blackbox") or {}
        if not bb or bb.get("not_run") or not (bb.get("sum_p", 0.0) > 1.0 + bb.get("tolerance", 1e-3)):
            return
        frame = find_print_line(trace, bb["label"])
        pairs = ", ".join(f"{v}: {math.exp(-x):.4f}" for v, x in list(zip(bb["candidates"], bb["code_lengths"]))[:8])
        runs = bb.get("runs") or []
        yield self.finding(
            Layer.PROBE,
            f"the printed '{bb['label']}' totals imply probabilities for the last token that sum to "
            f"{bb['sum_p']:.4f} over {len(bb['candidates'])} candidates: not a distribution",
            location(trace, frame),
            evidence=[
                f"black-box code-length probe on a {bb['stream_tokens']}-token stream: the last token "
                f"(after context token {bb['context_token']}) replaced by each candidate, and one run without it; "
                "l(v) = printed total(v) - printed total without the last token",
                f"exp(-l(v)) per candidate: {pairs}",
                f"sum {bb['sum_p']:.6f}; a proper code gives <= 1, tolerance {bb['tolerance']:.2e} "
                f"(printed totals known to {bb['rounding_nats']:.2e} nats)",
                f"every run scored all targets with their true UTF-8 bytes ({len(runs)} runs)",
            ],
            confidence=Confidence.HIGH,
        )
