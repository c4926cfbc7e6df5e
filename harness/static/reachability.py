"""Is a function reached from `main()` / `if __name__ == "__main__"`, and under which env flags?

Contest scripts switch their eval paths with env vars (`TTT_ENABLED=1`), read through
`os.environ.get("NAME", default)` into a local or a `Hyperparameters` attribute, and their
README/logs say which flags the submitted run used. A maintainer cares about the path that ran.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from harness.static.engine import ModuleContext, dotted, walk

FALSY = {"", "0", "false", "False", "no", "off", "None"}


@dataclass
class EnvVar:
    name: str  # the environment variable
    default: str | None


@dataclass
class Reach:
    reachable: bool | None  # None: no entry point found
    flags: dict[str, str] = field(default_factory=dict)  # flags the path needs


class Reachability:
    def __init__(self, ctx: ModuleContext, env: dict[str, str]):
        self.ctx = ctx
        self.env = env
        self.vars = self._env_vars()
        self._cache: dict[str, Reach] = {}
        self._graph = self._call_graph()

    def _env_vars(self) -> dict[str, EnvVar]:
        """Local names and attribute names bound from os.environ.get(NAME, default)."""
        out: dict[str, EnvVar] = {}
        for fn in self.ctx.functions.values():
            for st in fn.stmts:
                if not isinstance(st.node, (cst.Assign, cst.AnnAssign)) or st.node.value is None:
                    continue
                for call in st.calls:
                    name = dotted(call.func)
                    if name.endswith("environ.get") or name.endswith("getenv"):
                        args = call.args
                        if args and isinstance(args[0].value, cst.SimpleString):
                            default = None
                            if len(args) > 1 and isinstance(args[1].value, (cst.SimpleString, cst.Integer, cst.Float)):
                                v = args[1].value
                                default = str(v.evaluated_value) if isinstance(v, cst.SimpleString) else v.value
                            for w in st.writes:
                                out[w] = EnvVar(str(args[0].value.evaluated_value), default)
                            break
        # aliases: `use_slot = getattr(args, "slot_enabled", False)`, `ttt_on = args.ttt_enabled`
        for _ in range(2):
            for fn in self.ctx.functions.values():
                for st in fn.stmts:
                    if not isinstance(st.node, cst.Assign) or len(st.writes) != 1:
                        continue
                    (w,) = st.writes
                    if w in out:
                        continue
                    named = {n for n in st.reads if n in out} | {s for s in st.strings if s in out}
                    if len(named) == 1 and len(st.calls) <= 2:
                        out[w] = out[next(iter(named))]
        return out

    def _call_graph(self) -> dict[str, list[tuple[str, tuple]]]:
        by_last: dict[str, list[str]] = {}
        for q, fn in self.ctx.functions.items():
            by_last.setdefault(fn.name, []).append(q)
        # constructing a class reaches its __init__ and forward: class name -> those methods, in
        # the order the loop over every __init__ then every forward used to find them per call
        ctors: dict[str, list[str]] = {}
        for target in by_last.get("__init__", []) + by_last.get("forward", []):
            owner = target.split(".")[-2:-1]
            if owner:
                ctors.setdefault(owner[0], []).append(target)
        graph: dict[str, list[tuple[str, tuple]]] = {}
        for q, fn in self.ctx.functions.items():
            edges = []
            for st in fn.stmts:
                for call in st.calls:
                    last = dotted(call.func).split(".")[-1].rstrip("()")
                    for target in by_last.get(last, []):
                        edges.append((target, st.guards))
                    for target in ctors.get(last, ()):
                        edges.append((target, st.guards))
                # functions passed as values (callbacks) count as reached
                for name in st.reads:
                    for target in by_last.get(name, []):
                        if target != q:
                            edges.append((target, st.guards))
            graph[q] = edges
        return graph

    def _guard_flags(self, guards) -> tuple[bool, dict[str, str]]:
        """(satisfied under env, the flags the guards need)."""
        ok, need = True, {}
        for g in guards:
            for name in g.names:
                var = self.vars.get(name)
                # only on/off switches gate paths; sizes and rates in comparisons do not; nor does a
                # process's rank: every rank of a distributed run exists (rank 0 always runs)
                if var is None or var.name in PROCESS_RANK_VARS or \
                        (var.default or "0").lower() not in {"0", "1", "true", "false", ""}:
                    continue
                value = self.env.get(var.name, var.default)
                truthy = value is not None and value not in FALSY
                wanted_truthy = not g.negated
                code = self._conjunct_code(g.node, name) or g.code
                if "not " in code or "== 0" in code or '== "0"' in code:
                    wanted_truthy = not wanted_truthy
                need[var.name] = "1" if wanted_truthy else "0"
                if truthy != wanted_truthy:
                    ok = False
        return ok, need

    def _conjunct_code(self, node, name: str) -> str | None:
        """The source of the one `and`-conjunct of a guard that reads `name`: in
        `use_cache and rank == 0` the `== 0` is the rank's, not the switch's (PR #769)."""
        parts, todo = [], [node]
        while todo:
            n = todo.pop()
            if isinstance(n, cst.BooleanOperation) and isinstance(n.operator, cst.And):
                todo += [n.left, n.right]
            else:
                parts.append(n)
        if len(parts) < 2:
            return None
        mine = [p for p in parts if any(isinstance(x, cst.Name) and x.value == name for x in walk(p))]
        return self.ctx.code(mine[0]) if len(mine) == 1 else None

    def entry_points(self) -> list[tuple[str, tuple]]:
        top = self.ctx.functions["<module>"]
        entries = []
        for st in top.stmts:
            if any("__name__" in g.code for g in st.guards):
                for call in st.calls:
                    last = dotted(call.func).split(".")[-1]
                    for q, fn in self.ctx.functions.items():
                        if fn.name == last and "." not in q:
                            entries.append((q, ()))
            elif st.kind == "simple" and st.calls and not st.loops:
                for call in st.calls:  # module-level calls also run
                    last = dotted(call.func).split(".")[-1]
                    if last in self.ctx.functions and last != "<module>":
                        entries.append((last, st.guards))
        return entries

    def reach(self, qualname: str) -> Reach:
        if not self._cache:
            self._solve()
        if "<no-entry>" in self._cache:  # a library or snippet: nothing says what runs
            return Reach(None)
        return self._cache.get(qualname, Reach(False))

    def _solve(self) -> None:
        entries = self.entry_points()
        if not entries:
            self._cache = {"<module>": Reach(True), "<no-entry>": Reach(None)}
            return
        best: dict[str, Reach] = {"<module>": Reach(True)}
        frontier = []
        for q, guards in entries:
            ok, need = self._guard_flags(guards)
            best[q] = Reach(ok, need)
            frontier.append(q)
        while frontier:
            q = frontier.pop()
            here = best[q]
            for target, guards in self._graph.get(q, []):
                ok, need = self._guard_flags(guards)
                cand = Reach(bool(here.reachable and ok), {**here.flags, **need})
                old = best.get(target)
                if old is None or (cand.reachable and not old.reachable) or \
                        (cand.reachable == old.reachable and len(cand.flags) < len(old.flags)):
                    best[target] = cand
                    frontier.append(target)
        self._cache = best

    def flags_from_logs(self, log_text: str) -> dict[str, str]:
        """Flags a run must have had, judged from what its logs printed: a literal message that
        only code behind a flag prints (`log0(f"ttt_final val_loss:...")`) shows the flag was on.
        A flag the logs show both on and off (a folder holding logs of several runs or script
        versions, PR #769) is left out: each value ran, so neither path is cleared by the logs."""
        seen: dict[str, set[str]] = {}
        if not log_text:
            return {}
        for q, fn in self.ctx.functions.items():
            for st in fn.stmts:
                for call in st.calls:
                    if not call.args:
                        continue
                    prefix = _literal_prefix(call.args[0].value)
                    if len(prefix) >= 8 and prefix in log_text:
                        reach = self.at(q, st.guards)
                        for k, v in reach.flags.items():
                            seen.setdefault(k, set()).add(v)
        return {k: next(iter(vs)) for k, vs in seen.items() if len(vs) == 1}

    def at(self, qualname: str, stmt_guards=()) -> Reach:
        """Reachability of a statement: its function's, plus the statement's own guards."""
        base = self.reach(qualname)
        ok, need = self._guard_flags(stmt_guards)
        if base.reachable is None:
            return Reach(None if ok else False, need)
        return Reach(bool(base.reachable and ok), {**base.flags, **need})


PROCESS_RANK_VARS = frozenset({"RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"})


def _literal_prefix(node: cst.CSTNode) -> str:
    """The literal text an f-string or string starts with (before its first `{}`)."""
    if isinstance(node, cst.SimpleString):
        try:
            return str(node.evaluated_value).strip()
        except Exception:  # noqa: BLE001
            return ""
    if isinstance(node, cst.FormattedString):
        out = ""
        for part in node.parts:
            if isinstance(part, cst.FormattedStringText):
                out += part.value
            else:
                break
        return out.strip()
    return ""
