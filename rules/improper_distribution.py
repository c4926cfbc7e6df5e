"""GA011 improper-distribution: the probabilities the eval gives the candidate values of one
token sum to more than one. The properness probe proves it by running the eval; the static check
sees one shape of it in the code: a count cache updated with a token and then read, in the same
step, for the probability of that same token."""
from __future__ import annotations

import math
import re

import libcst as cst

from harness.static import dataflow as D
from rules import _hashed_counts as H
from harness.dynamic.judge.locations import worst_per_function
from harness.dynamic.judge.synthetic import SyntheticRun, TraceExample
from harness.static.engine import ModuleContext, dotted, walk
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Invalid, Rule, Valid

_COUNT_FIRST = Invalid('''
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
''', line=9, function="cache_nll", message_contains="before",
    note="the count of (prev, target) is incremented, then read for the same token's probability")

_DICT_COUNT_FIRST = Invalid('''
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
''', line=8, function="cache_nll", note="dict counts: counts[key] = counts.get(key, 0) + 1")

_COLLECTED = Invalid('''
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
''', line=10, function="cache_nll", note="probabilities collected in the loop, blended and logged after it")

_COLLECTED_SCORE_FIRST = Valid(_COLLECTED.code.replace('''        counts[prev, target] += 1
        totals[prev] += 1
        p_cache[p - 1] = counts[prev, target] / totals[prev]
''', '''        p_cache[p - 1] = counts[prev, target] / max(totals[prev], 1)
        counts[prev, target] += 1
        totals[prev] += 1
'''), "numpy cache read first, blended in torch after the loop")

_SCORE_FIRST = Valid(_COUNT_FIRST.code.replace('''        counts[prev][target] += 1
        totals[prev] += 1
        p_cache = counts[prev][target] / totals[prev]
        out.append(-math.log((1 - mix) * math.exp(-nll[p]) + mix * p_cache))
''', '''        p_cache = counts[prev][target] / max(totals[prev], 1)
        out.append(-math.log((1 - mix) * math.exp(-nll[p]) + mix * p_cache))
        counts[prev][target] += 1
        totals[prev] += 1
'''), "the cache is read for the token, then counts it: score first")
_LOG_NAMES = ("log", "log2", "log10", "log1p", "log_softmax")

# PR #779/#813 shape: counts of hashed (context, token) pairs over counts of hashed contexts, read
# for the realised target only
_HASHED_PAIR_RATIO = Invalid('''
import numpy as np
import torch
PRIMES = [np.uint64(36313), np.uint64(27191), np.uint64(51647)]
def ngram_mix_nll(nll, x_np, y_np, ctx_counts, full_counts, alpha, order=3, buckets=1 << 22):
    mask = np.uint64(buckets - 1)
    ctx_hash = np.zeros(len(y_np), dtype=np.uint64)
    for k in range(order - 1):
        ctx_hash ^= np.roll(x_np, k).astype(np.uint64) * PRIMES[k]
    ctx_key = (ctx_hash & mask).astype(np.int64)
    full_key = ((ctx_hash ^ (y_np.astype(np.uint64) * PRIMES[order - 1])) & mask).astype(np.int64)
    ctx_c = ctx_counts[ctx_key].astype(np.float64)
    full_c = full_counts[full_key].astype(np.float64)
    p_ng = np.minimum(full_c, ctx_c) / np.maximum(ctx_c, 1.0)
    p = (1 - alpha) * np.exp(-nll) + alpha * p_ng
    return torch.from_numpy(-np.log(np.clip(p, 1e-12, 1.0)))
''', line=14, function="ngram_mix_nll", message_contains="realised",
    note="PR #779/#813/#770: full_counts[h(ctx, y)] / ctx_counts[h(ctx)] read at the target only")

# PR #972 shape: the pair counts are even gathered over the whole vocabulary, but the denominator is
# the context count, not their sum
_PAIR_ROW_OVER_CONTEXT_COUNT = Invalid('''
import torch
def ngram_nll(ctx_hash, targets, model_p, ng_ctx, ng_pair, vocab, beta=2.0, mult=1000003, buckets=1 << 22):
    all_tokens = torch.arange(vocab)
    ctx_c = ng_ctx[ctx_hash].float()
    pair_h = (ctx_hash[:, None] * mult + all_tokens[None, :]) % buckets
    pair_c = ng_pair[pair_h].float()
    hit = pair_c.gather(1, targets[:, None]).squeeze(1)
    p = (hit + beta * model_p) / (ctx_c + beta)
    return -torch.log(p.clamp(min=1e-20))
''', line=9, function="ngram_nll", message_contains="realised",
    note="PR #972: pair counts gathered at the target over the context count (not their sum)")

# the same ratio in plain Python, one position at a time, keys masked to a bucket
_SCALAR_BUCKETS = Invalid('''
import numpy as np
def ngram_target_lp(val_np, positions, ctx_table, full_table, mask, prime=np.uint64(2654435761)):
    out = np.zeros(len(positions))
    for j, pos in enumerate(positions):
        ctx_hash = np.uint64(val_np[pos - 2]) * prime ^ np.uint64(val_np[pos - 1])
        ctx_bucket = int(ctx_hash & mask)
        ctx_count = ctx_table[ctx_bucket]
        full_hash = (ctx_hash ^ (np.uint64(val_np[pos]) * prime)) * prime
        full_bucket = int(full_hash & mask)
        p = (float(full_table[full_bucket]) + 0.5) / (float(ctx_count) + 1.0)
        out[j] = np.log(p)
    return -out.sum()
''', line=11, function="ngram_target_lp", message_contains="realised",
    note="plain Python per position: full_table[int(h(ctx, x[pos]) & mask)] over ctx_table[...]")

# the keys come from a helper that returns the context key and the (context, token) key together
_HELPER_KEYS = Invalid('''
import numpy as np
def bucket_keys(stream, at, mask, mult=np.uint64(1000003)):
    h = stream[at - 1].astype(np.uint64) * mult
    return (h & mask).astype(np.int64), ((h ^ stream[at].astype(np.uint64)) & mask).astype(np.int64)
def cache_lp(stream, at, ctx_counts, pair_counts, mask):
    ck, pk = bucket_keys(stream, at, mask)
    c = ctx_counts[ck].astype(np.float64)
    p = (pair_counts[pk] + 0.5) / (c + 1.0)
    return np.log(p).sum()
''', line=9, function="cache_lp", message_contains="realised",
    note="PR #797: both keys returned by a hashing helper of the module")

_PAIR_ROW_NORMALISED = Valid(_PAIR_ROW_OVER_CONTEXT_COUNT.code.replace(
    "p = (hit + beta * model_p) / (ctx_c + beta)", "p = (hit + beta * model_p) / (pair_c.sum(1) + beta)"),
    "hashed pair counts over the whole vocabulary, divided by their own sum")

# the n-gram cache family (PRs #769/#809/#826/#846/#853/#870/#881/#918/#944/#961): the keys come
# from a method of the cache, the ratio is what a lookup method returns, and the log is in the eval
_CACHE_LOOKUP_RATIO = Invalid('''
import numpy as np
class SuffixCounts:
    def __init__(self, buckets):
        self.mask = np.int64(buckets - 1)
        self.seen = np.zeros(buckets, dtype=np.int64)
        self.next = np.zeros(buckets, dtype=np.int64)
    def _keys(self, stream, pos):
        h = stream[pos - 2].astype(np.int64) * 40503 ^ stream[pos - 1].astype(np.int64) * 65599
        return h & self.mask, (h ^ stream[pos].astype(np.int64) * 92821) & self.mask
    def add(self, stream, pos):
        c, f = self._keys(stream, pos)
        np.add.at(self.seen, c, 1)
        np.add.at(self.next, f, 1)
    def prob(self, stream, pos):
        c, f = self._keys(stream, pos)
        return self.next[f] / np.maximum(self.seen[c], 1)

def mixed_nll(model_p, stream, spans, lam):
    table = SuffixCounts(1 << 20)
    total = 0.0
    for pos in spans:
        q = table.prob(stream, pos)
        total -= np.log((1 - lam) * model_p[pos] + lam * q).sum()
        table.add(stream, pos)
    return total
''', line=17, function="SuffixCounts.prob", message_contains="realised",
    note="PRs #826/#870/#961: keys from a method of the cache, ratio returned by its lookup, log in the "
                 "eval that calls it (scored before counting: the order is legal, the distribution is not)")

# legal: the same cache scored first and updated after, its lookup a distribution over the whole
# vocabulary (every candidate's pair count, divided by their sum)
_CACHE_LOOKUP_NORMALISED = Valid(_CACHE_LOOKUP_RATIO.code.replace('''    def prob(self, stream, pos):
        c, f = self._keys(stream, pos)
        return self.next[f] / np.maximum(self.seen[c], 1)''', '''    def prob(self, stream, pos, vocab=1024):
        c, f = self._keys(stream, pos)
        h = stream[pos - 2].astype(np.int64) * 40503 ^ stream[pos - 1].astype(np.int64) * 65599
        rows = self.next[(h[:, None] ^ np.arange(vocab)[None, :] * 92821) & self.mask] + 0.5
        return rows[np.arange(len(pos)), stream[pos]] / rows.sum(1)'''),
    "cache lookup method normalised over every candidate token; "
                                         "scored first, counted after")

# the lookup returns the two counts; the caller divides them (PR #769)
_CACHE_RETURNS_COUNTS = Invalid(_CACHE_LOOKUP_RATIO.code.replace('''        return self.next[f] / np.maximum(self.seen[c], 1)''', '''        hits = self.next[f]
        ctx = self.seen[c]
        return hits, ctx, f''').replace('''        q = table.prob(stream, pos)
''', '''        hits, ctx, _ = table.prob(stream, pos)
        q = np.where(ctx > 0, hits / np.maximum(ctx, 1), 0.0)
'''), line=26, function="mixed_nll", message_contains="realised",
    note="PR #769: the lookup returns the pair count and the context count, the eval divides them")


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


# PR #1933 shape: each token's log-probability spread evenly over its bytes, mixed per byte with a
# byte-level model (PPM) and scored per byte
_BYTE_MIX = Invalid('''
import math
import numpy as np
def byte_mix_bpb(tgt, token_lp, pieces, byte_model_lp, lam=0.5):
    lens = np.array([len(p.encode("utf-8")) for p in pieces])
    per_tok = lens[tgt]
    per_byte_lp = np.repeat(token_lp, per_tok) / np.repeat(per_tok, per_tok)
    mixed = lam * np.exp(per_byte_lp) + (1 - lam) * np.exp(byte_model_lp)
    return float(-np.log2(mixed).sum() / per_tok.sum())
''', line=8, function="byte_mix_bpb", message_contains="byte",
    note="PR #1933: token log-probabilities spread over bytes and mixed with a byte-level model")

# legal: the same per-byte spread, only summed back (the total is the token's own log-probability)
_BYTE_SPREAD_SUMMED = Valid(_BYTE_MIX.code.replace('''    mixed = lam * np.exp(per_byte_lp) + (1 - lam) * np.exp(byte_model_lp)
    return float(-np.log2(mixed).sum() / per_tok.sum())''', '''    return float(-per_byte_lp.sum() / math.log(2) / per_tok.sum())'''),
    "token log-probabilities spread over bytes and summed back: no mixture")

BYTE_NAME = re.compile(r"byte", re.I)


class ImproperDistribution(Rule, id="GA011", name="improper-distribution",
                           severity=Severity.HIGH, confidence=Confidence.HIGH, layers=(Layer.PROBE, Layer.STATIC)):
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

The static check sees three shapes: a count incremented at a key and then, in the same loop step,
read at that same key into a value that reaches a log (`counts[prev, tgt] += 1` before
`p = counts[prev, tgt] / totals[prev]`); a hashed (context, token) count divided by the context's
count and read at the realised token only (`full[h(ctx) ^ y * P] / ctx[h(ctx)]`, PRs #770/#779/
#813/#972) — the numerator key must be a hash built from the denominator's key, which is a
heuristic over names' definitions (medium confidence), and exact (unhashed) count tables are not
reported; the ratio may sit in a cache's lookup method whose result a caller logs, or the lookup may
return both counts for the caller to divide (one call level, methods matched by name and by the
class the caller constructs: PRs #769/#809/#826/#846/#853/#870/#881/#918/#944/#961); and a token's score repeated over its bytes and mixed, as a probability, with another
per-byte probability before the log (a byte-level model mixed into token scoring, PR #1933).
Caches prefilled from the whole stream, target-dependent backoff (`if count[target] > 0: return`)
and mixtures that are improper for other reasons are left to the probe.
"""
    references = (
        "PR #1420 (n-gram expert gating read the target token; acknowledged)",
        "PR #713 review: BigramHash keys on t[i], t[i-1] (clean); a key with t[i+1] leaks the target",
        "shared/rules.md: eval-time caches and mixtures must be normalised; hashed lookups of counts for the "
        "realised token only and byte-level models mixed into a token model fail",
        "PRs #770, #779, #813, #972 (hashed n-gram count ratios read at the target), #1933 (byte-level PPM mixer)",
        "PRs #769, #809, #826, #846, #853, #870, #881, #918, #944, #961 (n-gram cache / full-rescore family, rejected)",
    )
    fix = "Build every feature, key and cache entry for position i from tokens before i only, and normalise mixtures."

    VALID = [_SCORE_FIRST, _COLLECTED_SCORE_FIRST, _PAIR_ROW_NORMALISED, _BYTE_SPREAD_SUMMED,
             _CACHE_LOOKUP_NORMALISED]
    INVALID = [_COUNT_FIRST, _DICT_COUNT_FIRST, _COLLECTED, _HASHED_PAIR_RATIO, _PAIR_ROW_OVER_CONTEXT_COUNT,
               _HELPER_KEYS, _SCALAR_BUCKETS, _CACHE_LOOKUP_RATIO, _CACHE_RETURNS_COUNTS, _BYTE_MIX]

    # ------------------------------------------------------------------ static
    def check_static(self, ctx: ModuleContext):
        yield from self._count_first(ctx)
        for q, fn in ctx.functions.items():
            f = self._hashed_ratio(ctx, q, fn)
            if f is not None:
                yield f
            f = self._byte_mixture(ctx, q, fn)
            if f is not None:
                yield f

    def _byte_mixture(self, ctx: ModuleContext, q: str, fn):
        """A token-level score repeated over the token's bytes (`np.repeat(lp, n_bytes)`,
        `repeat_interleave`) and then added, as a probability, to another model's per-byte
        probability before the log: a byte-level model mixed into the token model's scores. The
        token model gives one probability per token, not a distribution over each next byte, so the
        per-byte mixture is not a distribution over the token alphabet (nor over bytes)."""
        seeds = {w for st in fn.stmts for c in st.calls
                 if isinstance(c.func, cst.Attribute) and c.func.attr.value == "encode" for w in st.writes}
        seeds |= {n for st in fn.stmts for n in st.reads | st.writes if BYTE_NAME.search(n)}
        seeds |= {p for p in fn.params if BYTE_NAME.search(p)}
        if not seeds:
            return None
        byte_names = D.tainted_names(ctx, fn, seeds)
        for st in fn.stmts:
            for call in st.calls:
                name = dotted(call.func).split(".")[-1]
                if name not in ("repeat", "repeat_interleave"):
                    continue
                pos = [a.value for a in call.args if a.keyword is None and not a.star]
                kw = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
                if isinstance(call.func, cst.Attribute) and dotted(call.func.value) not in ("np", "numpy", "torch"):
                    value, reps = call.func.value, (pos[0] if pos else kw.get("repeats"))
                else:
                    value, reps = (pos[0] if pos else None), (pos[1] if len(pos) > 1 else kw.get("repeats"))
                if value is None or reps is None:
                    continue
                vnames, rnames = H.Defs.names(value), H.Defs.names(reps)
                if not rnames & byte_names or not vnames or vnames <= byte_names:
                    continue
                spread = D.tainted_names(ctx, fn, set(st.writes)) if st.writes else set()
                mix = self._prob_mixture(ctx, fn, st, spread)
                scored = self._reaches_log(ctx, fn, mix) if mix is not None else None
                if scored is None:
                    continue
                return self.static_finding(
                    ctx, mix.line, q,
                    f"{q}() spreads each token's score over its bytes and mixes it, per byte, with another "
                    "model's byte probabilities: a byte-level model mixed into token scoring is not a "
                    "distribution over the token alphabet",
                    [f"token score repeated over the token's bytes at line {st.line}: `{ctx.code(st.node)[:140]}`",
                     f"mixed as probabilities at line {mix.line}: `{ctx.code(mix.node)[:140]}`",
                     f"scored at line {scored.line}: `{ctx.code(scored.node)[:120]}`",
                     "exp(log p(token) / n_bytes) per byte is not the probability of that byte given the bytes "
                     "before it; the mixture's probabilities over the candidate tokens do not sum to one"],
                    confidence=Confidence.MEDIUM,
                    fix="Mix at one level: turn the byte model into a distribution over the whole token vocabulary "
                        "(the product of its byte probabilities for every candidate token, renormalised), or "
                        "score bytes with a byte model only.",
                    **ctx.reach_fields(q, mix),
                )
        return None

    @staticmethod
    def _prob_mixture(ctx: ModuleContext, fn, start, spread: set[str]):
        """The first statement after `start` adding exp(...) of the spread scores to a term that
        does not come from them (another model's probability)."""
        for st in fn.stmts[start.order + 1:]:
            value = getattr(st.node, "value", None)
            if value is None or not set(st.reads) & spread:
                continue
            for n in walk(value):
                if not (isinstance(n, cst.BinaryOperation) and isinstance(n.operator, (cst.Add, cst.Subtract))):
                    continue
                sides = [H.Defs.names(n.left), H.Defs.names(n.right)]
                exps = [any(isinstance(c, cst.Call) and dotted(c.func).split(".")[-1] in ("exp", "exp2", "pow")
                            for c in walk(x)) for x in (n.left, n.right)]
                if all(exps) and (bool(sides[0] & spread) != bool(sides[1] & spread)):
                    return st
        return None

    def _hashed_ratio(self, ctx: ModuleContext, q: str, fn):
        """`count[h(ctx, t)] / count[h(ctx)]` reaching a log: the probability of the realised token t
        as the count of a hashed (context, token) key over the count of the context key. Over the
        vocabulary the numerators do not add up to the denominator (every pair bucket also holds the
        pairs of other contexts hashed into it), so the implied probabilities of the candidate tokens
        sum to more than one; a normalised cache divides by the sum of the numerator over all
        candidate tokens instead."""
        facts = None  # built at the first division: most functions have none
        for st in fn.stmts:
            node = st.node
            value = node.value if isinstance(node, (cst.Assign, cst.AnnAssign, cst.Return)) else None
            if value is None:
                continue
            for div in walk(value):  # type identity, not isinstance: see harness/static/engine.py
                if not (type(div) is cst.BinaryOperation and type(div.operator) is cst.Divide):
                    continue
                if facts is None:
                    facts = H.Defs.of(ctx, fn)
                num = facts.lookups(div.left, st)
                den = facts.lookups(div.right, st)
                pair = facts.extension(num, den) if num and den else None
                keys, helper = facts, None
                if pair is None:
                    keys, helper, pair = facts.returned_pair(div) or (facts, None, None)
                if pair is None:
                    continue
                scored, caller, call = self._reaches_log(ctx, fn, st), None, None
                if scored is None:
                    caller, call, scored = self._caller_log(ctx, fn, st) or (None, None, None)
                if scored is None:
                    continue
                (nt, nk, nst), (dt, dk, dst) = pair
                where = f"enters the score at line {scored.line}: `{ctx.code(scored.node)[:120]}`"
                if call is not None:
                    where = (f"returned by {q}() and, at its call in line {call.line} "
                             f"(`{ctx.code(call.node)[:100]}`), enters the score at line {scored.line}: "
                             f"`{ctx.code(scored.node)[:100]}`")
                return self.static_finding(
                    ctx, st.line, q,
                    f"{q}() takes the probability of the realised token as `{nt}` at a hashed (context, token) "
                    f"key over `{dt}` at the context key: the denominator is a count total, not the sum of the "
                    "numerator over the vocabulary, so the implied distribution is not normalised",
                    [f"ratio at line {st.line}: `{ctx.code(div)[:140]}`"]
                    + ([f"both counts returned by {helper.qualname}() from one call"] if helper else []) +
                    [f"numerator read at line {nst.line} with key `{nk}` (built at line "
                     f"{keys.key_def(nk).line}: `{ctx.code(keys.key_def(nk).node)[:120]}`)",
                     f"denominator read at line {dst.line} with key `{dk}`: `{nk}` hashes the same context and one more "
                     "token",
                     where,
                     "hashed pair buckets also count other contexts' pairs: summed over every candidate token the "
                     "numerators exceed the context count, so the candidates' probabilities do not sum to one"],
                    confidence=Confidence.MEDIUM,
                    fix="Compute the cache's distribution over the whole vocabulary for the context (the pair counts "
                        "of every candidate token) and divide by their sum; or mix with a closed-form normaliser.",
                    **self._reach(ctx, q, st, caller, call),
                )
        return None

    def _count_first(self, ctx: ModuleContext):
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
                        yield self.static_finding(
                            ctx, w.line, q,
                            f"{q}() counts a token into `{key[0]}[{key[1]}]` before reading that same entry for "
                            "the token's probability: the cache always holds the token it predicts, so the "
                            "implied distribution sums to more than one",
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
    def _reach(ctx: ModuleContext, q: str, st, caller, call) -> dict:
        """Reachability of the ratio, or of the call that scores with it when only that is known
        to run (a cache method called from an eval that a config preset switches on)."""
        here = ctx.reach_fields(q, st)
        if caller is None or here.get("reachable"):
            return here
        there = ctx.reach_fields(caller.qualname, call)
        return there if there.get("reachable") else here

    def _caller_log(self, ctx: ModuleContext, fn, st):
        """(caller, call statement, log statement): `st`'s value is returned by `fn` (a cache's lookup
        method) and, where another function of the file calls `fn`, the returned value enters a
        log there (one call level)."""
        derived = D.tainted_names(ctx, fn, set(st.writes)) if st.writes else set()
        if not isinstance(st.node, cst.Return) and \
                not any(isinstance(r.node, cst.Return) and set(r.reads) & derived for r in fn.stmts[st.order:]):
            return None
        for caller in ctx.functions.values():
            if caller is fn:
                continue
            for cs in caller.stmts:
                if cs.writes and any(fn in H.callees(ctx, caller, c) for c in cs.calls):
                    scored = self._reaches_log(ctx, caller, cs)
                    if scored is not None:
                        return caller, cs, scored
        return None

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
        def off_by(rec) -> float | None:  # how far the sum is from a distribution's, when it is a finding
            s = float(rec["sum_p"])
            bad = s > 1.0 + tol or (rec.get("exhaustive") and abs(s - 1.0) > tol)
            return abs(s - 1.0) if bad else None

        # one finding per scoring function: its worst probability sum
        for rec, frame in worst_per_function(probes.get("properness", []), off_by):
            s = float(rec["sum_p"])
            cands = rec["candidates"]
            pairs = ", ".join(f"{v}: {math.exp(-x):.4f}" for v, x in list(zip(cands, rec["nll"]))[:8])
            yield self.trace_finding(
                Layer.PROBE, trace, frame,
                f"the eval's probabilities for position {rec['position']} sum to {s:.4f} over "
                f"{'the whole vocabulary' if rec.get('exhaustive') else f'{len(cands)} candidate tokens'}"
                f" in {frame.function if frame else '?'}(): not a distribution",
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
        yield self.trace_finding(
            Layer.PROBE, trace, frame,
            f"the printed '{bb['label']}' totals imply probabilities for the last token that sum to "
            f"{bb['sum_p']:.4f} over {len(bb['candidates'])} candidates: not a distribution",
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
