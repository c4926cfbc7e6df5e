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
    """Per function: `tainted(name, stmt)` for names derived from `seeds`. Only names in
    `fallback` (the flow-insensitive answer) can be tainted at all. Which definitions hold
    validation data is the least fixpoint over the function: a definition is tainted when a
    name it reads is, at that definition; a loop-carried state (`states = model(x, states)`)
    is tainted only when something entering the cycle is (PR #181: the training loop's
    recurrent state shares its name with the TTT's)."""

    def __init__(self, fn: Function, seeds: set[str], fallback: set[str]) -> None:
        self.fn, self.seeds, self.fallback = fn, set(seeds), set(fallback)
        self.defs: dict[str, list[Stmt]] = {}
        for st in fn.stmts:
            for name in set(st.writes) | _mutated_bases(st):
                self.defs.setdefault(name, []).append(st)
        self._reach: dict[tuple[str, int], list[Stmt]] = {}
        self._tainted_defs: set[int] | None = None  # statement orders, solved on first use

    def tainted(self, name: str, at: Stmt) -> bool:
        if name in self.seeds:
            return True
        if name not in self.fallback:
            return False
        if self._tainted_defs is None:
            self._tainted_defs = self._solve()
        return any(d.order in self._tainted_defs for d in self._reaching_memo(name, at))

    def any_tainted(self, names: set[str], at: Stmt) -> bool:
        return any(self.tainted(n, at) for n in names)

    def _solve(self) -> set[int]:
        """Definitions that hold validation data: start from none, add every definition that
        reads a seed or a name a tainted definition reaches, until nothing changes."""
        found: set[int] = set()
        # only definitions of names that can be tainted at all matter (`tainted` answers the rest)
        candidates = sorted({d.order: d for name, ds in self.defs.items() if name in self.fallback
                             for d in ds}.values(), key=lambda d: d.order)
        changed = True
        while changed:
            changed = False
            for d in candidates:
                if d.order not in found and self._reads_taint(d, found):
                    found.add(d.order)
                    changed = True
        return found

    def _reads_taint(self, d: Stmt, found: set[int]) -> bool:
        def held(name: str) -> bool:
            if name in self.seeds:
                return True
            return name in self.fallback and any(r.order in found for r in self._reaching_memo(name, d))

        if any(held(n) for n in d.reads):
            return True
        # `buf.copy_(tokens)` / `buf.append(tok)`: the call's arguments taint its base
        return any(held(n) for call in _mutations(d) for a in call.args for n in _arg_names(a.value))

    def _reaching_memo(self, name: str, u: Stmt) -> list[Stmt]:
        key = (name, u.order)
        hit = self._reach.get(key)
        if hit is None:
            hit = self._reach[key] = self._reaching(name, u)
        return hit

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


MUTATORS = ("copy_", "append", "extend", "index_put_", "index_copy_", "scatter_", "put_")


def _mutations(st: Stmt) -> list[cst.Call]:
    return [c for c in st.calls if isinstance(c.func, cst.Attribute) and c.func.attr.value in MUTATORS]


def _mutated_bases(st: Stmt) -> set[str]:
    return {b for c in _mutations(st) if (b := base_name(c.func.value))}


def _arg_names(node: cst.CSTNode) -> set[str]:
    return {n.value for n in walk(node) if isinstance(n, cst.Name)}
