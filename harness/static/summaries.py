"""What a function does with what it is handed, stated once so that its callers can use it.

Real evals rarely step the optimizer or add to the loss sum in the loop that decides the order:
`for k: score_chunk(model, tokens, windows, totals); train_chunk(model, opt, tokens, ...)`. The
order is the caller's, the effects are the callees'. Each function gets a summary:

- accumulates: the parameters it adds into in place (`totals += ...`), directly or by handing
  them to a function that does;
- scores_into: for such an accumulator parameter, the parameters whose data it scores there
  (`score_chunk` scores `tokens` into `totals`);
- trains: the parameters whose data it trains on without recording a score of that data itself
  (`train_chunk` trains on `tokens`). A function that both trains on and scores the same data is
  not summarised as a trainer: the order inside it is judged where it stands.

A call then counts, in the caller, as the training step or the score its callee performs, on the
caller's arguments. Summaries are about parameters, not about validation data: whether the
caller's argument carries validation data is the caller's own taint (dataflow.val_taint).
Resolution of calls across files: harness/static/project.py.

The event lists that include such calls, `train_events` and `score_events`, live here too (the
steps and scores a function makes itself are dataflow's): dataflow never imports this module.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import libcst as cst

from harness.static import dataflow as D
from harness.static.engine import Function, ModuleContext, Stmt, base_name, names_in, walk
from harness.static.project import SELF_NAMES, project_of

ROUNDS = 8  # call chains deeper than this are not followed (real scripts nest two or three)


@dataclass
class Summaries:
    accumulates: dict[int, set[str]] = field(default_factory=dict)  # id(fn) -> accumulator parameters
    scores_into: dict[int, dict[str, set[str]]] = field(default_factory=dict)  # id(fn) -> acc -> scored params
    trains: dict[int, dict[str, D.TrainEvent]] = field(default_factory=dict)  # id(fn) -> param -> first step


def summaries_of(ctx: ModuleContext) -> Summaries:
    project = project_of(ctx)
    found = project.analysis.get("summaries")
    if found is None:
        found = project.analysis["summaries"] = _solve(project)
    return found


def _params(fn: Function) -> list[str]:
    return [p for p in fn.params if p not in SELF_NAMES]


def _data_params(fn: Function) -> list[str]:
    """Parameters that hold data, as opposed to a configuration object read only through its
    fields (`h.train_seq_len`) or a model that is only called (`model(x, y)`, `model.train()`):
    a loss is computed "from" those too, but training on them is not training on their data."""
    # two walks of the whole body, asked once per round of the summaries' fixed point: memoised
    return list(fn.memoised("data_params", lambda: _uses_of_params(fn)))


def _uses_of_params(fn: Function) -> list[str]:
    uses: dict[str, set[str]] = {p: set() for p in _params(fn)}
    if fn.node is None:
        return list(uses)
    callee_ids: set[int] = set()
    attr_ids: dict[int, bool] = {}  # id(Name) -> the attribute is called (a method)
    Call, Name, Attribute = cst.Call, cst.Name, cst.Attribute  # by type identity: see engine._Name
    for n in walk(fn.node.body):
        t = type(n)
        if t is Call:
            ft = type(n.func)
            if ft is Name:
                callee_ids.add(id(n.func))
            elif ft is Attribute and type(n.func.value) is Name:
                attr_ids[id(n.func.value)] = True
        elif t is Attribute and type(n.value) is Name:
            attr_ids.setdefault(id(n.value), False)
    for n in names_in(fn.node.body):
        if n.value in uses:
            if id(n) in callee_ids:
                uses[n.value].add("called")
            elif id(n) in attr_ids:
                uses[n.value].add("method" if attr_ids[id(n)] else "field")
            else:
                uses[n.value].add("value")
    return [p for p, kinds in uses.items() if "called" not in kinds and kinds - {"field"}]


def _names(node: cst.CSTNode | None) -> set[str]:
    return {n.value for n in D._names(node)} if node is not None else set()


def _until_stable(fns: list, step: Callable[[Any, Any], bool]) -> None:
    """Apply `step(ctx, fn)` (True: it added something) to every function, round after round,
    until a round adds nothing or ROUNDS rounds ran."""
    for _ in range(ROUNDS):
        changed = False
        for ctx, fn in fns:
            if step(ctx, fn):
                changed = True
        if not changed:
            break


def _solve(project) -> Summaries:
    summ = Summaries()
    # an empty placeholder while solving: events computed below must not ask for the summaries
    # being built (train_events/score_events fall back to summaries_of when given None)
    project.analysis["summaries"] = summ
    fns = [(ctx, fn) for ctx, fn in project.functions() if fn.qualname != "<module>" and _params(fn)]
    for _, fn in fns:
        summ.accumulates[id(fn)] = D.accumulating_params(fn)
    # 1. accumulators handed on: `score_document_starts(..., totals)` -> score_chunk(..., totals)
    def hand_on(ctx, fn) -> bool:
        changed = False
        params = set(_params(fn))
        for st in fn.stmts:
            for site in project.call_sites_in(ctx, fn, st):
                for pname in summ.accumulates.get(id(site.callee), ()):
                    value = site.bound.get(pname)
                    if isinstance(value, cst.Name) and value.value in params \
                            and value.value not in summ.accumulates[id(fn)]:
                        summ.accumulates[id(fn)].add(value.value)
                        changed = True
        return changed

    # 2. what each accumulator receives the scores of
    def scores_into(ctx, fn) -> bool:
        acc = summ.accumulates[id(fn)]
        if not acc:
            return False
        changed = False
        into = summ.scores_into.setdefault(id(fn), {})
        for p in _params(fn):
            derived = D.tainted_names(ctx, fn, {p})
            for s in score_events(ctx, fn, derived, summ):
                if s.accumulator in acc and p not in into.setdefault(s.accumulator, set()):
                    into[s.accumulator].add(p)
                    changed = True
        return changed

    # 3. what each function trains on without scoring it (scores_into is final by now)
    def trains_unscored(ctx, fn) -> bool:
        trains = train_events(ctx, fn, summ)
        if not trains:
            return False
        changed = False
        reported = D.reported_names(ctx, fn) | summ.accumulates[id(fn)]
        mine = summ.trains.setdefault(id(fn), {})
        for p in _data_params(fn):
            if p in mine:
                continue
            derived = D.tainted_names(ctx, fn, {p})
            on = [t for t in trains if D.trains_on(ctx, fn, t, derived)]
            if not on:
                continue
            if any(s.accumulator in reported for s in score_events(ctx, fn, derived, summ)):
                continue  # it scores that data too: judged inside, not handed to callers
            mine[p] = on[0]
            changed = True
        return changed

    for step in (hand_on, scores_into, trains_unscored):
        _until_stable(fns, step)
    return summ


def call_train_events(ctx: ModuleContext, fn: Function, summ: Summaries) -> list[D.TrainEvent]:
    """Calls in `fn` of functions that train on what they are handed."""
    project = project_of(ctx)
    out = []
    for st in fn.stmts:
        if not st.calls:
            continue
        for site in project.call_sites_in(ctx, fn, st):
            trained = summ.trains.get(id(site.callee))
            if not trained:
                continue
            params = [p for p in trained if p in site.bound]
            data: set[str] = set()
            for p in params:
                data |= _names(site.bound[p])
            if not data:
                continue
            first = trained[params[0]]
            out.append(D.TrainEvent(
                st, f"call to {site.callee.name}(), which trains on its `{params[0]}` argument "
                    f"(line {first.stmt.line} of {site.callee_ctx.path})",
                ctx.code(site.call)[:160], callee=site.callee, data=frozenset(data)))
    return out


def call_score_events(ctx: ModuleContext, fn: Function, st: Stmt, tainted: set[str],
                      summ: Summaries) -> list[D.ScoreEvent]:
    """Calls in statement `st` of functions that score data from `tainted` into an accumulator
    the caller hands them."""
    out = []
    for site in project_of(ctx).call_sites_in(ctx, fn, st):
        for acc_param, scored in summ.scores_into.get(id(site.callee), {}).items():
            acc = base_name(site.bound.get(acc_param)) if site.bound.get(acc_param) is not None else None
            if acc is None:
                continue
            names: set[str] = set()
            for p in scored:
                names |= _names(site.bound.get(p))
            if names & tainted:
                out.append(D.ScoreEvent(st, acc, ctx.code(site.call)[:160], st.order, callee=site.callee))
    return out


def trainer_of(ctx: ModuleContext, fn: Function) -> dict[str, D.TrainEvent]:
    """The parameters `fn` trains on without scoring them (empty when none)."""
    return summaries_of(ctx).trains.get(id(fn), {})


def train_events(ctx: ModuleContext, fn: Function, summaries=None) -> list[D.TrainEvent]:
    """Training steps in `fn`, in statement order: optimizer steps and manual parameter updates
    here, and calls of functions that train on what they are handed (their summaries)."""
    events = D.direct_train_events(ctx, fn)
    events += call_train_events(ctx, fn, summaries if summaries is not None else summaries_of(ctx))
    events.sort(key=lambda t: t.stmt.order)
    return events


def score_events(ctx: ModuleContext, fn: Function, tainted: set[str], summaries=None) -> list[D.ScoreEvent]:
    """Validation losses accumulated into a running score: `acc += f(loss)`, `acc.append(...)`,
    `acc.add_(...)`, `acc = acc + ...`, and calls of functions that add the scores of the data
    they are handed into an accumulator they are handed (`score_chunk(model, tokens, totals)`)."""
    summaries = summaries if summaries is not None else summaries_of(ctx)
    losses = D.loss_names(ctx, fn)
    events = []
    for st in fn.stmts:
        node = st.node
        value_names: set[str] = set()
        acc = None
        if isinstance(node, cst.AugAssign) and isinstance(node.operator, cst.AddAssign):
            acc = base_name(node.target)
            value_names = {n.value for n in D._names(node.value)}
        elif isinstance(node, cst.Assign) and isinstance(node.value, cst.BinaryOperation) and \
                isinstance(node.value.operator, cst.Add):
            acc_names = {base_name(t.target) for t in node.targets}
            left = base_name(node.value.left)
            if left in acc_names:
                acc = left
                value_names = {n.value for n in D._names(node.value.right)}
        elif isinstance(node, cst.Expr) and isinstance(node.value, cst.Call) and \
                isinstance(node.value.func, cst.Attribute) and node.value.func.attr.value in ("append", "add_", "extend"):
            acc = base_name(node.value.func.value)
            value_names = {n.value for n in D._names(node.value)} - {acc}
        if acc is None:
            helper = D.scoring_helper_call(ctx, fn, st, set(losses), summaries)
            if helper is not None:
                events.append(D.ScoreEvent(st, helper[0], ctx.code(node)[:160], helper[1]))
            else:
                events += call_score_events(ctx, fn, st, tainted, summaries)
            continue
        if acc in losses and not D.LOSS_NAME.search(acc):
            continue
        scored = value_names & set(losses)
        if not scored or D.LOSS_NAME.search(acc or "") is None and not re.search(r"sum|total|nll|bits|acc", acc, re.I):
            continue
        if not (scored & tainted or value_names & tainted):
            continue
        events.append(D.ScoreEvent(st, acc, ctx.code(node), min(losses[n] for n in scored)))
    return events
