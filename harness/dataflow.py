"""Data roles and their flow, over the engine's fact index.

API knowledge (which call loads validation data, which computes a loss, which trains) lives in
the tables at the top, apart from the analysis: the violation itself is stated as an ordering
between roles ("a validation-derived training step with no score of that data before it").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import libcst as cst

from harness.engine import Function, ModuleContext, Stmt, base_name, dotted, walk

# ------------------------------------------------------------------ API tables
VAL_NAME = re.compile(r"(^|_)val(_|$)|^val[A-Z]|validation", re.I)  # parameter / variable names
VAL_LOADER_CALL = re.compile(r"load_validation|load_val|val_tokens|fineweb_val|^Validation|\.Validation|"
                             r"(^|[._])val_?(data|set|loader|stream)$|ValLoader", re.I)
# attribute reads that name the validation split (`args.val_files`, `val_data.val_tokens`); plain
# names travel by taint from their own definitions instead
VAL_ATTRS = frozenset({"val_tokens", "val_files", "val_pattern", "val_path", "val_data"})
VAL_STRING = re.compile(r"fineweb_val|_val_\*|val_files|/val", re.I)
LOSS_NAME = re.compile(r"loss|nll|xent|logprob|log_prob", re.I)
LOSS_CALL = re.compile(r"cross_entropy|nll_loss|forward_per_token|log_softmax|(^|\.)(model|base_model|ttt_model|"
                       r"compiled_model|eval_model|net)$|loss", re.I)
OPTIMIZER_CTOR = re.compile(r"(^|\.)(SGD|Adam|AdamW|Adagrad|RMSprop|Muon|NorMuon|Lion|Adafactor|\w*Optimizer\w*|"
                            r"\w*Muon\w*)$")
OPTIMIZER_NAME = re.compile(r"opt|optim|optimizer", re.I)
INPLACE_UPDATE = {"add_", "sub_", "copy_", "mul_", "addcdiv_", "addcmul_", "lerp_", "div_", "zero_", "fill_"}
EVAL_FUNC = re.compile(r"eval|score|evaluate|bpb", re.I)
NO_GRAD = re.compile(r"no_grad|inference_mode|enable_grad\(False\)|set_grad_enabled\(False\)")


# ------------------------------------------------------------------ taint
def _stmt_value_reads(st: Stmt) -> set[str]:
    return set(st.reads) - set(st.writes) if st.kind == "simple" and isinstance(st.node, cst.Assign) else set(st.reads)


def _module_call(st: Stmt, clean: set[str]) -> bool:
    """`x = f(...)` where `f` is a module function whose return values carry no validation data."""
    node = st.node
    return isinstance(node, (cst.Assign, cst.AnnAssign)) and isinstance(node.value, cst.Call) \
        and isinstance(node.value.func, cst.Name) and node.value.func.value in clean


def tainted_names(ctx: ModuleContext, fn: Function, seeds: set[str], clean: set[str] | None = None) -> set[str]:
    """Names in `fn` that hold data derived from `seeds` (flow-insensitive fixed point). `clean`:
    module functions known to return nothing derived from their tainted arguments (a training
    function handed val data for its progress prints still returns an untainted model)."""
    tainted = set(seeds)
    clean = clean or set()
    changed = True
    while changed:
        changed = False
        for st in fn.stmts:
            if not st.writes:
                continue
            if isinstance(st.node, (cst.Assign, cst.AugAssign, cst.AnnAssign)) or st.kind in ("for", "with"):
                if st.reads & tainted and not st.writes <= tainted and not _module_call(st, clean):
                    tainted |= set(st.writes)
                    changed = True
        # in-place mutation calls: `x_batch[i].copy_(tokens)` or `buf.append(tok)` taint their base
        for st in fn.stmts:
            for call in st.calls:
                if isinstance(call.func, cst.Attribute) and call.func.attr.value in (
                        "copy_", "append", "extend", "index_put_", "index_copy_", "scatter_", "put_"):
                    arg_names = set()
                    for a in call.args:
                        arg_names |= {n.value for n in _names(a.value)}
                    base = base_name(call.func.value)
                    if base and arg_names & tainted and base not in tainted:
                        tainted.add(base)
                        changed = True
    return tainted


def _names(node: cst.CSTNode) -> list[cst.Name]:
    return [n for n in walk(node) if isinstance(n, cst.Name)]


def _call_arg_names(call: cst.Call) -> list[set[str]]:
    return [{n.value for n in _names(a.value)} for a in call.args]


def val_taint(ctx: ModuleContext) -> dict[str, set[str]]:
    """Per function, the names that carry validation data. Seeds: names assigned from validation
    loaders, parameters named like validation data, and parameters that callers pass validation
    data into (propagated through the module's call graph to a fixed point)."""
    if "val_taint" in ctx.analysis:
        return ctx.analysis["val_taint"]
    seeds: dict[str, set[str]] = {q: set() for q in ctx.functions}
    for q, fn in ctx.functions.items():
        seeds[q] |= {p for p in fn.params if VAL_NAME.search(p)}
        for st in fn.stmts:
            if st.writes and (any(VAL_LOADER_CALL.search(c) for c in st.call_names())
                              or any(VAL_STRING.search(s) for s in st.strings)):
                seeds[q] |= set(st.writes)
            # `args.val_files`-style attribute reads are validation sources too
            if st.writes and isinstance(st.node, cst.Assign) and st.attrs & VAL_ATTRS:
                seeds[q] |= set(st.writes)
    by_name = {fn.name: fn for fn in ctx.functions.values()}
    # module functions start out "clean" (their results carry no val data) and lose that when
    # one of their return statements reads a tainted name: an optimistic fixed point
    clean = {q for q in ctx.functions if "." not in q and q != "<module>"}
    returns = {q: set().union(*[st.reads for st in ctx.functions[q].stmts if isinstance(st.node, cst.Return)])
               for q in clean}
    result = {q: tainted_names(ctx, fn, seeds[q], clean) for q, fn in ctx.functions.items()}
    for _ in range(8):  # interprocedural: pass tainted arguments into callee parameters
        changed = False
        for q in list(clean):
            if returns[q] & result[q]:
                clean.discard(q)
                changed = True
        for q, fn in ctx.functions.items():
            for st in fn.stmts:
                for call in st.calls:
                    callee = by_name.get(dotted(call.func).split(".")[-1])
                    if callee is None:
                        continue
                    params = [p for p in callee.params if p not in ("self", "cls")]
                    for i, arg in enumerate(call.args):
                        names = {n.value for n in _names(arg.value)}
                        if not names & result[q]:
                            continue
                        if arg.keyword is not None:
                            pname = arg.keyword.value
                        elif i < len(params):
                            pname = params[i]
                        else:
                            continue
                        if pname in callee.params and pname not in seeds[callee.qualname]:
                            seeds[callee.qualname].add(pname)
                            changed = True
        if not changed:
            break
        result = {q: tainted_names(ctx, fn, seeds[q], clean) for q, fn in ctx.functions.items()}
    ctx.analysis["val_taint"] = result
    return result


# ------------------------------------------------------------------ events
@dataclass
class TrainEvent:
    stmt: Stmt
    what: str  # "optimizer step" / "manual parameter update" / "backward"
    code: str


@dataclass
class ScoreEvent:
    stmt: Stmt
    accumulator: str
    code: str
    value_order: int  # statement order where the accumulated value was computed (<= stmt.order)


def optimizer_names(ctx: ModuleContext, fn: Function) -> set[str]:
    names = set()
    for f in (ctx.functions["<module>"], fn):
        for st in f.stmts:
            if isinstance(st.node, cst.Assign) and isinstance(st.node.value, cst.Call):
                if OPTIMIZER_CTOR.search(ctx.resolve(dotted(st.node.value.func))):
                    names |= set(st.writes)
    names |= {p for p in fn.params if OPTIMIZER_NAME.fullmatch(p) or p.endswith("opt") or p.endswith("optimizer")}
    # aliases: cur_opt = opt
    for st in fn.stmts:
        if isinstance(st.node, cst.Assign) and isinstance(st.node.value, cst.Name) and st.node.value.value in names:
            names |= set(st.writes)
    return names


def train_events(ctx: ModuleContext, fn: Function) -> list[TrainEvent]:
    opts = optimizer_names(ctx, fn)
    events = []
    for st in fn.stmts:
        for call in st.calls:
            name = dotted(call.func)
            parts = name.split(".")
            if parts[-1] == "step" and len(parts) >= 2 and (parts[-2] in opts or OPTIMIZER_NAME.search(parts[-2])):
                events.append(TrainEvent(st, "optimizer step", ctx.code(call)))
            elif parts[-1] == "getattr" or name == "getattr":
                args = [ctx.code(a.value) for a in call.args]
                if len(args) >= 2 and "step" in args[1]:
                    events.append(TrainEvent(st, "optimizer step (via getattr)", ctx.code(call)))
            elif parts[-1] in INPLACE_UPDATE and ".data" in name and "grad" in ctx.code(call):
                events.append(TrainEvent(st, "manual parameter update", ctx.code(call)))
        if isinstance(st.node, cst.AugAssign) and "grad" in st.reads and \
                isinstance(st.node.operator, (cst.SubtractAssign, cst.AddAssign)):
            events.append(TrainEvent(st, "manual parameter update", ctx.code(st.node)))
    return events


def _is_lossy(ctx: ModuleContext, fn: Function, names: set[str], loss_names: set[str]) -> bool:
    return bool(names & loss_names)


def loss_names(ctx: ModuleContext, fn: Function) -> dict[str, int]:
    """Names holding loss values, with the statement order where each is (first) computed."""
    out: dict[str, int] = {}
    for st in fn.stmts:
        if not st.writes or not isinstance(st.node, (cst.Assign, cst.AnnAssign, cst.AugAssign)):
            continue
        value = st.node.value
        if value is None:
            continue
        calls = [dotted(c.func) for c in st.calls]
        lossy_call = any(LOSS_CALL.search(c) for c in calls)
        reads_loss = bool(set(st.reads) & set(out)) and not isinstance(st.node, cst.AugAssign)
        named = any(LOSS_NAME.search(w) for w in st.writes)
        if (lossy_call and (named or calls)) or (reads_loss and named) or (named and calls):
            for w in st.writes:
                out.setdefault(w, st.order)
    return out


def score_events(ctx: ModuleContext, fn: Function, tainted: set[str]) -> list[ScoreEvent]:
    """Validation losses accumulated into a running score: `acc += f(loss)`, `acc.append(...)`,
    `acc.add_(...)`, `acc = acc + ...`."""
    losses = loss_names(ctx, fn)
    events = []
    for st in fn.stmts:
        node = st.node
        value_names: set[str] = set()
        acc = None
        if isinstance(node, cst.AugAssign) and isinstance(node.operator, cst.AddAssign):
            acc = base_name(node.target)
            value_names = {n.value for n in _names(node.value)}
        elif isinstance(node, cst.Assign) and isinstance(node.value, cst.BinaryOperation) and \
                isinstance(node.value.operator, cst.Add):
            acc_names = {base_name(t.target) for t in node.targets}
            left = base_name(node.value.left)
            if left in acc_names:
                acc = left
                value_names = {n.value for n in _names(node.value.right)}
        elif isinstance(node, cst.Expr) and isinstance(node.value, cst.Call) and \
                isinstance(node.value.func, cst.Attribute) and node.value.func.attr.value in ("append", "add_", "extend"):
            acc = base_name(node.value.func.value)
            value_names = {n.value for n in _names(node.value)} - {acc}
        if acc is None:
            helper = _scoring_helper_call(ctx, st, set(losses))
            if helper is not None:
                events.append(ScoreEvent(st, helper[0], ctx.code(node)[:160], helper[1]))
            continue
        if acc in losses and not LOSS_NAME.search(acc):
            continue
        scored = value_names & set(losses)
        if not scored or LOSS_NAME.search(acc or "") is None and not re.search(r"sum|total|nll|bits|acc", acc, re.I):
            continue
        if not (scored & tainted or value_names & tainted):
            continue
        events.append(ScoreEvent(st, acc, ctx.code(node), min(losses[n] for n in scored)))
    return events


def _accumulating_params(ctx: ModuleContext, fn: Function) -> set[int]:
    """Indices of `fn`'s parameters that it accumulates into in place (`acc += ...`, `acc.add_(...)`)."""
    key = ("acc_params", fn.qualname)
    if key in ctx.analysis:
        return ctx.analysis[key]
    out: set[int] = set()
    params = [p for p in fn.params if p not in ("self", "cls")]
    for st in fn.stmts:
        node = st.node
        target = None
        if isinstance(node, cst.AugAssign) and isinstance(node.operator, cst.AddAssign):
            target = base_name(node.target)
        for call in st.calls:
            if isinstance(call.func, cst.Attribute) and call.func.attr.value in ("add_", "index_add_", "append"):
                target = base_name(call.func.value)
        if target in params:
            out.add(params.index(target))
    ctx.analysis[key] = out
    return out


def _scoring_helper_call(ctx: ModuleContext, st: Stmt, losses: set[str]) -> tuple[str, int] | None:
    """`_accumulate_bpb(per_tok_loss, ..., loss_sum, ...)`: a call that hands a loss and an accumulator
    to a module function that adds into that accumulator. Returns (accumulator, order)."""
    by_name = {f.name: f for f in ctx.functions.values()}
    for call in st.calls:
        callee = by_name.get(dotted(call.func).split(".")[-1])
        if callee is None:
            continue
        arg_names = [{n.value for n in _names(a.value)} for a in call.args]
        if not any(a & losses for a in arg_names):
            continue
        for i in _accumulating_params(ctx, callee):
            if i < len(call.args) and call.args[i].keyword is None and isinstance(call.args[i].value, cst.Name):
                return call.args[i].value.value, st.order
    return None


def backward_tainted(ctx: ModuleContext, fn: Function, tainted: set[str], loop_stmts: list[Stmt]) -> bool:
    """Does this stretch of code backpropagate a loss computed from validation data?"""
    for st in loop_stmts:
        for call in st.calls:
            if isinstance(call.func, cst.Attribute) and call.func.attr.value == "backward":
                names = {n.value for n in _names(call.func.value)}
                if names & tainted:
                    return True
            if dotted(call.func).endswith("autograd.grad"):
                if {n.value for a in call.args for n in _names(a.value)} & tainted:
                    return True
    return False


LOADER_CTOR = re.compile(r"loader|stream|dataset|iterator|batcher|sampler", re.I)
BATCH_CALL = re.compile(r"(^|\.)(next_batch|next|take|sample|get_batch|__next__)$")


def val_loader_batches(ctx: ModuleContext, fn: Function, tainted: set[str]) -> dict[str, Stmt]:
    """Names holding batches drawn from a loader object built over validation data
    (`loader = TokenLoader(args.val_files)`, `x, y = loader.next_batch(...)`): the shape of a
    training loop fed with validation tokens. Maps each batch name to the statement that draws it."""
    loaders = set()
    for st in fn.stmts:
        if isinstance(st.node, cst.Assign) and isinstance(st.node.value, cst.Call) and st.writes & tainted \
                and LOADER_CTOR.search(dotted(st.node.value.func)):
            loaders |= st.writes
    loaders |= {p for p in fn.params if p in tainted and LOADER_CTOR.search(p)}
    out: dict[str, Stmt] = {}
    for st in fn.stmts:
        for call in st.calls:
            name = dotted(call.func)
            if BATCH_CALL.search(name) and (base_name(call.func) in loaders or
                                           any(base_name(a.value) in loaders for a in call.args)):
                for w in st.writes:
                    out[w] = st
        if st.kind == "for" and st.reads & loaders:
            for w in st.writes:
                out[w] = st
    return out


def ctor_keeps_no_model(ctx: ModuleContext, call: cst.Call) -> bool:
    """For `Cls(..., model, ...)` with `Cls` defined in this file: its `__init__` does not keep a
    model-like argument (`self.model = model`), so `obj.parameters()` holds only its own weights.
    Unknown classes are assumed to keep what they are given."""
    cls = dotted(call.func).split(".")[-1]
    init = ctx.functions.get(f"{cls}.__init__")
    if init is None:
        return not any(MODEL_NAME.search(n) for a in call.args for n in (base_name(a.value) or "",))
    kept = set()
    for st in init.stmts:
        if isinstance(st.node, cst.Assign) and isinstance(st.node.value, cst.Name) and any(
                isinstance(tg.target, cst.Attribute) for tg in st.node.targets):
            kept.add(st.node.value.value)
    return not any(MODEL_NAME.search(p) for p in kept)


MODEL_NAME = re.compile(r"model|net|module|base", re.I)


def is_eval_call(ctx: ModuleContext, call: cst.Call, tainted: set[str]) -> bool:
    name = dotted(call.func).split(".")[-1]
    args = {n.value for a in call.args for n in _names(a.value)}
    return bool(EVAL_FUNC.search(name)) and bool(args & tainted)


def guard_cover(score: Stmt, train: Stmt) -> bool:
    """True when every `if` that gates the score also gates the training step (so the score runs
    whenever the step does). Guards on variables of loops that enclose both but not... are the
    multi-epoch case: `if epoch == last: score` does not cover a step taken in every epoch."""
    train_guards = {(g.code, g.negated) for g in train.guards}
    return all((g.code, g.negated) in train_guards for g in score.guards)


REPORT_STRING = re.compile(r"val_loss|val_bpb|bpb|final|score", re.I)


def _fstring_text(node: cst.FormattedString) -> str:
    """An f-string's literal text and the names in its fields: `f"val_bpb:{bpb:.4f}"` -> "val_bpb: bpb"."""
    out = []
    for part in node.parts:
        if isinstance(part, cst.FormattedStringText):
            out.append(part.value)
        else:
            out.extend(n.value for n in _names(part.expression))
    return " ".join(out)


def reported_names(ctx: ModuleContext, fn: Function) -> set[str]:
    """Names whose values reach what the function reports: its return values, or what it prints
    next to val_loss/val_bpb — closed backwards over assignments."""
    out: set[str] = set()
    for st in fn.stmts:
        if isinstance(st.node, cst.Return) and st.node.value is not None:
            out |= set(st.reads)
        elif any(REPORT_STRING.search(s) for s in st.strings) or any(
                isinstance(c.args[0].value, cst.FormattedString) and REPORT_STRING.search(_fstring_text(c.args[0].value))
                for c in st.calls if c.args):
            out |= set(st.reads)
    changed = True
    while changed:
        changed = False
        for st in fn.stmts:
            new: set[str] = set()
            if st.writes & out and isinstance(st.node, (cst.Assign, cst.AugAssign, cst.AnnAssign)):
                new = set(st.reads) - out
            for call in st.calls:  # acc.append(x) / acc.add_(x) feed acc
                if isinstance(call.func, cst.Attribute) and call.func.attr.value in ("append", "extend", "add_") \
                        and base_name(call.func.value) in out:
                    new |= {n.value for a in call.args for n in _names(a.value)} - out
            if new:
                out |= new
                changed = True
    return out
