"""GA003 hash-key-reads-target: an n-gram / hash key whose tokens, aligned to the output
position, include that position's target (the next token)."""
from __future__ import annotations

import libcst as cst

from harness.engine import ModuleContext, dotted, walk
from harness.findings import Confidence, Layer, Severity
from harness.rule import Invalid, Rule, Valid

_CLEAN = '''
import torch
def bigram_hash(tokens, buckets):
    t = tokens.to(torch.int32)
    out = torch.empty_like(t)
    out[..., 0] = buckets - 1
    out[..., 1:] = torch.bitwise_xor(36313 * t[..., 1:], 27191 * t[..., :-1]) % (buckets - 1)
    return out
'''

_CLEAN_TRIGRAM = '''
def trigram_hash(t, mod):
    out = t.clone()
    out[..., 2:] = (48271 * t[..., 2:] ^ 36313 * t[..., 1:-1] ^ 27191 * t[..., :-2]) % mod
    return out
'''

_SHIFTED = '''
import torch
def bigram_hash(tokens, buckets):
    t = tokens.to(torch.int32)
    out = torch.empty_like(t)
    out[..., -1] = buckets - 1
    out[..., :-1] = torch.bitwise_xor(36313 * t[..., 1:], 27191 * t[..., :-1]) % (buckets - 1)
    return out
'''

_ROLL = '''
import torch
def pair_key(t, mod):
    nxt = torch.roll(t, shifts=-1, dims=-1)
    return (t * 1000003 + nxt * 8191) % mod
'''

_PAD = '''
import torch.nn.functional as F
def pair_key(t, mod):
    nxt = F.pad(t[..., 1:], (0, 1))
    return (t * 1000003 + nxt * 8191) % mod
'''


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


def _hashy(node: cst.CSTNode) -> bool:
    for n in walk(node):
        if isinstance(n, cst.BinaryOperation):
            if isinstance(n.operator, (cst.Modulo, cst.BitXor)):
                return True
            if isinstance(n.operator, cst.Multiply) and any(
                    isinstance(x, cst.Integer) and int(x.value.replace("_", "")) >= 100 for x in (n.left, n.right)):
                return True
        elif isinstance(n, cst.Call) and dotted(n.func).split(".")[-1] in ("bitwise_xor", "hash", "remainder", "fmod"):
            return True
    return False


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
    from harness.dynamic.judging import SyntheticRun, TraceExample

    run = SyntheticRun(n=65)
    if leaks:
        run.target_read("forward", 31, [(1, 65)], loss_function="forward", loss_line=40)
    run.score("eval_val", 250, [(1, 65)], nll=0.1 if leaks else 3.0)
    run.end()
    return TraceExample(events=tuple(run.events), note=note, function="forward" if leaks else None,
                        line=31 if leaks else None)


class HashKeyReadsTarget(Rule):
    id = "GA003"
    name = "hash-key-reads-target"
    severity = Severity.HIGH
    confidence = Confidence.MEDIUM
    layers = (Layer.STATIC, Layer.TRACE)
    summary = "Finds hashed n-gram keys that, aligned to the output position, read the token being predicted."
    why = ("The prediction at position i may use tokens up to i, never token i+1, which is its target. A bigram "
           "or trigram hash whose key at i mixes in t[i+1] hands the model the answer: the loss drops while the "
           "implied distribution over the vocabulary no longer sums to one (PR #1420's target-gated n-gram "
           "experts leaked the same way). PR #713's BigramHash (t[i], t[i-1]) and TrigramHash (t[i], t[i-1], "
           "t[i-2]) are clean; the same code written one slot to the left is not.")
    example = _SHIFTED
    use_instead = _CLEAN
    known_problems = ("Offsets are worked out from literal slices, `torch.roll` and `F.pad` only; a key built "
                      "through an opaque helper or a computed shift is not seen statically — the properness and "
                      "causality probes of `--dynamic` catch it by running the model.")
    references = ("PR #713 (BigramHash/TrigramHash: clean)", "PR #1420 (n-gram expert gating read the target)",
                  "README: a prediction may depend only on earlier tokens")
    fix = ("Align the key with the position it feeds: write the pair hash of (t[i-1], t[i]) into out[..., 1:] "
           "(or pad on the left), so no key reads a later token.")

    VALID = [Valid(_CLEAN, "PR #713 BigramHash"), Valid(_CLEAN_TRIGRAM, "PR #713 TrigramHash"),
             Valid(_ROLL.replace("shifts=-1", "shifts=1").replace("nxt", "prev"), "torch.roll(+1): the previous token"),
             Valid(_PAD.replace("F.pad(t[..., 1:], (0, 1))", "F.pad(t[..., :-1], (1, 0))").replace("nxt", "prev"),
                   "F.pad on the left: the previous token")]
    INVALID = [
        Invalid(_SHIFTED, line=7, function="bigram_hash", note="output shifted one step left"),
        Invalid(_ROLL, line=5, function="pair_key", note="torch.roll(-1) key"),
        Invalid(_PAD, line=5, function="pair_key", note="F.pad shift"),
    ]

    TRACE_VALID = [_trace_example(False, "key on (t[i-1], t[i]): inputs one position before their targets")]
    TRACE_INVALID = [_trace_example(True, "a lookup keyed on the scored target's own token")]

    def judge(self, trace):
        """The tracer's TargetRead events: a lookup whose index carried, element for element, the
        positions a later loss scored as targets."""
        from harness.dynamic import judging as J
        from harness.dynamic.trace import TargetRead

        for e in trace.of(TargetRead):
            evidence = [f"the lookup at {J.where(e.frame)} was indexed, element for element, by the tokens "
                        f"at the positions that the loss at {J.where(e.loss_frame)} scores as targets",
                        f"target positions that keyed their own prediction: {J.describe_positions(J.positions_array(e.positions))}",
                        "a causal model's input for target p is built from tokens before p only"]
            yield self.finding(Layer.TRACE, f"the prediction for each scored token was keyed on that token itself "
                               f"(lookup at line {e.frame.line if e.frame else 0})",
                               J.location(trace, e.frame), evidence=evidence,
                               related=[J.location(trace, e.loss_frame)], confidence=Confidence.HIGH)

    def check_static(self, ctx: ModuleContext):
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
                if not _hashy(value):
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
                yield self.finding(
                    Layer.STATIC,
                    f"{q}() builds a hash key whose entry for position i reads token i+{worst}: the key includes "
                    "the target the model is scored on",
                    ctx.location(st.line, q),
                    [f"`{ctx.code(node)[:160]}`",
                     "offsets read per output position: " + ", ".join(f"{n}[i{off:+d}]" for n, off in reads)],
                    **ctx.reach_fields(q, st),
                )
