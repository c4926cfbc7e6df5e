"""Facts about hashed count tables, for the rules that judge eval-time n-gram caches: which names
are hashed keys, which tables are read at which keys, and which function of the file a call runs
(a cache's own methods included). Kept apart from the rules so that the shapes they report stay
short; no rule is named here."""
from __future__ import annotations

import libcst as cst

from harness.static.engine import ModuleContext, dotted, looks_hashed, names_in, walk
from harness.static.project import project_of


def callees(ctx: ModuleContext, fn, call: cst.Call) -> list:
    """Functions of this file a call may run: what the project resolves (`helper(...)`,
    `self._hashes(...)`, `cache.update(...)` after `cache = NgramCache(...)`), else, for an
    object it cannot trace (a parameter, a factory's result), every class's method of that name:
    over-inclusive on purpose, a cache's lookup is worth reading wherever it may be."""
    hits = [f for c, f in project_of(ctx).callees(ctx, fn, call) if c is ctx]
    if hits:
        return hits
    if isinstance(call.func, cst.Attribute):
        attr = call.func.attr.value
        return [f for q, f in ctx.functions.items() if q.endswith("." + attr) and q.count(".") == 1
                and not q.split(".")[0][:1].islower()]
    return []


def callee(ctx: ModuleContext, fn, call: cst.Call):
    found = callees(ctx, fn, call)
    return found[0] if len(found) == 1 else None


class Defs:
    """Flow-insensitive definitions of one function: what each name is computed from, which names
    are hashed keys, and which tables are read at which keys."""

    def __init__(self, ctx: ModuleContext, fn, follow_helpers: bool = True) -> None:
        self.ctx = ctx
        self.fn = fn
        self.follow_helpers = follow_helpers
        self.defs: dict[str, list] = {}
        self.value_reads: dict[int, set[str]] = {}  # what a definition computes from (not its targets)
        for st in fn.stmts:
            node = st.node
            if not st.writes:
                continue
            if isinstance(node, (cst.Assign, cst.AnnAssign)) and node.value is not None:
                reads = self.names(node.value)
            elif isinstance(node, cst.AugAssign):
                reads = self.names(node.value) | self.names(node.target)
            elif isinstance(node, cst.For):
                reads = self.names(node.iter)
            else:
                continue
            self.value_reads[id(st)] = reads
            for w in st.writes:
                self.defs.setdefault(w, []).append(st)
        self._anc: dict[str, frozenset] = {}
        self._hashed: dict[str, object] = {}
        self._values: dict[int, frozenset] = {}  # id(node) -> value_names: the tree outlives this object
        self._table_reads: dict[int, tuple] = {}  # id(node) -> _reads: each ratio walks the same definitions

    @classmethod
    def of(cls, ctx: ModuleContext, fn, follow_helpers: bool = True) -> "Defs":
        """The facts of `fn`, built once per function and file (the check asks again for every
        ratio and every call into a helper)."""
        return fn.memoised(("hashed-count defs", id(ctx), follow_helpers), lambda: cls(ctx, fn, follow_helpers))

    @staticmethod
    def names(node) -> set[str]:
        return {n.value for n in names_in(node)}

    def value_names(self, node) -> set[str]:
        """Names a value is computed from, less those only used to select its elements: in
        `s_ctx[seen]` the mask `seen` picks which counts, it is not where they come from."""
        hit = self._values.get(id(node))
        if hit is None:
            hit = self._values[id(node)] = frozenset(self._value_names(node))
        return set(hit)

    @staticmethod
    def _value_names(node) -> set[str]:
        index: set[int] = set()
        for sub in walk(node):
            t = type(sub)
            if t is cst.Subscript:
                index.update(id(n) for el in sub.slice for n in names_in(el.slice))
            elif t is cst.Call and len(sub.args) == 3 and dotted(sub.func).split(".")[-1] == "where":
                index.update(id(n) for n in names_in(sub.args[0].value))  # the condition of where(cond, a, b)
        return {n.value for n in names_in(node) if id(n) not in index}

    def ancestors(self, name: str) -> frozenset:
        """Names `name` is computed from, transitively."""
        found = self._anc.get(name)
        if found is not None:
            return found
        self._anc[name] = frozenset()  # cycles (`h ^= ...`) stop here
        out: set[str] = set()
        todo = [name]
        while todo:
            n = todo.pop()
            for st in self.defs.get(n, ()):
                for r in self.value_reads[id(st)]:
                    if r not in out and r != name:
                        out.add(r)
                        todo.append(r)
        self._anc[name] = frozenset(out)
        return self._anc[name]

    def hashed_def(self, name: str):
        """The statement that hashes `name` (XOR, modulo, a large multiplier), or that binds it from
        a helper of this module whose returned values are hashed (`ck, fk = hash_keys(...)`, PR #797)."""
        if name not in self._hashed:
            self._hashed[name] = self._hashed_def(name)
        return self._hashed[name]

    def _hashed_def(self, name: str):
        for st in self.defs.get(name, ()):
            node = st.node
            if isinstance(node, cst.AugAssign) and isinstance(node.operator, (cst.BitXorAssign, cst.ModuloAssign)):
                return st
            value = getattr(node, "value", None)
            if value is not None and (looks_hashed(value) or self._helper_returns_hash(value)):
                return st
        return None

    def _helper_returns_hash(self, value) -> bool:
        """`value` calls a function of this module (one level deep) that returns hashed keys: a
        plain call, a method of the same class (`self._hashes(...)`), or either with a conversion
        after it (`hash_ctx(...).astype(np.int64)`)."""
        if not self.follow_helpers or not isinstance(value, cst.Call):
            return False
        for call in (c for c in walk(value) if isinstance(c, cst.Call)):
            helper = callee(self.ctx, self.fn, call)
            if helper is None or helper is self.fn:
                continue
            inner = Defs.of(self.ctx, helper, follow_helpers=False)
            for st in helper.stmts:
                ret = st.node.value if isinstance(st.node, cst.Return) else None
                if ret is not None and (looks_hashed(ret) or any(inner.keyish(n) for n in self.names(ret))):
                    return True
        return False

    def same_binding(self, a: str, b: str) -> bool:
        """`a` and `b` are bound by one hashed statement (`ctx_key, pair_key = hash_keys(...)`)."""
        return any(st in self.defs.get(b, ()) and self.hashed_def(a) is st for st in self.defs.get(a, ()))

    def key_def(self, name: str):
        """The statement that hashes `name`, or the one that computes it from a hash."""
        return self.hashed_def(name) or next(
            st for st in self.defs.get(name, ()) if any(self.hashed_def(r) is not None for r in self.value_reads[id(st)]))

    def keyish(self, name: str) -> bool:
        """A hashed key, or a value computed straight from one (`ctx_key = (ctx_hash & mask).astype(...)`)."""
        return self.hashed_def(name) is not None or any(
            self.hashed_def(r) is not None for st in self.defs.get(name, ()) for r in self.value_reads[id(st)]
            if r != name)

    def _reads(self, value) -> tuple:
        """(table, key) of the table reads in an expression: `t[key]`, `t[i][key]`, `t.get(key)`."""
        hit = self._table_reads.get(id(value))
        if hit is None:
            hit = self._table_reads[id(value)] = tuple(self._walk_reads(value))
        return hit

    def _walk_reads(self, value) -> list:
        out = []
        for sub in walk(value):  # type identity, not isinstance: see harness/static/engine.py
            t = type(sub)
            if t is cst.Subscript:
                table = dotted(sub.value)
                keys = {k for el in sub.slice for k in self.names(el.slice)}
            elif t is cst.Call and type(sub.func) is cst.Attribute \
                    and sub.func.attr.value == "get" and sub.args:
                table = dotted(sub.func.value)
                keys = self.names(sub.args[0].value)
            else:
                continue
            if table:
                out.extend((table, k) for k in keys)
        return out

    def lookups(self, expr, st, hops: int = 3) -> list:
        """(table, key, statement) for the table reads an expression's value comes from: in the
        expression itself, then back through the definitions of the names it reads (a few steps),
        stopping at a read keyed by a hash (the value read there is the count, not the key)."""
        out = [(t, k, st) for t, k in self._reads(expr)]
        frontier, seen = self.value_names(expr), set()
        for _ in range(hops):
            nxt: set[str] = set()
            for n in frontier - seen:
                seen.add(n)
                for d in self.defs.get(n, ()):
                    value = getattr(d.node, "value", None)
                    if value is None:
                        continue
                    reads = self._reads(value)
                    out.extend((t, k, d) for t, k in reads)
                    if not any(self.keyish(k) for _, k in reads):
                        nxt |= self.value_names(value)
            frontier = nxt
        return out

    def _origin(self, expr):
        """(statement, position, call) when `expr`'s value comes, a few steps back, from one
        element of a tuple bound from a call: `hits, totals, order = cache.best(...)`."""
        frontier, seen = self.value_names(expr), set()
        for _ in range(4):
            nxt: set[str] = set()
            for n in frontier - seen:
                seen.add(n)
                for d in self.defs.get(n, ()):
                    node = d.node
                    if isinstance(node, cst.Assign) and len(node.targets) == 1 and isinstance(node.value, cst.Call) \
                            and isinstance(node.targets[0].target, cst.Tuple):
                        names = [dotted(e.value) for e in node.targets[0].target.elements]
                        if n in names:
                            return d, names.index(n), node.value
                    value = getattr(node, "value", None)
                    if value is not None:
                        nxt |= self.value_names(value)
            frontier = nxt
        return None

    def returned_pair(self, div):
        """(callee facts, callee, pair) for a ratio of two values one call returns, when the callee
        reads them as a hashed (context, token) count and its context's count (PR #769's shape)."""
        a, b = self._origin(div.left), self._origin(div.right)
        if not a or not b or a[0] is not b[0] or a[1] == b[1]:
            return None
        for helper in callees(self.ctx, self.fn, a[2]):
            inner = Defs.of(self.ctx, helper)
            for r in helper.stmts:
                if not (isinstance(r.node, cst.Return) and isinstance(r.node.value, cst.Tuple)):
                    continue
                els = r.node.value.elements
                if max(a[1], b[1]) >= len(els):
                    continue
                num, den = inner.lookups(els[a[1]].value, r), inner.lookups(els[b[1]].value, r)
                pair = inner.extension(num, den) if num and den else None
                if pair is not None:
                    return inner, helper, pair
        return None

    def extension(self, num: list, den: list):
        """A numerator read at a hashed key built from a denominator's key (or from the hash that
        key comes from), in another table, the denominator not computed from that numerator read."""
        den_reads = {(t, k) for t, k, _ in den}
        for nt, nk, nst in num:
            if (nt, nk) in den_reads or not self.keyish(nk):
                continue
            n_anc = self.ancestors(nk)

            def rank(item):  # a hashed context key first, then a key read from a table, then the rest
                dk = item[1]
                return (not self.keyish(dk), not any(self._reads(d.node.value) for d in self.defs.get(dk, ())
                                                     if getattr(d.node, "value", None) is not None))
            for dt, dk, dst in sorted(den, key=rank):
                if dt == nt or dk == nk:
                    continue
                shared = dk in n_anc or self.same_binding(nk, dk) or (self.keyish(dk) and any(
                    self.hashed_def(a) is not None for a in (self.ancestors(dk) | {dk}) & n_anc))
                if shared:
                    return (nt, nk, nst), (dt, dk, dst)
        return None
