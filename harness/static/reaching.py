"""Flow-sensitive taint: does a name hold validation data *at a given statement*?

`dataflow.tainted_names` is flow-insensitive: a name tainted anywhere in a function is tainted
everywhere in it. Contest scripts reuse short names (`x, y`) for training batches in the
warm-up loop and for validation chunks in the TTT loop of the same `main()`; flow-insensitively the
warm-up step "trains on validation data". Here a use is tainted only when a definition that can
reach it is: the last definition that runs on every path to the use (same or enclosing `if`
branches and loops) kills the earlier ones; definitions in a loop enclosing the use reach it
around the back-edge unless such a definition kills them inside the loop first.

Seeds (parameters callers pass validation data to, names bound from validation sources) stay
tainted everywhere: only names *derived* from them are tracked flow-sensitively.
"""
from __future__ import annotations

import libcst as cst

from harness.static.engine import Function, Stmt, base_name, walk


def _rebinds(st: Stmt) -> set[str]:
    """Names `st` binds afresh (plain names: `x = ...`, `x, y = ...`, `for x in ...`, `with ... as x`),
    as opposed to in-place changes (`x[i] = ...`, `x += ...`, `x.copy_(...)`) that keep the old value."""
    node = st.node
    targets: list[cst.CSTNode] = []
    if isinstance(node, cst.Assign):
        targets = [t.target for t in node.targets]
    elif isinstance(node, cst.AnnAssign) and node.value is not None:
        targets = [node.target]
    elif isinstance(node, cst.For):
        targets = [node.target]
    out: set[str] = set()
    while targets:
        t = targets.pop()
        if isinstance(t, cst.Name):
            out.add(t.value)
        elif isinstance(t, (cst.Tuple, cst.List)):
            targets.extend(e.value for e in t.elements)
    return out


def _dominates(d: Stmt, u: Stmt) -> bool:
    """`d` runs before `u` on every path: it comes first and every `if` and loop around it
    also encloses `u` (a loop body can run zero times, a branch may be skipped)."""
    return d.order < u.order and d.guards == u.guards[:len(d.guards)] and d.loops == u.loops[:len(d.loops)]


class FlowTaint:
    """Per function: `tainted(name, stmt)` for names derived from `seeds`; `fallback` (the
    flow-insensitive answer) is used for definitions that depend on themselves around a loop."""

    def __init__(self, fn: Function, seeds: set[str], fallback: set[str]) -> None:
        self.fn, self.seeds, self.fallback = fn, set(seeds), set(fallback)
        self.defs: dict[str, list[Stmt]] = {}
        for st in fn.stmts:
            for name in set(st.writes) | _mutated_bases(st):
                self.defs.setdefault(name, []).append(st)
        self._memo: dict[tuple[str, int], bool] = {}
        self._busy: set[int] = set()

    def tainted(self, name: str, at: Stmt) -> bool:
        if name in self.seeds:
            return True
        if name not in self.fallback:
            return False
        key = (name, at.order)
        if key not in self._memo:
            self._memo[key] = any(self._def_tainted(d) for d in self._reaching(name, at))
        return self._memo[key]

    def any_tainted(self, names: set[str], at: Stmt) -> bool:
        return any(self.tainted(n, at) for n in names)

    def _reaching(self, name: str, u: Stmt) -> list[Stmt]:
        defs = [d for d in self.defs.get(name, []) if d is not u]
        before = [d for d in defs if d.order < u.order]
        killers = [d for d in before if name in _rebinds(d) and _dominates(d, u)]
        start = max((d.order for d in killers), default=-1)
        out = [d for d in before if d.order >= start]
        # around the back-edge of each loop enclosing `u`, unless a killer inside that loop runs first
        for loop_id in u.loops:
            loop = self.fn.loops[loop_id]
            if start >= loop.start:
                continue
            out += [d for d in defs if d.order > u.order and d.order < loop.end]
        if start < 0:
            out.append(None)  # the function's entry: only seeds are tainted there (checked above)
        return [d for d in out if d is not None]

    def _def_tainted(self, d: Stmt) -> bool:
        if d.order in self._busy:
            return bool(d.writes & self.fallback)  # a cycle around a loop: the flow-insensitive answer
        self._busy.add(d.order)
        try:
            return self.any_tainted(set(d.reads), d) or self._mutated_from_taint(d)
        finally:
            self._busy.discard(d.order)

    def _mutated_from_taint(self, d: Stmt) -> bool:
        """`buf.copy_(tokens)` / `buf.append(tok)`: the call's arguments taint its base."""
        return any(self.tainted(n, d) for call in _mutations(d) for a in call.args for n in _arg_names(a.value))


MUTATORS = ("copy_", "append", "extend", "index_put_", "index_copy_", "scatter_", "put_")


def _mutations(st: Stmt) -> list[cst.Call]:
    return [c for c in st.calls if isinstance(c.func, cst.Attribute) and c.func.attr.value in MUTATORS]


def _mutated_bases(st: Stmt) -> set[str]:
    return {b for c in _mutations(st) if (b := base_name(c.func.value))}


def _arg_names(node: cst.CSTNode) -> set[str]:
    return {n.value for n in walk(node) if isinstance(n, cst.Name)}
