"""A submission's Python files taken together: which function a call reaches.

Contest scripts and the reference model keep their eval loops in one file and the helpers that
train or score in another (`from .ttt import train_chunk`, `broken.train_on_val(...)`), pick the
eval through a table of functions (`{"a": eval_a}.get(mode, eval_b)(*args)`), and call layers
through attributes (`self.bigram(x, y)` -> `BigramHash.forward`). The dataflow follows values
through those calls only when it knows the callee, so the resolution lives here, apart from any
rule. Resolution is by name and import, never by running anything: a callee it cannot name is
left out (the dynamic layer sees those).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from harness.static.engine import Function, ModuleContext, Stmt, walk

SELF_NAMES = ("self", "cls")


@dataclass
class CallSite:
    """One call of a project function: where it is and how its arguments bind."""

    ctx: ModuleContext  # the caller's file
    fn: Function  # the caller
    stmt: Stmt
    call: cst.Call
    callee_ctx: ModuleContext
    callee: Function
    bound: dict[str, cst.BaseExpression]  # callee parameter -> argument expression


@dataclass
class Project:
    contexts: list[ModuleContext]
    analysis: dict = field(default_factory=dict)  # project-wide results shared between rules

    def __post_init__(self) -> None:
        self.owner: dict[int, ModuleContext] = {}  # id(Function) -> its file
        self._modules: dict[str, ModuleContext] = {}
        for ctx in self.contexts:
            ctx.project = self
            for fn in ctx.functions.values():
                self.owner[id(fn)] = ctx
            parts = ctx.path[:-3].split("/") if ctx.path.endswith(".py") else ctx.path.split("/")
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            # every dotted suffix names the module: "reference_model.ttt", "ttt"
            for i in range(len(parts)):
                self._modules.setdefault(".".join(parts[i:]), ctx)
        self._sites: dict[int, list[CallSite]] | None = None
        self._resolved: dict[tuple[int, int], list[tuple[ModuleContext, Function]]] = {}
        self._assigns: dict[int, dict[str, list[Stmt]]] = {}
        self._stmt_sites: dict[int, list[CallSite]] = {}
        self._orders: dict[int, dict[int, int]] = {}
        # the order of the statement whose call is being resolved: `_aliases` takes the nearest
        # assignment before it (set by `callees`, read while that one resolution runs)
        self._at = 0

    # ------------------------------------------------------------------ functions
    def functions(self):
        """Every (file, function) pair, "<module>" bodies included."""
        for ctx in self.contexts:
            for fn in ctx.functions.values():
                yield ctx, fn

    def module(self, name: str) -> ModuleContext | None:
        """The project file a dotted module name (from an import) refers to."""
        name = name.lstrip(".")
        while name:
            hit = self._modules.get(name)
            if hit is not None:
                return hit
            if "." not in name:
                return None
            name = name.split(".", 1)[1]  # `reference_model.ttt` also matches a folder without the package
        return None

    def resolve_import(self, ctx: ModuleContext, local: str) -> tuple[ModuleContext, str] | None:
        """`train_chunk` imported `from .ttt import train_chunk` -> (ttt's file, "train_chunk")."""
        full = ctx.imports.get(local)
        if not full:
            return None
        if "." in full:
            mod, _, name = full.rpartition(".")
            target = self.module(mod)
            if target is not None and target is not ctx:
                return target, name
        target = self.module(full)
        if target is not None and target is not ctx:
            return target, ""  # the name is a module
        return None

    # ------------------------------------------------------------------ call resolution
    def callees(self, ctx: ModuleContext, fn: Function, call: cst.Call) -> list[tuple[ModuleContext, Function]]:
        """The project functions a call may reach (several for a dispatch table)."""
        key = (id(fn), id(call))
        hit = self._resolved.get(key)
        if hit is None:
            self._at = self._call_order(fn).get(id(call), len(fn.stmts))
            hit = self._resolved[key] = self._callees(ctx, fn, call.func, depth=0)
        return hit

    def _call_order(self, fn: Function) -> dict[int, int]:
        """id(call) -> order of the statement making it, indexed once per function."""
        index = self._orders.get(id(fn))
        if index is None:
            index = self._orders[id(fn)] = {id(c): st.order for st in fn.stmts for c in st.calls}
        return index

    def _callees(self, ctx, fn, func, depth: int) -> list[tuple[ModuleContext, Function]]:
        if isinstance(func, cst.Name):
            return self._by_name(ctx, fn, func.value, depth)
        if isinstance(func, cst.Attribute):
            return self._by_attribute(ctx, fn, func, depth)
        return []

    def _by_name(self, ctx, fn, name: str, depth: int) -> list[tuple[ModuleContext, Function]]:
        # a def nested in this function or in one that encloses it (closures), then the module's own
        prefix = fn.qualname if fn.qualname != "<module>" else ""
        while True:
            q = f"{prefix}.{name}" if prefix else name
            found = ctx.functions.get(q)
            if found is not None and q != fn.qualname:
                return [(ctx, found)]
            if not prefix:
                break
            prefix = prefix.rpartition(".")[0]
        imported = self.resolve_import(ctx, name)
        if imported is not None:
            target, fname = imported
            found = target.functions.get(fname) if fname else None
            if found is not None:
                return [(target, found)]
            cls = self._class_call(target, fname)
            return cls
        cls = self._class_call(ctx, name)
        if cls:
            return cls
        if depth < 2:  # `ttt = table.get(mode, default)`: every function the assignment names
            return self._aliases(ctx, fn, name, depth + 1)
        return []

    def _by_attribute(self, ctx, fn, func: cst.Attribute, depth: int) -> list[tuple[ModuleContext, Function]]:
        attr = func.attr.value
        base = func.value
        if isinstance(base, cst.Attribute):  # `self.cache.update(...)`: the class `self.cache` holds
            return self._methods_of(self._constructed(ctx, fn, base), attr)
        if not isinstance(base, cst.Name):
            return []  # `self.layer(...)`: see instance_callees
        if base.value in SELF_NAMES:
            cls = self._class_of(fn)
            method = ctx.functions.get(f"{cls}.{attr}") if cls else None
            return [(ctx, method)] if method is not None else []
        imported = self.resolve_import(ctx, base.value)
        if imported is not None and not imported[1]:  # `broken.train_on_val(...)`
            target = imported[0]
            found = target.functions.get(attr)
            return [(target, found)] if found is not None else self._class_call(target, attr)
        # `cache = NgramCache(...)`, then `cache.update(...)`: the method of the class it holds
        return self._methods_of(self._constructed(ctx, fn, base), attr)

    def _constructed(self, ctx, fn, obj: cst.BaseExpression) -> list[tuple[ModuleContext, str]]:
        """(file, class name) of the project classes `obj` was built from: `obj = Cls(...)`, the
        nearest such assignment before the call in `fn`, else at module level; for `self.x`, the
        `self.x = Cls(...)` assignments in the methods of `fn`'s class."""
        if isinstance(obj, cst.Name):
            assigns: list[Stmt] = []
            for scope in (fn, ctx.functions["<module>"]):
                found = self._assignments(scope).get(obj.value, [])
                if scope is fn:
                    found = [st for st in found if st.order < self._at][-1:] or found
                if found:
                    assigns = found
                    break
            values = [st.node.value for st in assigns]
        elif (isinstance(obj, cst.Attribute) and isinstance(obj.value, cst.Name)
              and obj.value.value in SELF_NAMES and self._class_of(fn)):
            values = [st.node.value for st in _self_assignments(ctx, self._class_of(fn), obj.attr.value)]
        else:
            return []
        out = []
        for value in values:
            if not isinstance(value, cst.Call):
                continue
            if isinstance(value.func, cst.Name):
                imported = self.resolve_import(ctx, value.func.value)
                out.append(imported if imported is not None and imported[1] else (ctx, value.func.value))
            elif isinstance(value.func, cst.Attribute) and isinstance(value.func.value, cst.Name):
                imported = self.resolve_import(ctx, value.func.value.value)  # `ngram.Cache(...)`
                if imported is not None and not imported[1]:
                    out.append((imported[0], value.func.attr.value))
        return out

    @staticmethod
    def _methods_of(classes: list[tuple[ModuleContext, str]], attr: str) -> list[tuple[ModuleContext, Function]]:
        out = []
        for cctx, cls in classes:
            top = cctx.functions["<module>"].stmts
            if not any(st.kind == "class" and cls in st.writes for st in top):
                continue  # a factory function's nested def is not a method of what it returns
            method = cctx.functions.get(f"{cls}.{attr}")
            if method is not None and all(m is not method for _, m in out):
                out.append((cctx, method))
        return out

    def instance_callees(self, ctx, fn, func: cst.Attribute) -> list[tuple[ModuleContext, Function]]:
        """`self.bigram(...)` where the class sets `self.bigram = BigramHash(...)`: the layer's
        `forward` (or `__call__`)."""
        if not (isinstance(func.value, cst.Name) and func.value.value in SELF_NAMES):
            return []
        cls = self._class_of(fn)
        if not cls:
            return []
        out = []
        for st in _self_assignments(ctx, cls, func.attr.value):
            for call in st.calls:
                if isinstance(call.func, cst.Name):
                    name = call.func.value
                    target = (ctx, name)
                    imported = self.resolve_import(ctx, name)
                    if imported is not None:
                        target = imported
                    tctx, tname = target
                    for meth in ("forward", "__call__"):
                        found = tctx.functions.get(f"{tname}.{meth}")
                        if found is not None:
                            out.append((tctx, found))
                            break
        return out

    @staticmethod
    def _class_of(fn: Function) -> str | None:
        """The class of a method ("GPT" for "GPT.logits"); None for a module-level function."""
        if "." not in fn.qualname:
            return None
        head = fn.qualname.rpartition(".")[0]
        return head or None

    @staticmethod
    def _class_call(ctx: ModuleContext, name: str) -> list:
        """Calling a class runs its `__init__` (arguments bind there)."""
        if not name:
            return []
        init = ctx.functions.get(f"{name}.__init__")
        return [(ctx, init)] if init is not None else []

    def _aliases(self, ctx, fn, name: str, depth: int) -> list[tuple[ModuleContext, Function]]:
        """Functions a local name may hold: `f = a if c else b`, `f = {"x": a}.get(k, b)`,
        `f = module.a`: every function the assignments of that name mention as a value."""
        out: list[tuple[ModuleContext, Function]] = []
        seen: set[int] = set()
        for scope in (fn, ctx.functions["<module>"]):
            assigns = self._assignments(scope).get(name, ())
            if scope is fn:
                # the nearest assignment before the call (each branch of an if/else assigns
                # and calls in turn); all of them when the call comes first (a loop)
                before = [st for st in assigns if st.order < self._at]
                assigns = before[-1:] or assigns
            for st in assigns:
                for ref in _references(st.node.value):
                    for hit in self._callees(ctx, fn, ref, depth):
                        if id(hit[1]) not in seen:
                            seen.add(id(hit[1]))
                            out.append(hit)
            if out:
                break
        return out

    def _assignments(self, fn: Function) -> dict[str, list[Stmt]]:
        """name -> the plain assignments (`name = ...`) in `fn`, indexed once per function."""
        index = self._assigns.get(id(fn))
        if index is None:
            index = self._assigns[id(fn)] = {}
            for st in fn.stmts:
                if isinstance(st.node, cst.Assign):
                    for w in st.writes:
                        index.setdefault(w, []).append(st)
        return index

    # ------------------------------------------------------------------ binding
    def bind(self, ctx: ModuleContext, fn: Function, call: cst.Call, callee: Function) -> dict[str, cst.BaseExpression]:
        """Callee parameter -> argument expression. `*args` of a tuple built in the caller is
        spread; after an unknown `*args` positions are no longer known (keywords still bind)."""
        params = list(callee.params)
        if params and params[0] in SELF_NAMES:
            params = params[1:]
        out: dict[str, cst.BaseExpression] = {}
        i = 0
        known = True
        for arg in call.args:
            if arg.keyword is not None:
                if arg.keyword.value in callee.params:
                    out[arg.keyword.value] = arg.value
                continue
            if arg.star == "**":
                continue
            if arg.star == "*":
                spread = _tuple_value(fn, arg.value)
                if spread is None:
                    known = False
                    continue
                for el in spread:
                    if known and i < len(params):
                        out.setdefault(params[i], el)
                    i += 1
                continue
            if known and i < len(params):
                out.setdefault(params[i], arg.value)
            i += 1
        return out

    # ------------------------------------------------------------------ call sites
    def sites(self, callee: Function) -> list[CallSite]:
        """Every resolved call of `callee` in the project."""
        if self._sites is None:
            self._sites = {}
            for ctx, fn in self.functions():
                for st in fn.stmts:
                    for call in st.calls:
                        for cctx, target in self.callees(ctx, fn, call):
                            self._sites.setdefault(id(target), []).append(
                                CallSite(ctx, fn, st, call, cctx, target, self.bind(ctx, fn, call, target)))
        return self._sites.get(id(callee), [])

    def call_sites_in(self, ctx: ModuleContext, fn: Function, st: Stmt) -> list[CallSite]:
        """The resolved calls a statement makes, with their bindings."""
        out = self._stmt_sites.get(id(st))
        if out is None:
            out = self._stmt_sites[id(st)] = [
                CallSite(ctx, fn, st, call, cctx, target, self.bind(ctx, fn, call, target))
                for call in st.calls for cctx, target in self.callees(ctx, fn, call)]
        return out


def _self_assignments(ctx: ModuleContext, cls: str, attr: str) -> list[Stmt]:
    """`self.<attr> = ...` statements in the methods of class `cls`."""
    return [st for q, method in ctx.functions.items() if q.startswith(cls + ".")
            for st in method.stmts if isinstance(st.node, cst.Assign)
            and any(isinstance(t.target, cst.Attribute) and isinstance(t.target.value, cst.Name)
                    and t.target.value.value in SELF_NAMES and t.target.attr.value == attr
                    for t in st.node.targets)]


def _references(node: cst.CSTNode) -> list[cst.BaseExpression]:
    """Names and attribute chains an expression mentions as values, not as the function of a
    call (`{"a": f}.get(k, g)` -> f, g; `a if c else b` -> a, b, c)."""
    called: set[int] = set()
    out = []
    for n in walk(node):
        if isinstance(n, cst.Call):
            called.add(id(n.func))
    for n in walk(node):
        if id(n) in called:
            continue
        if isinstance(n, (cst.Name, cst.Attribute)):
            out.append(n)
    return out


def _tuple_value(fn: Function, node: cst.CSTNode) -> list[cst.BaseExpression] | None:
    """The elements of `args` in `f(*args)` when `args` is a tuple/list literal assigned once in `fn`."""
    if isinstance(node, (cst.Tuple, cst.List)):
        elements = node.elements
    elif isinstance(node, cst.Name):
        assigns = [st for st in fn.stmts if node.value in st.writes]
        if len(assigns) != 1 or not isinstance(assigns[0].node, cst.Assign):
            return None
        value = assigns[0].node.value
        if not isinstance(value, (cst.Tuple, cst.List)) or len(assigns[0].node.targets) != 1 \
                or not isinstance(assigns[0].node.targets[0].target, cst.Name):
            return None
        elements = value.elements
    else:
        return None
    if any(isinstance(el, cst.StarredElement) for el in elements):
        return None
    return [el.value for el in elements]


def project_of(ctx: ModuleContext) -> Project:
    """The project a file belongs to; a file audited on its own is a project of one."""
    project = getattr(ctx, "project", None)
    if project is None:
        project = Project([ctx])
    return project


def project_findings(ctx: ModuleContext, rule) -> list:
    """The findings of `rule.check_project`, computed once per project, located in this file."""
    project = project_of(ctx)
    plan = project.analysis.get(rule.name)
    if plan is None:
        plan = project.analysis[rule.name] = rule.check_project(project)
    return plan.get(id(ctx), [])


__all__ = ["CallSite", "Project", "project_findings", "project_of"]
