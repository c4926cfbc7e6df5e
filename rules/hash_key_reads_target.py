"""GA003 hash-key-reads-target: an n-gram / hash key whose tokens, aligned to the output
position, include that position's target (the next token)."""
from __future__ import annotations

import re

import libcst as cst

from harness.static import dataflow as D
from harness.static.engine import ModuleContext, base_name, dotted, looks_hashed, walk
from harness.static.project import CallSite, project_findings
from harness.static.reaching import FlowTaint
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Invalid, Rule, Valid

_CLEAN = Valid('''
import torch
def bigram_hash(tokens, buckets):
    t = tokens.to(torch.int32)
    out = torch.empty_like(t)
    out[..., 0] = buckets - 1
    out[..., 1:] = torch.bitwise_xor(36313 * t[..., 1:], 27191 * t[..., :-1]) % (buckets - 1)
    return out
''', "PR #713 BigramHash")

_CLEAN_TRIGRAM = Valid('''
def trigram_hash(t, mod):
    out = t.clone()
    out[..., 2:] = (48271 * t[..., 2:] ^ 36313 * t[..., 1:-1] ^ 27191 * t[..., :-2]) % mod
    return out
''', "PR #713 TrigramHash")

_SHIFTED = Invalid('''
import torch
def bigram_hash(tokens, buckets):
    t = tokens.to(torch.int32)
    out = torch.empty_like(t)
    out[..., -1] = buckets - 1
    out[..., :-1] = torch.bitwise_xor(36313 * t[..., 1:], 27191 * t[..., :-1]) % (buckets - 1)
    return out
''', line=7, function="bigram_hash", note="output shifted one step left")

_ROLL = Invalid('''
import torch
def pair_key(t, mod):
    nxt = torch.roll(t, shifts=-1, dims=-1)
    return (t * 1000003 + nxt * 8191) % mod
''', line=5, function="pair_key", note="torch.roll(-1) key")

_PAD = Invalid('''
import torch.nn.functional as F
def pair_key(t, mod):
    nxt = F.pad(t[..., 1:], (0, 1))
    return (t * 1000003 + nxt * 8191) % mod
''', line=5, function="pair_key", note="F.pad shift")


# the loss target handed to a hashed embedding layer (keyed on (t[i], t[i+1]))
_LAYER_GETS_TARGET = Invalid('''
import torch.nn.functional as F
from torch import nn

class PairHash(nn.Module):
    def __init__(self, buckets, dim):
        super().__init__()
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, dim)

    def forward(self, first, second):
        key = (first * 1_000_003 + second * 7_919) % self.buckets
        return self.embed(key)

class LM(nn.Module):
    def __init__(self, vocab, dim, buckets):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pair = PairHash(buckets, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, target_ids):
        x = self.tok(input_ids) + self.pair(input_ids, target_ids)
        logits = self.head(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1))
''', line=23, function="LM.forward", message_contains="target_ids",
    note="self.pair(input_ids, target_ids): the hashing layer is handed the loss target")

_LAYER_GETS_PREVIOUS = Valid(_LAYER_GETS_TARGET.code.replace(
    "self.pair(input_ids, target_ids)", "self.pair(F.pad(input_ids[:, :-1], (1, 0)), input_ids)"),
    "the hashed layer gets (t[i-1], t[i]): inputs only")

# hashed targets as the labels of an auxiliary loss: read by the loss, never fed to the model
_HASHED_LABELS = Valid('''
import torch.nn.functional as F

def aux_loss(aux_logits, target_ids, buckets):
    labels = (target_ids * 1_000_003) % buckets
    return F.cross_entropy(aux_logits.reshape(-1, buckets), labels.reshape(-1))

def forward(model, input_ids, target_ids, buckets):
    logits, aux_logits = model(input_ids)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1))
    return loss + 0.1 * aux_loss(aux_logits, target_ids, buckets)
''', "hashed targets used as labels of an auxiliary loss, not as an input")


# PR #779/#813: a numpy count table read at a key that hashes the scored target into the context
_NUMPY_TARGET_KEY = Invalid('''
import numpy as np
import torch
import torch.nn.functional as F
def mix_nll(logits, x_batch, y_batch, counts, mask, prime=np.uint64(27191)):
    log_probs = F.log_softmax(logits, dim=-1)
    p_model = log_probs.gather(-1, y_batch.unsqueeze(-1)).squeeze(-1).exp()
    x_np = x_batch.cpu().numpy().astype(np.uint64)
    y_np = y_batch.cpu().numpy().astype(np.uint64)
    key = ((x_np * np.uint64(36313)) ^ (y_np * prime)) & mask
    hits = torch.from_numpy(counts[key.astype(np.int64)].astype(np.float32))
    return -torch.log(0.9 * p_model + 0.1 * hits / (hits + 1))
''', line=10, function="mix_nll", message_contains="y_np",
    note="numpy: counts[(x * p1) ^ (y * p2)] with y the gathered target (PR #779/#813)")

# legal: the same key, used only to count the target after its score is taken
_NUMPY_TARGET_KEY_UPDATE = Valid('''
import numpy as np
import torch
import torch.nn.functional as F
def score_then_count(logits, x_batch, y_batch, counts, mask, prime=np.uint64(27191)):
    log_probs = F.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, y_batch.unsqueeze(-1)).squeeze(-1)
    x_np = x_batch.cpu().numpy().astype(np.uint64)
    y_np = y_batch.cpu().numpy().astype(np.uint64)
    key = ((x_np * np.uint64(36313)) ^ (y_np * prime)) & mask
    np.add.at(counts, key.astype(np.int64), 1)
    return nll
''', "a target-keyed count updated after the score, never read for it")


def _int(node) -> int | None:
    if isinstance(node, cst.Integer):
        return int(node.value.replace("_", ""), 0)
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus) and isinstance(node.expression, cst.Integer):
        return -int(node.expression.value.replace("_", ""), 0)
    return None


def _last_slice(sub: cst.Subscript):
    """(lower, upper) of the last-dimension slice, or None when it is not a literal slice."""
    el = sub.slice[-1].slice
    if isinstance(el, cst.Index):
        return None
    lower = 0 if el.lower is None else _int(el.lower)
    upper = None if el.upper is None else _int(el.upper)
    if lower is None or (el.upper is not None and upper is None):
        return None
    return lower, upper


def _token_slices(node: cst.CSTNode, exclude: str | None) -> list[tuple[str, int, cst.Subscript]]:
    out = []
    for n in walk(node):
        if isinstance(n, cst.Subscript) and isinstance(n.value, cst.Name) and n.value.value != exclude:
            s = _last_slice(n)
            if s is not None:
                out.append((n.value.value, s[0], n))
    return out


def _shift_bindings(ctx: ModuleContext, fn) -> dict[str, int]:
    """Names bound to a token tensor shifted by a literal amount: torch.roll(t, -k) reads k ahead;
    F.pad(t[..., a:], (l, r)) reads a - l ahead."""
    out: dict[str, int] = {}
    for st in fn.stmts:
        if not isinstance(st.node, cst.Assign) or len(st.writes) != 1:
            continue
        value = st.node.value
        if not isinstance(value, cst.Call):
            continue
        name = ctx.resolve(dotted(value.func))
        if name.endswith("roll") and len(value.args) >= 2:
            shift = _int(value.args[1].value)
            if shift is not None:
                out[next(iter(st.writes))] = -shift
        elif name.endswith(".pad") and len(value.args) >= 2 and isinstance(value.args[0].value, cst.Subscript):
            pads = value.args[1].value
            s = _last_slice(value.args[0].value)
            if isinstance(pads, (cst.Tuple, cst.List)) and pads.elements and s is not None:
                left = _int(pads.elements[0].value)
                if left is not None:
                    out[next(iter(st.writes))] = s[0] - left
    return out


def _trace_example(leaks: bool, note: str):
    from harness.dynamic.judge.synthetic import SyntheticRun, TraceExample

    run = SyntheticRun(n=65)
    if leaks:
        run.target_read("forward", 31, [(1, 65)], loss_function="forward", loss_line=40)
    run.score("eval_val", 250, [(1, 65)], nll=0.1 if leaks else 3.0)
    run.end()
    return TraceExample(events=tuple(run.events), note=note, function="forward" if leaks else None,
                        line=31 if leaks else None)


LOSS_TARGET_CALL = re.compile(r"(^|\.)(cross_entropy|nll_loss|binary_cross_entropy\w*|multi_margin_loss)$")
LOOKUP_CALL = re.compile(r"emb|lookup|table|index_select|take", re.I)


def _loss_targets(ctx, fn) -> set[str]:
    """Names a loss is taken against in `fn`: `F.cross_entropy(logits, target_ids.reshape(-1))`
    -> target_ids (and `targets` for `y = targets.reshape(-1)`); the index a log-probability is
    read at, `log_probs.gather(-1, y.unsqueeze(-1))` -> y."""
    out: set[str] = set()
    losses = None
    for st in fn.stmts:
        for call in st.calls:
            if isinstance(call.func, cst.Attribute) and call.func.attr.value == "gather":
                if losses is None:
                    losses = set(D.loss_names(ctx, fn))
                pos = [a.value for a in call.args if a.keyword is None and not a.star]
                src = call.func.value if dotted(call.func.value) not in ("torch",) else (pos.pop(0) if pos else None)
                index = next((a.value for a in call.args if a.keyword is not None and a.keyword.value == "index"),
                             pos[1] if len(pos) > 1 else None)
                if src is not None and index is not None and base_name(src) in losses and base_name(index):
                    out.add(base_name(index))
                continue
            if not LOSS_TARGET_CALL.search(dotted(call.func)):
                continue
            expr = next((a.value for a in call.args if a.keyword is not None and a.keyword.value == "target"), None)
            positional = [a for a in call.args if a.keyword is None and not a.star]
            if expr is None and len(positional) >= 2:
                expr = positional[1].value
            name = base_name(expr) if expr is not None else None
            if name:
                out.add(name)
    for st in fn.stmts:  # one step back over re-bindings of a single tensor
        if isinstance(st.node, cst.Assign) and len(st.writes) == 1 and st.writes & out:
            name = base_name(st.node.value)
            if name and name not in ctx.imports:  # `y = torch.stack(ys)` re-binds ys, not the module
                out.add(name)
    return out


def _sites(project, ctx, fn, st):
    """Resolved calls of a statement, layers included: `self.bigram(a, b)` -> BigramHash.forward."""
    out = list(project.call_sites_in(ctx, fn, st))
    for call in st.calls:
        if isinstance(call.func, cst.Attribute) and not project.callees(ctx, fn, call):
            for cctx, callee in project.instance_callees(ctx, fn, call.func):
                out.append(CallSite(ctx, fn, st, call, cctx, callee, project.bind(ctx, fn, call, callee)))
    return out


def _lookup_keys(ctx, fn, tables: bool = False) -> list:
    """Hashed keys that are looked up (an embedding, a table, an index): (statement, names the key
    reads). A key used only as a label or written into (`counts[key] += 1`) is not a lookup."""
    out = []
    for st in fn.stmts:
        node = st.node
        value = node.value if isinstance(node, (cst.Assign, cst.Return)) else None
        if value is None or not looks_hashed(value):
            continue
        reads = {n.value for n in walk(value) if isinstance(n, cst.Name)}
        looked_up = any(LOOKUP_CALL.search(dotted(c.func).split(".")[-1]) for c in st.calls)
        if not looked_up and st.writes:
            keys = D.tainted_names(ctx, fn, set(st.writes))
            for later in fn.stmts[st.order + 1:]:
                for c in later.calls:
                    if LOOKUP_CALL.search(dotted(c.func).split(".")[-1]) and \
                            {n.value for a in c.args for n in walk(a.value) if isinstance(n, cst.Name)} & keys:
                        looked_up = True
                if tables and not looked_up and _table_read(later, set(st.writes)):
                    looked_up = "table"
        if looked_up:
            out.append((st, reads) if not tables else (st, reads, looked_up))
    return out


def _same_tensor(ctx, fn, names: set[str]) -> set[str]:
    """`names` and the names bound to views or copies of them (`y_np = y.cpu().numpy()`,
    `t = y[:, 1:]`): the same tokens, not values computed from them."""
    out = set(names)
    changed = True
    while changed:
        changed = False
        for st in fn.stmts:
            if isinstance(st.node, cst.Assign) and len(st.writes) == 1 and not st.writes <= out:
                b = base_name(st.node.value)
                if b in out and b not in ctx.imports:
                    out |= st.writes
                    changed = True
    return out


def _table_read(st, keys: set[str]) -> bool:
    """Does the statement read a table at one of `keys` (`counts[key]`, `t[i][key.reshape(-1)]`), as a
    value (not as the target of a write such as `counts[key] += 1`)?"""
    node = st.node
    value = node.value if isinstance(node, (cst.Assign, cst.AnnAssign, cst.Return)) else None
    if value is None:
        return False
    for n in walk(value):
        if isinstance(n, cst.Subscript) and base_name(n.value) not in keys and \
                {x.value for el in n.slice for x in walk(el.slice) if isinstance(x, cst.Name)} & keys:
            return True
    return False


def _hashed_params(ctx, fn) -> dict:
    """Parameters of `fn` that its own code hashes into a looked-up key -> the key's statement."""
    params = [p for p in fn.params if p not in ("self", "cls")]
    keys = _lookup_keys(ctx, fn)
    out = {}
    for p in params:
        derived = D.tainted_names(ctx, fn, {p}) if keys else set()
        for st, reads in keys:
            if reads & derived:
                out[p] = st
                break
    return out


class HashKeyReadsTarget(Rule, id="GA003", name="hash-key-reads-target",
                         severity=Severity.HIGH, confidence=Confidence.MEDIUM, layers=(Layer.STATIC, Layer.TRACE)):
    summary = "Finds hashed n-gram keys that, aligned to the output position, read the token being predicted."
    why = ("The prediction at position i may use tokens up to i, never token i+1, which is its target. A bigram "
           "or trigram hash whose key at i mixes in t[i+1] hands the model the answer: the loss drops while the "
           "implied distribution over the vocabulary no longer sums to one (PR #1420's target-gated n-gram "
           "experts leaked the same way). PR #713's BigramHash (t[i], t[i-1]) and TrigramHash (t[i], t[i-1], "
           "t[i-2]) are clean; the same code written one slot to the left is not.")
    example = _SHIFTED.code
    use_instead = _CLEAN.code
    known_problems = ("Offsets are worked out from literal slices, `torch.roll` and `F.pad` only; a key built "
                      "through an opaque helper or a computed shift is not seen statically — the properness and "
                      "causality probes of `--dynamic` catch it by running the model. Keys fed the loss "
                      "target are found by following the tensor passed as the target of cross_entropy/nll_loss "
                      "into the functions and layers (`self.layer = Layer(...)`) it is handed to; a hashed key "
                      "counts only when it is looked up (an embedding, a table), not when it is a label.")
    references = ("PR #713 (BigramHash/TrigramHash: clean)", "PR #1420 (n-gram expert gating read the target)",
                  "README: a prediction may depend only on earlier tokens")
    fix = ("Align the key with the position it feeds: write the pair hash of (t[i-1], t[i]) into out[..., 1:] "
           "(or pad on the left), so no key reads a later token.")

    VALID = [_CLEAN, _CLEAN_TRIGRAM,
             Valid(_ROLL.code.replace("shifts=-1", "shifts=1").replace("nxt", "prev"), "torch.roll(+1): the previous token"),
             Valid(_PAD.code.replace("F.pad(t[..., 1:], (0, 1))", "F.pad(t[..., :-1], (1, 0))").replace("nxt", "prev"),
                   "F.pad on the left: the previous token"),
             _LAYER_GETS_PREVIOUS,
             _HASHED_LABELS,
             _NUMPY_TARGET_KEY_UPDATE]
    INVALID = [_SHIFTED, _ROLL, _PAD, _LAYER_GETS_TARGET, _NUMPY_TARGET_KEY]

    TRACE_VALID = [_trace_example(False, "key on (t[i-1], t[i]): inputs one position before their targets")]
    TRACE_INVALID = [_trace_example(True, "a lookup keyed on the scored target's own token")]

    def judge(self, trace):
        """The tracer's TargetRead events: a lookup whose index carried, element for element, the
        positions a later loss scored as targets."""
        from harness.dynamic.judge.locations import location, where
        from harness.dynamic.judge.positions import describe_positions, positions_array
        from harness.dynamic.trace.events import TargetRead

        for e in trace.of(TargetRead):
            evidence = [f"the lookup at {where(e.frame)} was indexed, element for element, by tokens at "
                        f"(or after) the positions that the loss at {where(e.loss_frame)} scores as targets",
                        f"target positions that keyed their own prediction: {describe_positions(positions_array(e.positions))}",
                        "a causal model's input for target p is built from tokens before p only"]
            yield self.trace_finding(
                Layer.TRACE, trace, e.frame, "the prediction for each scored token was keyed on that token itself "
                f"(lookup at line {e.frame.line if e.frame else 0})", evidence=evidence,
                related=[location(trace, e.loss_frame)], confidence=Confidence.HIGH)

    def check_static(self, ctx: ModuleContext):
        """Offset keys in this file, except at lines the project check already reported."""
        seen = {f.location.line for f in project_findings(ctx, self)}
        for f in self._offset_findings(ctx):
            if f.location.line not in seen:
                yield f

    # ------------------------------------------------------------------ keys fed the loss target
    def check_project(self, project) -> dict[int, list]:
        """Keys built from the tensor the loss is taken against: `F.cross_entropy(logits, target_ids)`
        marks `target_ids`; it is followed into the functions it is passed to (`self.logits(x,
        target_ids)` -> `self.bigram(x, target_ids)` -> `BigramHash.forward(first, second)`). A
        hashed key that reads it, looked up in a table or embedding, reads token i+1 at position i."""
        functions = list(project.functions())
        targets = {id(fn): _loss_targets(ctx, fn) for ctx, fn in functions}
        own = {k: set(v) for k, v in targets.items()}
        for _ in range(8):  # into callees, to a fixed point
            changed = False
            for ctx, fn in functions:
                if not targets[id(fn)]:
                    continue
                derived = D.tainted_names(ctx, fn, targets[id(fn)])
                for st in fn.stmts:
                    for site in _sites(project, ctx, fn, st):
                        for pname, expr in site.bound.items():
                            if base_name(expr) in derived and pname not in targets[id(site.callee)]:
                                targets[id(site.callee)].add(pname)
                                changed = True
            if not changed:
                break
        hashed: dict[int, dict] = {}  # filled for the callees a target reaches (few)
        plan: dict[int, list] = {}
        for ctx, fn in functions:
            if not targets[id(fn)]:
                continue
            derived = D.tainted_names(ctx, fn, targets[id(fn)])
            mine = D.tainted_names(ctx, fn, own[id(fn)]) if own[id(fn)] else set()
            direct = None
            for st, reads, how in _lookup_keys(ctx, fn, tables=True):  # a key built here from this function's own target
                if how == "table":  # read as `counts[key]`: only a key built from the target tensor itself,
                    # as it stands at the key (names such as `tgt` are re-bound between a prefill and the eval)
                    if direct is None:
                        direct = _same_tensor(ctx, fn, own[id(fn)])
                        flow = FlowTaint(fn, own[id(fn)], direct)
                    if not flow.any_tainted(reads & direct, st):
                        continue
                if reads & mine:
                    name = sorted(reads & (direct if how == "table" else mine))[0]
                    if how == "table":
                        name = sorted(n for n in reads & direct if flow.tainted(n, st))[0]
                    plan.setdefault(id(ctx), []).append(self._target_finding(
                        ctx, fn, st, name, f"{fn.qualname}() builds a hashed lookup key from `{name}`",
                        f"`{ctx.code(st.node)[:160]}`"))
            for st in fn.stmts:  # a target handed to a function that hashes that parameter
                for site in _sites(project, ctx, fn, st):
                    if not any(base_name(e) in derived for e in site.bound.values()):
                        continue
                    if id(site.callee) not in hashed:
                        hashed[id(site.callee)] = _hashed_params(site.callee_ctx, site.callee)
                    for pname, key_stmt in hashed[id(site.callee)].items():
                        expr = site.bound.get(pname)
                        if expr is None or base_name(expr) not in derived:
                            continue
                        evidence = (f"{site.callee.qualname}() hashes its `{pname}` argument into a lookup key at "
                                    f"line {key_stmt.line} of {site.callee_ctx.path}: "
                                    f"`{site.callee_ctx.code(key_stmt.node)[:140]}`")
                        name = base_name(expr)
                        plan.setdefault(id(ctx), []).append(self._target_finding(
                            ctx, fn, st, name, f"{fn.qualname}() passes `{name}` into the hashed lookup key of "
                                               f"{site.callee.qualname}()",
                            evidence, site.callee_ctx.location(key_stmt.line, site.callee.qualname)))
        return plan

    def _target_finding(self, ctx, fn, st, name: str, what: str, evidence: str, related=None):
        return self.static_finding(
            ctx, st.line, fn.qualname,
            f"{what}; `{name}` is the tensor the loss is scored against, so the key for position i reads "
            "token i+1, the target",
            [evidence, f"`{name}` is the loss target (t[i+1] at position i): the loss in this function or a "
                       "caller is taken against it"],
            fix="Build hashed keys from input tokens only (t[i], t[i-1], ...); never feed the targets into a "
                "feature of the position that predicts them.",
            related=[related] if related is not None else [],
            **ctx.reach_fields(fn.qualname, st),
        )

    # ------------------------------------------------------------------ literal offsets
    def _offset_findings(self, ctx: ModuleContext):
        for q, fn in ctx.functions.items():
            shifts = _shift_bindings(ctx, fn)
            for st in fn.stmts:
                node = st.node
                if isinstance(node, cst.Assign) and len(node.targets) == 1:
                    target, value = node.targets[0].target, node.value
                elif isinstance(node, cst.Return) and node.value is not None:
                    target, value = None, node.value
                else:
                    continue
                if not looks_hashed(value):
                    continue
                c = 0
                exclude = None
                if isinstance(target, cst.Subscript) and isinstance(target.value, cst.Name):
                    s = _last_slice(target)
                    if s is None:
                        continue
                    c, exclude = s[0], target.value.value
                reads = [(name, a - c) for name, a, _ in _token_slices(value, exclude)]
                reads += [(name, k - c) for name, k in shifts.items() if name in st.reads]
                ahead = [(name, off) for name, off in reads if off > 0]
                if not ahead or (target is None and not shifts and len(reads) < 1):
                    continue
                if target is None and not any(name in shifts for name, _ in ahead):
                    continue  # a bare return of slices is aligned by its caller: unknown
                worst = max(off for _, off in ahead)
                yield self.static_finding(
                    ctx, st.line, q,
                    f"{q}() builds a hash key whose entry for position i reads token i+{worst}: the key includes "
                    "the target the model is scored on",
                    [f"`{ctx.code(node)[:160]}`",
                     "offsets read per output position: " + ", ".join(f"{n}[i{off:+d}]" for n, off in reads)],
                    **ctx.reach_fields(q, st),
                )
