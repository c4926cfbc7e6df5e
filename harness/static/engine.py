"""The static engine: one LibCST parse and one traversal per file, building a fact index that
every rule reads. It knows no rule by name.

Speed: LibCST's PositionProvider costs ~2x the parse itself, so line numbers come from the
stdlib `ast` tree instead (~0.1x the parse): both trees list statements in the same pre-order,
so the k-th statement of one is the k-th of the other. Everything below statement level is
reported at its statement's line.
"""
from __future__ import annotations

import ast
import re
import dataclasses
from dataclasses import dataclass, field
from typing import Iterator

import libcst as cst

from harness.core.findings import Location



# ------------------------------------------------------------------ small helpers
# Node kinds compared by type identity, not isinstance: LibCST nodes are ABCs, so every isinstance
# miss runs ABCMeta.__instancecheck__ in Python (a third of a million per 1,700-line audit), and
# these concrete classes have no subclasses, so `type(n) is cst.Name` answers the same.
_Name, _Attribute, _Call, _Subscript = cst.Name, cst.Attribute, cst.Call, cst.Subscript
_SimpleString, _IfExp, _BinaryOperation = cst.SimpleString, cst.IfExp, cst.BinaryOperation


def dotted(node: cst.CSTNode | None) -> str:
    """`a.b.c` for Name/Attribute chains; calls and subscripts keep their base: `x(...).y` -> `x().y`."""
    t = type(node)
    if t is _Name:
        return node.value
    if t is _Attribute:
        base = dotted(node.value)
        return f"{base}.{node.attr.value}" if base else node.attr.value
    if t is _Call:
        base = dotted(node.func)
        return f"{base}()" if base else ""
    if t is _Subscript:
        base = dotted(node.value)
        return f"{base}[]" if base else ""
    return ""


def base_name(node: cst.CSTNode | None) -> str | None:
    """The variable an expression is rooted at: `x` for `x[1:].to(d)`, `x.data`, `x`."""
    while True:
        t = type(node)
        if t is _Name:
            return node.value
        if t is _Attribute or t is _Subscript:
            node = node.value
        elif t is _Call and type(node.func) is _Attribute:
            node = node.func.value
        else:
            return None


_SKIPPED_FIELDS = frozenset((
    "whitespace_before", "whitespace_after", "lpar", "rpar", "comma", "whitespace_after_star",
    "whitespace_before_colon", "semicolon", "leading_lines", "header", "footer", "lines_after_decorators",
    "whitespace_after_def", "whitespace_before_params", "whitespace_after_in", "whitespace_before_in",
    "whitespace_after_for", "whitespace_after_arg", "whitespace_after_equal", "whitespace_before_equal", "equal",
    "colon", "first_whitespace", "whitespace_after_await", "whitespace_after_if", "whitespace_before_if",
    "whitespace_after_as", "whitespace_before_as", "whitespace_after_lambda", "whitespace_after_return",
    "whitespace_after_import", "whitespace_after_from", "whitespace_before_import", "operator",
    "whitespace_after_with"))


class _ChildFields(dict):
    """type -> the fields that may hold child nodes (layout and operators skipped), computed
    on a type's first lookup: `_FIELDS[cls]` is one dict lookup in the walk loops."""

    def __missing__(self, cls: type) -> tuple[str, ...]:
        names = self[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.name not in _SKIPPED_FIELDS)
        return names


class _NodeTypes(dict):
    """type -> is it a LibCST node. cst.CSTNode is an ABC: isinstance() against it is the walk's
    hottest call; a type's answer never changes, so it is asked once per type."""

    def __missing__(self, t: type) -> bool:
        known = self[t] = issubclass(t, cst.CSTNode)
        return known


_FIELDS: dict[type, tuple[str, ...]] = _ChildFields()
_IS_NODE: dict[type, bool] = _NodeTypes()


def _push_children(n: cst.CSTNode, cls: type, push, fields=_FIELDS, is_node=_IS_NODE.__getitem__) -> None:
    """Push the child nodes of `n` (of type `cls`) for the stack walks below: fields in order,
    each list reversed. The one place a walk reads a node's children. (The tables are bound
    as defaults: a local lookup, in the walks' hottest call.)"""
    for name in fields[cls]:
        v = getattr(n, name, None)
        if v is None:
            continue
        t = type(v)
        if t is list or t is tuple:
            for x in reversed(v):
                if is_node(type(x)):
                    push(x)
        elif is_node(t):
            push(v)


def walk(node: cst.CSTNode):
    """Every node below `node` (pre-order), read straight from the dataclass fields: LibCST's own
    visitor machinery rebuilds nodes as it goes and costs several times more."""
    stack = [node]
    pop, push = stack.pop, stack.append
    while stack:
        n = pop()
        yield n
        _push_children(n, type(n), push)


class _Collector:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.attrs: set[str] = set()  # names read as attributes: `val_files` in `args.val_files`
        self.calls: list[cst.Call] = []
        self.strings: list[str] = []
        self.ifexps: list[cst.IfExp] = []


def string_value(node: cst.SimpleString) -> str:
    """A string literal's text. LibCST's evaluated_value compiles every literal (ast.literal_eval);
    a plain or raw literal without escapes is its text between the quotes."""
    raw = node.value
    prefix = node.prefix.lower()
    if "b" not in prefix and ("\\" not in raw or "r" in prefix):
        body = raw[len(prefix):]
        q = 3 if body[:3] in ('"""', "'''") else 1
        return body[q:-q]
    return str(node.evaluated_value)


_HASH_CALLS = ("bitwise_xor", "hash", "remainder", "fmod")


def looks_hashed(node: cst.CSTNode) -> bool:
    """Arithmetic of a hash key: `%`, `^`, a multiply by a large constant (a prime), or a call
    of xor/hash/remainder. A shape, not a proof: callers combine it with where the value goes."""
    for n in walk(node):  # type identity, not isinstance (see the top of the module)
        t = type(n)
        if t is _BinaryOperation:
            op = type(n.operator)
            if op is cst.Modulo or op is cst.BitXor:
                return True
            if op is cst.Multiply and any(
                    type(x) is cst.Integer and int(x.value.replace("_", ""), 0) >= 100 for x in (n.left, n.right)):
                return True
        elif t is _Call and dotted(n.func).split(".")[-1] in _HASH_CALLS:
            return True
    return False


def collect(node: cst.CSTNode | None) -> _Collector:
    """The names, attribute names, calls, strings and conditional expressions below `node`, in
    pre-order. The index builder calls this once per statement, so it is `walk`'s loop without
    a generator frame per node, the kinds told apart by type identity (see `_Name`)."""
    c = _Collector()
    if node is None:
        return c
    add_name, add_attr, calls, strings, ifexps = c.names.add, c.attrs.add, c.calls, c.strings, c.ifexps
    stack = [node]
    pop, push = stack.pop, stack.append
    push_children = _push_children
    while stack:
        n = pop()
        cls = type(n)
        if cls is _Name:
            add_name(n.value)
            continue  # no child nodes (its parentheses are not walked)
        if cls is _Attribute:
            add_attr(n.attr.value)
        elif cls is _Call:
            calls.append(n)
        elif cls is _SimpleString:
            try:
                strings.append(string_value(n))
            except Exception:  # noqa: BLE001
                pass
            continue  # no child nodes
        elif cls is _IfExp:
            ifexps.append(n)
        push_children(n, cls, push)
    return c


def names_in(node: cst.CSTNode) -> list[cst.Name]:
    """The Name nodes below `node`, in `walk` order (`walk`'s loop without its generator: the
    dataflow asks this of every call argument, again and again)."""
    out: list[cst.Name] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if type(n) is _Name:
            out.append(n)  # no child nodes below it
        else:
            _push_children(n, type(n), stack.append)
    return out


def target_names(node: cst.CSTNode) -> set[str]:
    """Names bound (or mutated in place) by an assignment target."""
    if isinstance(node, cst.Name):
        return {node.value}
    if isinstance(node, (cst.Tuple, cst.List)):
        out: set[str] = set()
        for el in node.elements:
            out |= target_names(el.value)
        return out
    if isinstance(node, cst.StarredElement):
        return target_names(node.value)
    b = base_name(node)
    return {b} if b else set()


# ------------------------------------------------------------------ facts
class CodeCache:
    """Source text of nodes, computed once: LibCST's code generation is the costliest thing a
    rule can ask for, and the same conditions are asked about again and again."""

    def __init__(self, module: cst.Module) -> None:
        self.module = module
        self.memo: dict[int, str] = {}

    def __call__(self, node: cst.CSTNode) -> str:
        text = self.memo.get(id(node))
        if text is None:
            text = self.memo[id(node)] = self.module.code_for_node(node)
        return text


@dataclass
class Guard:
    node: cst.CSTNode  # the `if` condition
    names: frozenset[str]
    negated: bool  # in the else branch
    codes: CodeCache = field(repr=False, compare=False)

    @property
    def code(self) -> str:
        """The condition's source (computed on first use)."""
        return self.codes(self.node)


@dataclass
class Loop:
    id: int
    line: int
    targets: frozenset[str]
    iter_names: frozenset[str]
    start: int  # first statement order inside
    end: int = 0  # one past the last


@dataclass
class Stmt:
    order: int
    line: int
    node: cst.CSTNode  # a small statement, or a compound statement's header
    kind: str  # "simple" | "for" | "while" | "if" | "with" | "def" | "class" | "try" | "match"
    guards: tuple[Guard, ...]
    loops: tuple[int, ...]  # enclosing loop ids, outermost first
    withs: tuple[str, ...]  # enclosing `with` context expressions (e.g. "torch.no_grad()")
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    calls: tuple[cst.Call, ...] = ()
    strings: tuple[str, ...] = ()
    attrs: frozenset[str] = frozenset()
    ifexps: tuple[cst.IfExp, ...] | None = None  # a simple statement's conditional expressions

    def call_names(self) -> list[str]:
        return [dotted(c.func) for c in self.calls]


@dataclass
class Function:
    name: str
    qualname: str
    line: int
    params: list[str]
    node: cst.FunctionDef | None
    stmts: list[Stmt] = field(default_factory=list)
    loops: dict[int, Loop] = field(default_factory=dict)
    # facts derived from this function alone (dataflow/summaries memoise them here): the
    # project's fixed points ask for the same ones round after round
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def memoised(self, key, compute):
        """`compute()`, once per key for this function (callers copy what they mutate)."""
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = compute()
        return hit

    def loop_body(self, loop_id: int) -> list[Stmt]:
        loop = self.loops[loop_id]
        return self.stmts[loop.start:loop.end]


@dataclass
class ModuleContext:
    """What a rule's `check_static` receives: one parsed file and its fact index."""

    path: str  # relative to the submission folder
    source: str
    module: cst.Module
    functions: dict[str, Function]  # qualname -> facts; "<module>" holds top-level statements
    lines: list[str]
    env: dict[str, str]
    imports: dict[str, str]  # local alias -> imported dotted name
    reach: "object | None" = None  # harness.static.reachability.Reachability
    packed_in: str | None = None
    packed_line: int | None = None
    analysis: dict = field(default_factory=dict)  # per-file results shared between rules (e.g. taint)
    codes: CodeCache | None = None
    project: "object | None" = None  # harness.static.project.Project: the folder's other files, for calls across them

    def location(self, line: int, function: str | None = None) -> Location:
        text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        return Location(path=self.path, line=line, function=function, source_line=text,
                        packed_in=self.packed_in, packed_line=self.packed_line)

    def reach_fields(self, qualname: str, stmt: "Stmt | None" = None) -> dict:
        """`reachable=` and `flags=` for a finding at `stmt` in `qualname`: the function's own
        reachability plus the `if` guards around the statement (e.g. `if use_slot:`)."""
        if self.reach is None:
            return {}
        r = self.reach.at(qualname, stmt.guards if stmt is not None else ())
        return {"reachable": r.reachable, "flags": dict(r.flags)}

    def code(self, node: cst.CSTNode) -> str:
        if self.codes is None:
            self.codes = CodeCache(self.module)
        return self.codes(node).strip()

    def resolve(self, name: str) -> str:
        """Qualified name of a dotted local name through the import table: `F.pad` -> `torch.nn.functional.pad`."""
        head, _, rest = name.partition(".")
        full = self.imports.get(head)
        if full is None:
            return name
        return f"{full}.{rest}" if rest else full


# ------------------------------------------------------------------ building
def _ast_statement_lines(tree: ast.Module) -> list[int]:
    out: list[int] = []

    def walk(body: list[ast.stmt]) -> None:
        for s in body:
            out.append(s.lineno)
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With, ast.AsyncWith)):
                walk(s.body)
            elif isinstance(s, (ast.If, ast.For, ast.AsyncFor, ast.While)):
                walk(s.body)
                walk(s.orelse)
            elif isinstance(s, (ast.Try, getattr(ast, "TryStar", ast.Try))):
                walk(s.body)
                for h in s.handlers:
                    walk(h.body)
                walk(s.orelse)
                walk(s.finalbody)
            elif isinstance(s, ast.Match):
                for case in s.cases:
                    walk(case.body)

    walk(tree.body)
    return out


class _Builder:
    def __init__(self, module: cst.Module, lines_iter: Iterator[int]) -> None:
        self.module = module
        self.codes = CodeCache(module)
        self.lines = lines_iter
        self.functions: dict[str, Function] = {}
        self.imports: dict[str, str] = {}
        self.loop_ids = 0

    def build(self) -> dict[str, Function]:
        top = Function("<module>", "<module>", 1, [], None)
        self.functions["<module>"] = top
        self._block(self.module.body, top, (), (), (), "")
        return self.functions

    def _small_stmts(self, suite) -> list:
        if isinstance(suite, cst.SimpleStatementSuite):
            return list(suite.body)
        return list(getattr(suite, "body", []))

    def _block(self, body, fn: Function, guards, loops, withs, prefix: str) -> None:
        for s in body:
            if isinstance(s, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
                for small in s.body:
                    self._simple(small, fn, guards, loops, withs)
            elif isinstance(s, cst.BaseSmallStatement):  # `with x: a = 1; b = 2` on one line
                self._simple(s, fn, guards, loops, withs)
            else:
                self._compound(s, fn, guards, loops, withs, prefix)

    def _add(self, fn: Function, node, kind, guards, loops, withs, reads=frozenset(), writes=frozenset(),
             calls=(), strings=(), attrs=frozenset(), ifexps=None) -> Stmt:
        line = next(self.lines)
        st = Stmt(len(fn.stmts), line, node, kind, tuple(guards), tuple(loops), tuple(withs),
                  frozenset(reads), frozenset(writes), tuple(calls), tuple(strings), frozenset(attrs),
                  tuple(ifexps) if ifexps is not None else None)
        fn.stmts.append(st)
        return st

    def _simple(self, node, fn, guards, loops, withs) -> None:
        c = collect(node)
        writes: set[str] = set()
        if isinstance(node, cst.Assign):
            for t in node.targets:
                writes |= target_names(t.target)
        elif isinstance(node, (cst.AugAssign, cst.AnnAssign)):
            writes |= target_names(node.target)
        elif isinstance(node, (cst.Import, cst.ImportFrom)):
            self._import(node)
        self._add(fn, node, "simple", guards, loops, withs, c.names, writes, c.calls, c.strings, c.attrs, c.ifexps)

    def _import(self, node) -> None:
        if isinstance(node, cst.Import):
            for a in node.names:
                full = dotted(a.name)
                local = a.asname.name.value if a.asname and isinstance(a.asname.name, cst.Name) else full.split(".")[0]
                self.imports[local] = full if a.asname else full.split(".")[0]
        elif isinstance(node.names, (list, tuple)):
            mod = dotted(node.module) if node.module else ""
            for a in node.names:
                name = dotted(a.name)
                local = a.asname.name.value if a.asname and isinstance(a.asname.name, cst.Name) else name
                self.imports[local] = f"{mod}.{name}" if mod else name

    def _compound(self, s, fn: Function, guards, loops, withs, prefix) -> None:
        if isinstance(s, cst.FunctionDef):
            st = self._add(fn, s, "def", guards, loops, withs, writes={s.name.value},
                           calls=tuple(c for d in s.decorators for c in collect(d.decorator).calls))
            qual = f"{prefix}{s.name.value}"
            params = [p.name.value for p in (*s.params.posonly_params, *s.params.params, *s.params.kwonly_params)]
            inner = Function(s.name.value, qual, st.line, params, s)
            self.functions[qual] = inner
            self._block(self._small_stmts(s.body), inner, (), (), (), f"{qual}.")
        elif isinstance(s, cst.ClassDef):
            self._add(fn, s, "class", guards, loops, withs, writes={s.name.value})
            self._block(self._small_stmts(s.body), fn, guards, loops, withs, f"{prefix}{s.name.value}.")
        elif isinstance(s, cst.If):
            self._if(s, fn, guards, loops, withs, prefix)
        elif isinstance(s, (cst.For, cst.While)):
            if isinstance(s, cst.For):
                c = collect(s.iter)
                targets = target_names(s.target)
                st = self._add(fn, s, "for", guards, loops, withs, c.names, targets, c.calls, c.strings)
            else:
                c = collect(s.test)
                targets = set()
                st = self._add(fn, s, "while", guards, loops, withs, c.names, (), c.calls, c.strings)
            self.loop_ids += 1
            loop = Loop(self.loop_ids, st.line, frozenset(targets), frozenset(c.names), len(fn.stmts))
            fn.loops[loop.id] = loop
            self._block(self._small_stmts(s.body), fn, guards, (*loops, loop.id), withs, prefix)
            loop.end = len(fn.stmts)
            if s.orelse is not None:
                self._block(self._small_stmts(s.orelse.body), fn, guards, loops, withs, prefix)
        elif isinstance(s, cst.With):
            names: set[str] = set()
            calls: list = []
            writes: set[str] = set()
            ctx_codes = []
            for item in s.items:
                ci = collect(item.item)
                names |= ci.names
                calls += ci.calls
                ctx_codes.append(self.codes(item.item))
                if item.asname is not None:
                    writes |= target_names(item.asname.name)
            self._add(fn, s, "with", guards, loops, withs, names, writes, calls)
            self._block(self._small_stmts(s.body), fn, guards, loops, (*withs, *ctx_codes), prefix)
        elif isinstance(s, (cst.Try, cst.TryStar)):
            self._add(fn, s, "try", guards, loops, withs)
            self._block(self._small_stmts(s.body), fn, guards, loops, withs, prefix)
            for h in s.handlers:
                self._block(self._small_stmts(h.body), fn, guards, loops, withs, prefix)
            if s.orelse is not None:
                self._block(self._small_stmts(s.orelse.body), fn, guards, loops, withs, prefix)
            if s.finalbody is not None:
                self._block(self._small_stmts(s.finalbody.body), fn, guards, loops, withs, prefix)
        elif isinstance(s, cst.Match):
            c = collect(s.subject)
            self._add(fn, s, "match", guards, loops, withs, c.names, (), c.calls)
            for case in s.cases:
                self._block(self._small_stmts(case.body), fn, guards, loops, withs, prefix)
        else:  # unknown compound: keep the line stream aligned
            self._add(fn, s, "simple", guards, loops, withs)

    def _if(self, s: cst.If, fn, guards, loops, withs, prefix) -> None:
        c = collect(s.test)
        self._add(fn, s, "if", guards, loops, withs, c.names, (), c.calls, c.strings)
        g = Guard(s.test, frozenset(c.names), False, self.codes)
        self._block(self._small_stmts(s.body), fn, (*guards, g), loops, withs, prefix)
        neg = Guard(s.test, g.names, True, self.codes)
        if isinstance(s.orelse, cst.If):
            self._if(s.orelse, fn, (*guards, neg), loops, withs, prefix)
        elif isinstance(s.orelse, cst.Else):
            self._block(self._small_stmts(s.orelse.body), fn, (*guards, neg), loops, withs, prefix)


class ParseError(Exception):
    pass


MAX_BRACKET_DEPTH = 200  # CPython's own limit ("too many nested parentheses")


def _bracket_depth(source: str) -> int:
    """Deepest (, [, { nesting, by the tokenize module (strings and comments skipped)."""
    import io
    import tokenize

    depth = deepest = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
                deepest = max(deepest, depth)
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth = max(depth - 1, 0)
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass  # broken source: the depth seen so far is what matters
    return deepest


def _guard_nesting(source: str) -> "ast.Module | None":
    """LibCST's native parser overflows the C stack (kills the process) on a few thousand nested
    brackets or lambdas, and takes minutes on ~10,000-deep expressions (tests/test_fuzz.py).
    CPython's parser refuses such input at once, so ask it first; where it fails for another
    reason (3.12-only syntax, a plain syntax error), bound the bracket depth ourselves.
    Returns the stdlib tree when CPython parsed it (build_context reuses it)."""
    try:
        return ast.parse(source)
    except (RecursionError, MemoryError):
        raise ParseError("expression nesting too deep to parse") from None
    except SyntaxError as exc:
        msg = str(exc.msg)
        if "too many nested" in msg or "too many levels of indentation" in msg or "too complex" in msg:
            raise ParseError(f"nesting too deep to parse: {msg} (line {exc.lineno})") from None
    except ValueError:  # NUL bytes (3.11): LibCST decides
        pass
    if _bracket_depth(source) > MAX_BRACKET_DEPTH:
        raise ParseError(f"expression nesting too deep to parse (over {MAX_BRACKET_DEPTH} nested brackets)")
    return None


MAX_SYNTAX_NODES = 90_000  # the largest real train_gpt.py has ~37,000; LibCST needs 40-100 us per node


def _guard_size(tree: ast.Module) -> None:
    # counts the nodes `ast.walk` visits, without its two generator layers per node (ast.walk
    # cost ~0.07x the LibCST parse, this ~0.02x)
    count = 0
    stack = [tree]
    pop, push, AST = stack.pop, stack.append, ast.AST
    while stack:
        node = pop()
        count += 1
        if count > MAX_SYNTAX_NODES:
            raise ParseError(f"more than {MAX_SYNTAX_NODES:,} syntax nodes: too large to analyse "
                             "(the largest real train_gpt.py has about 37,000)")
        for name in node._fields:
            v = getattr(node, name, None)
            if isinstance(v, AST):
                push(v)
            elif type(v) is list:
                for x in v:
                    if isinstance(x, AST):
                        push(x)


_GLUED_KEYWORD = re.compile(r"(?<=[\)\]\}0-9\"'])(?=(?:for|if|else|in|and|or|not|is|async)\b)")


def _space_keywords(source: str) -> str:
    return _GLUED_KEYWORD.sub(" ", source)


def _py312_tree(source: str, rewrites: list[str]) -> ast.Module | None:
    """The ast of the source with its 3.12 f-strings rewritten to 3.11 form (same lines), or None."""
    from harness.static.py312 import rewrite

    try:
        fixed, count = rewrite(source)
        tree = ast.parse(fixed)
    except RecursionError:
        raise ParseError("expression nesting too deep to parse") from None
    except Exception:  # noqa: BLE001 - the interpreter does not accept it either
        return None
    if count:
        rewrites.append(f"{count} Python 3.12 f-string(s) (PEP 701) rewritten to 3.11 form for indexing")
    return tree


def _normalised(tree: ast.Module, exc: Exception) -> cst.Module:
    try:
        return cst.parse_module(ast.unparse(tree))
    except (cst.ParserSyntaxError, cst.CSTValidationError, RecursionError, ValueError):
        raise ParseError(f"LibCST rejected the source, and its ast form too: {exc}") from None


def build_context(source: str, path: str, env: dict[str, str] | None = None) -> ModuleContext:
    """Parse once and index. Raises ParseError with a one-line reason."""
    # the stdlib parse first: ~0.1x LibCST's cost, and it sizes the file before LibCST sees it
    tree = _guard_nesting(source)
    first: SyntaxError | None = None
    if tree is None:
        try:
            ast.parse(source)
        except SyntaxError as exc:
            first = exc
        except (RecursionError, MemoryError, ValueError):
            pass
    if tree is not None:
        _guard_size(tree)
    rewrites: list[str] = []
    try:
        module = cst.parse_module(source)
    except (cst.ParserSyntaxError, cst.CSTValidationError) as exc:
        spaced = _space_keywords(source) if isinstance(exc, cst.CSTValidationError) else source
        if spaced != source:
            # minified code (`x=[a for a in b]if c else d`, `1if`): a space before each glued
            # keyword, within its line, so every line number stays the file's own
            ctx = build_context(spaced, path, env)
            ctx.analysis["rewrites"].insert(0, "spaces inserted before keywords glued to the previous token "
                                                f"(LibCST rejected the minified source: {str(exc)[:120]})")
            ctx.lines = source.splitlines()
            return ctx
        if tree is not None:
            # CPython accepts it, LibCST does not (minified code: `x=[a for a in b]if c else d`):
            # audit the same statements as ast writes them back; the line index below is still the
            # original file's, so findings keep its line numbers
            module = _normalised(tree, exc)
            first_line = str(getattr(exc, "message", exc)).splitlines()[0][:160]
            rewrites.append(f"normalised through Python's ast (LibCST rejected the source: {first_line}); "
                            "findings keep the original statements' lines, their code is shown as ast writes it")
        elif first is not None:  # the interpreter's own message points at the right line more often
            raise ParseError(f"syntax error at line {first.lineno}: {first.msg}") from None
        elif isinstance(exc, cst.ParserSyntaxError):
            raise ParseError(f"syntax error at line {exc.raw_line}, column {exc.raw_column}: "
                             f"{str(exc.message).splitlines()[0]}") from None
        else:
            raise ParseError(f"LibCST rejected the source: {exc}") from None
    except RecursionError:
        raise ParseError("expression nesting too deep to parse") from None
    if tree is None:
        # PEP 701 (3.12) f-strings parse in LibCST but not in this interpreter's ast: rewrite only
        # those f-strings into 3.11 form for the line index; the audited tree is LibCST's own.
        tree = _py312_tree(source, rewrites)
        if tree is None:
            raise ParseError(f"syntax error at line {first.lineno}: {first.msg}") from None
    line_list = _ast_statement_lines(tree)
    builder = _Builder(module, iter(line_list))
    try:
        functions = builder.build()
    except StopIteration:
        raise ParseError("statement index out of step between LibCST and ast") from None
    except RecursionError:
        raise ParseError("statement nesting too deep to index") from None
    ctx = ModuleContext(path=path, source=source, module=module, functions=functions,
                        lines=source.splitlines(), env=dict(env or {}), imports=builder.imports,
                        codes=builder.codes)
    ctx.analysis["rewrites"] = rewrites
    return ctx
