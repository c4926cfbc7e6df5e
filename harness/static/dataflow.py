"""Data roles and their flow, over the engine's fact index.

API knowledge (which call loads validation data, which computes a loss, which trains) lives in
the tables at the top, apart from the analysis: the violation itself is stated as an ordering
between roles ("a validation-derived training step with no score of that data before it").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import libcst as cst

from harness.static.engine import Function, ModuleContext, Stmt, base_name, dotted, names_in, target_names, walk
from harness.static.project import project_of
from harness.static.reaching import FlowTaint

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
    t = type(node)
    return (t is cst.Assign or t is cst.AnnAssign) and type(node.value) is cst.Call \
        and type(node.value.func) is cst.Name and node.value.func.value in clean


_ASSIGNS = (cst.Assign, cst.AugAssign, cst.AnnAssign)
# concrete LibCST classes without subclasses: a type lookup answers what isinstance does, without
# ABCMeta's Python-level __instancecheck__ on every miss (see engine._Name)
_ASSIGN_TYPES = frozenset(_ASSIGNS)
_MUTATORS = ("copy_", "append", "extend", "index_put_", "index_copy_", "scatter_", "put_")


def tainted_names(ctx: ModuleContext, fn: Function, seeds: set[str], clean: set[str] | None = None) -> set[str]:
    """Names in `fn` that hold data derived from `seeds` (flow-insensitive fixed point). `clean`:
    module functions known to return nothing derived from their tainted arguments (a training
    function handed val data for its progress prints still returns an untainted model)."""
    # a pure function of the function's facts, `seeds` and `clean`: the project's fixed points
    # (val_taint, the summaries) ask again with the same arguments each round. A copy is
    # returned, as before: callers own the set they get.
    key = ("tainted", frozenset(seeds), frozenset(clean) if clean else frozenset())
    return set(fn.memoised(key, lambda: _tainted_names(fn, seeds, clean or set())))


def _tainted_names(fn: Function, seeds: set[str], clean: set[str]) -> set[str]:
    tainted = set(seeds)
    # the statements that can bind a name from what they read, and the in-place mutation calls
    # (`x_batch[i].copy_(tokens)` or `buf.append(tok)` taint their base): fixed per function
    binders = fn.memo.get("binders")
    if binders is None:
        binders = fn.memo["binders"] = [
            st for st in fn.stmts
            if st.writes and (type(st.node) in _ASSIGN_TYPES or st.kind in ("for", "with"))]
        mutations = []
        for st in fn.stmts:
            for call in st.calls:
                if type(call.func) is cst.Attribute and call.func.attr.value in _MUTATORS:
                    arg_names = set()
                    for a in call.args:
                        arg_names |= {n.value for n in names_in(a.value)}
                    mutations.append((base_name(call.func.value), arg_names))
        fn.memo["mutations"] = mutations
    mutations = fn.memo["mutations"]
    changed = True
    while changed:
        changed = False
        for st in binders:
            if st.reads & tainted and not st.writes <= tainted and not _module_call(st, clean):
                tainted |= set(st.writes)
                changed = True
        for base, arg_names in mutations:
            if base and arg_names & tainted and base not in tainted:
                tainted.add(base)
                changed = True
    return tainted


def _names(node: cst.CSTNode) -> list[cst.Name]:
    return names_in(node)


def _call_arg_names(call: cst.Call) -> list[set[str]]:
    return [{n.value for n in _names(a.value)} for a in call.args]


def val_taint(ctx: ModuleContext) -> dict[str, set[str]]:
    """Per function, the names that carry validation data. Seeds: names assigned from validation
    loaders, parameters named like validation data, results of functions that return validation
    data they loaded themselves (`val_tokens, luts = load_eval_data(h)`), and parameters that
    callers pass validation data into — across the project's files, through dispatch tables and
    `*args` tuples (harness/static/project.py), to a fixed point."""
    if "val_taint" not in ctx.analysis:
        _project_val_taint(project_of(ctx))
    return ctx.analysis["val_taint"]


def _own_seeds(fn: Function) -> set[str]:
    """Names `fn` binds from a validation source itself (not from its parameters)."""
    out: set[str] = set()
    for st in fn.stmts:
        if st.writes and (any(VAL_LOADER_CALL.search(c) for c in st.call_names())
                          or any(VAL_STRING.search(s) for s in st.strings)):
            out |= set(st.writes)
        # `args.val_files`-style attribute reads are validation sources too
        if st.writes and isinstance(st.node, cst.Assign) and st.attrs & VAL_ATTRS:
            out |= set(st.writes)
    return out


def _callees_or_same_file(project, ctx: ModuleContext, fn: Function, call: cst.Call, by_name: dict):
    """Resolved callees; failing that, a function of this file with the call's last name (the
    historical, looser match, kept so that method calls inside one file still carry taint)."""
    hits = project.callees(ctx, fn, call)
    if hits:
        return hits
    callee = by_name.get(dotted(call.func).split(".")[-1])
    return [(ctx, callee)] if callee is not None else []


def _returned_positions(ctx: ModuleContext, fn: Function, names: set[str]) -> tuple[bool, set[int] | None]:
    """Does `fn` return any of `names`, and at which tuple positions (None: the whole value)."""
    hit, positions, whole = False, set(), False
    for st in fn.stmts:
        if not isinstance(st.node, cst.Return) or st.node.value is None or not set(st.reads) & names:
            continue
        hit = True
        value = st.node.value
        if isinstance(value, cst.Tuple) and not any(isinstance(e, cst.StarredElement) for e in value.elements):
            for i, el in enumerate(value.elements):
                if {n.value for n in _names(el.value)} & names:
                    positions.add(i)
        else:
            whole = True
    return hit, (None if whole else positions)


def _source_writes(st: Stmt, positions: set[int] | None) -> set[str]:
    """The names `x, y = source()` binds to the tainted positions of what `source` returns."""
    node = st.node
    if positions is not None and isinstance(node, cst.Assign) and len(node.targets) == 1 \
            and isinstance(node.targets[0].target, cst.Tuple):
        out: set[str] = set()
        for i, el in enumerate(node.targets[0].target.elements):
            if i in positions:
                out |= target_names(el.value)
        return out
    return set(st.writes)


def _project_val_taint(project) -> None:
    fns = list(project.functions())
    own = {id(fn): _own_seeds(fn) for _, fn in fns}
    seeds = {id(fn): own[id(fn)] | {p for p in fn.params if VAL_NAME.search(p)} for _, fn in fns}
    by_name = {id(ctx): {fn.name: fn for fn in ctx.functions.values()} for ctx in project.contexts}
    # module functions start out "clean" (their results carry no val data) and lose that when
    # one of their return statements reads a tainted name: an optimistic fixed point
    clean = {id(fn) for ctx, fn in fns if "." not in fn.qualname and fn.qualname != "<module>"}
    # functions that return validation data they load themselves, with the tuple positions
    sources: dict[int, set[int] | None] = {}
    checked: dict[int, int] = {}

    def clean_names(ctx: ModuleContext) -> set[str]:
        names = {q for q, fn in ctx.functions.items() if id(fn) in clean}
        for alias in ctx.imports:
            hit = project.resolve_import(ctx, alias)
            if hit is not None and hit[1] and id(hit[0].functions.get(hit[1])) in clean:
                names.add(alias)
        return names

    def solve() -> dict[int, set[str]]:
        names = {id(ctx): clean_names(ctx) for ctx in project.contexts}
        return {id(fn): tainted_names(ctx, fn, seeds[id(fn)], names[id(ctx)]) for ctx, fn in fns}

    result = solve()
    # the resolved calls of every statement, and the names in each bound argument: computed once
    calls = [(ctx, fn, st, call, callee, [(p, {n.value for n in _names(e)})
                                          for p, e in project.bind(ctx, fn, call, callee).items()])
             for ctx, fn in fns for st in fn.stmts for call in st.calls
             for _, callee in _callees_or_same_file(project, ctx, fn, call, by_name[id(ctx)])]
    for _ in range(8):  # interprocedural: pass tainted arguments into callee parameters
        changed = False
        for ctx, fn in fns:
            if id(fn) in clean and _returned_positions(ctx, fn, result[id(fn)])[0]:
                clean.discard(id(fn))
                changed = True
            if id(fn) not in sources and fn.qualname != "<module>" and own[id(fn)] \
                    and checked.get(id(fn)) != len(own[id(fn)]):
                checked[id(fn)] = len(own[id(fn)])  # own seeds only grow: look again when they do
                mine = tainted_names(ctx, fn, own[id(fn)])
                scores = tainted_names(ctx, fn, set(loss_names(ctx, fn)))
                hit, positions = _returned_positions(ctx, fn, mine - scores)
                if hit:
                    sources[id(fn)] = positions
                    changed = True
        for ctx, fn, st, call, callee, bound in calls:
            if id(callee) in sources and isinstance(st.node, cst.Assign) and st.node.value is call:
                new = _source_writes(st, sources[id(callee)]) - own[id(fn)]
                if new:
                    own[id(fn)] |= new
                    seeds[id(fn)] |= new
                    changed = True
            tainted = result[id(fn)]
            for pname, names in bound:
                if pname in seeds[id(callee)] or not names & tainted:
                    continue
                seeds[id(callee)].add(pname)
                changed = True
        if not changed:
            break
        result = solve()
    for ctx in project.contexts:
        ctx.analysis["val_taint"] = {q: result[id(fn)] for q, fn in ctx.functions.items()}
        ctx.analysis["val_seeds"] = {q: seeds[id(fn)] for q, fn in ctx.functions.items()}


def val_flow(ctx: ModuleContext, fn: Function) -> FlowTaint:
    """Flow-sensitive validation taint of `fn` (harness/static/reaching.py)."""
    memo = ctx.analysis.setdefault("val_flow", {})
    if fn.qualname not in memo:
        taint = val_taint(ctx)
        memo[fn.qualname] = FlowTaint(fn, ctx.analysis["val_seeds"].get(fn.qualname, set()),
                                      taint.get(fn.qualname, set()))
    return memo[fn.qualname]


# ------------------------------------------------------------------ events
# what a function does itself; the lists that include calls (train_events, score_events) are
# summaries.py's, which builds on this module
@dataclass
class TrainEvent:
    stmt: Stmt
    what: str  # "optimizer step" / "manual parameter update" / "call to f(), which trains on ..."
    code: str
    callee: Function | None = None  # for a call: the function that trains (harness/static/summaries.py)
    data: frozenset[str] = frozenset()  # for a call: the caller's names bound to what the callee trains on


@dataclass
class ScoreEvent:
    stmt: Stmt
    accumulator: str
    code: str
    value_order: int  # statement order where the accumulated value was computed (<= stmt.order)
    callee: Function | None = None  # for a call: the function that adds the scores into `accumulator`


def optimizer_names(ctx: ModuleContext, fn: Function) -> set[str]:
    return set(fn.memoised(("optimizer_names", id(ctx)), lambda: _optimizer_names(ctx, fn)))


def _module_optimizers(ctx: ModuleContext) -> set[str]:
    """Names the module body binds to an optimizer (every function's optimizer_names starts
    from them: scanned once per file, not once per function)."""
    top = ctx.functions["<module>"]
    return top.memoised("module_optimizers", lambda: _optimizer_ctors(ctx, top))


def _optimizer_ctors(ctx: ModuleContext, f: Function) -> set[str]:
    names: set[str] = set()
    for st in f.stmts:
        if isinstance(st.node, cst.Assign) and isinstance(st.node.value, cst.Call):
            if OPTIMIZER_CTOR.search(ctx.resolve(dotted(st.node.value.func))):
                names |= set(st.writes)
    return names


def _optimizer_names(ctx: ModuleContext, fn: Function) -> set[str]:
    names = set(_module_optimizers(ctx))
    if fn is not ctx.functions["<module>"]:
        names |= _optimizer_ctors(ctx, fn)
    names |= {p for p in fn.params if OPTIMIZER_NAME.fullmatch(p) or p.endswith("opt") or p.endswith("optimizer")}
    # aliases: cur_opt = opt
    for st in fn.stmts:
        if isinstance(st.node, cst.Assign) and isinstance(st.node.value, cst.Name) and st.node.value.value in names:
            names |= set(st.writes)
    return names


def trains_on(ctx: ModuleContext, fn: Function, t: TrainEvent, names: set[str]) -> bool:
    """Does training event `t` learn from data held in `names`? A call: when those names are
    bound to what the callee trains on. A step here: when a loss backpropagated in the same
    stretch (the enclosing outermost loop, else the function) was computed from them."""
    if t.callee is not None:
        return bool(t.data & names)
    outer = t.stmt.loops[0] if t.stmt.loops else None
    stretch = fn.loop_body(outer) if outer is not None else fn.stmts
    # for the validation taint itself, a backward counts only where its loss holds validation
    # data at that statement (names reused for training batches elsewhere do not)
    flow = val_flow(ctx, fn) if names == val_taint(ctx).get(fn.qualname) else None
    if backward_tainted(ctx, fn, names, stretch, flow):
        return True
    return t.what == "manual parameter update" and bool(set(t.stmt.reads) & names)


def direct_train_events(ctx: ModuleContext, fn: Function) -> list[TrainEvent]:
    # the function's own steps never change; train_events asks for them once per fixed-point
    # round of the summaries and once per rule (a new list each time: callers extend it)
    return list(fn.memoised(("direct_train_events", id(ctx)), lambda: _direct_train_events(ctx, fn)))


def _direct_train_events(ctx: ModuleContext, fn: Function) -> list[TrainEvent]:
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
    """Names holding loss values, with the statement order where each is (first) computed.
    Includes what a project function returns as a loss (`l, c, b = score_chunk(...)`, where
    `score_chunk` returns `nll.sum().item(), n, nbytes`: `l` is a loss here)."""
    memo = ctx.analysis.setdefault("loss_names", {})
    if fn.qualname in memo:
        return memo[fn.qualname]
    memo[fn.qualname] = {}  # a recursive call sees no losses while this one is being found
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
        elif isinstance(st.node, cst.Assign) and isinstance(value, cst.Call):
            for w in _returned_loss_writes(ctx, fn, st, value):
                out.setdefault(w, st.order)
    memo[fn.qualname] = out
    return out


def _returned_loss_writes(ctx: ModuleContext, fn: Function, st: Stmt, call: cst.Call) -> set[str]:
    """The names `st` binds to the loss positions of what the called project function returns."""
    project = project_of(ctx)
    for cctx, callee in project.callees(ctx, fn, call):
        hit, positions = _returned_positions(cctx, callee, set(loss_names(cctx, callee)))
        if hit:
            return _source_writes(st, positions)
    return set()


def accumulating_params(fn: Function) -> set[str]:
    """`fn`'s parameters that it accumulates into in place (`acc += ...`, `acc.add_(...)`)."""
    out: set[str] = set()
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
            out.add(target)
    return out


def scoring_helper_call(ctx: ModuleContext, fn: Function, st: Stmt, losses: set[str],
                        summaries) -> tuple[str, int] | None:
    """`_accumulate_bpb(per_tok_loss, ..., loss_sum, ...)`: a call that hands a loss and an accumulator
    to a function that adds into that accumulator. Returns (accumulator, order)."""
    if not st.calls or not st.reads & losses:  # no loss among the statement's names: no such call
        return None
    project = project_of(ctx)
    by_name = {f.name: f for f in ctx.functions.values()}
    for call in st.calls:
        arg_names = [{n.value for n in _names(a.value)} for a in call.args]
        if not any(a & losses for a in arg_names):
            continue
        for _, callee in _callees_or_same_file(project, ctx, fn, call, by_name):
            bound = project.bind(ctx, fn, call, callee)
            for pname in sorted(summaries.accumulates.get(id(callee), ())):
                value = bound.get(pname)
                if isinstance(value, cst.Name):
                    return value.value, st.order
    return None


def backward_tainted(ctx: ModuleContext, fn: Function, tainted: set[str], loop_stmts: list[Stmt],
                     flow: FlowTaint | None = None) -> bool:
    """Does this stretch of code backpropagate a loss computed from validation data? With
    `flow`, only a loss that holds it at the backward's own statement counts."""
    for st in loop_stmts:
        for call in st.calls:
            names: set[str] = set()
            if isinstance(call.func, cst.Attribute) and call.func.attr.value == "backward":
                names = {n.value for n in _names(call.func.value)} & tainted
            elif dotted(call.func).endswith("autograd.grad"):
                names = {n.value for a in call.args for n in _names(a.value)} & tainted
            if names and (flow is None or flow.any_tainted(names, st)):
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


def guards_cover(scores: list[Stmt], train: Stmt) -> bool:
    """True when the scores, taken together, run whenever the training step does: each one's
    guards beyond the step's own are a conjunction, and branches that differ only in one
    condition (`if a: score` / `else: score`, elif chains, nested ifs) merge until one needs no
    condition at all."""
    train_guards = {(g.code, g.negated) for g in train.guards}
    conjs = {frozenset((g.code, g.negated) for g in s.guards if (g.code, g.negated) not in train_guards)
             for s in scores}
    changed = True
    while changed and frozenset() not in conjs and len(conjs) < 256:
        changed = False
        for a in list(conjs):
            for b in list(conjs):
                diff = a ^ b
                if len(diff) == 2 and len({code for code, _ in diff}) == 1:
                    merged = a - diff
                    if merged not in conjs:
                        conjs.add(merged)
                        changed = True
    return frozenset() in conjs


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
    return set(fn.memoised("reported_names", lambda: _reported_names(fn)))


def _reported_names(fn: Function) -> set[str]:
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
