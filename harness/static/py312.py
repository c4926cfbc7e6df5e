"""Rewrite Python 3.12-only f-strings (PEP 701: nested same quotes, backslashes or comments
in replacement fields) into 3.11-compatible expressions, so the submission runs on 3.11.

Each f-string that does not compile on this interpreter becomes an equivalent concatenation:
    f"{x['a']!r:>{w}} ms"  ->  (format(repr(x['a']), ('>' + format(w, ''))) + ' ms')
which is what the f-string evaluates (conversion, then format(value, spec)). Only failing
f-strings are touched, so line numbers elsewhere are unchanged. LibCST parses PEP 701 syntax.
"""
from __future__ import annotations

import builtins

import libcst as cst

# Captured at import, before the bootstrap wraps builtins.compile (its wrapper calls us).
_compile = builtins.compile

_CONVERSIONS = {"r": "repr", "s": "str", "a": "ascii"}


def _compiles(code: str) -> bool:
    try:
        _compile("(" + code + ")", "<f>", "eval", dont_inherit=True)
        return True
    except SyntaxError:
        return False


class _Rewriter(cst.CSTTransformer):
    def __init__(self, module: cst.Module) -> None:
        self.module = module
        self.count = 0

    def _code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    def _literal(self, text: str, raw: bool) -> cst.BaseExpression:
        # text is the f-string's literal part as written (escapes included, braces doubled)
        text = text.replace("{{", "{").replace("}}", "}")
        prefix = "r" if raw else ""
        return cst.parse_expression(prefix + repr(text) if not raw else _raw_literal(text))

    def _parts(self, node: cst.FormattedString) -> list[cst.BaseExpression]:
        raw = "r" in node.prefix.lower()
        out: list[cst.BaseExpression] = []
        for part in node.parts:
            if isinstance(part, cst.FormattedStringText):
                if raw:
                    out.append(cst.parse_expression(_raw_literal(part.value.replace("{{", "{").replace("}}", "}"))))
                else:
                    # reuse the source escapes by wrapping in a normal string of the same kind
                    out.append(cst.parse_expression(_escaped_literal(part.value)))
                continue
            expr_code = self._code(part.expression).strip()
            if part.equal is not None:  # f"{x=}" prints the expression text then repr by default
                whitespace = ""
                out.append(cst.parse_expression(repr(expr_code + whitespace + "=")))
            value = f"({expr_code})"
            conv = part.conversion or ("r" if part.equal is not None and part.format_spec is None else None)
            if conv:
                value = f"{_CONVERSIONS[conv]}({value})"
            if part.format_spec:
                spec = cst.FormattedString(parts=part.format_spec, start='f"', end='"')
                spec_code = self._code(self._to_expr(spec))
            else:
                spec_code = "''"
            out.append(cst.parse_expression(f"format({value}, {spec_code})"))
        return out

    def _to_expr(self, node: cst.FormattedString) -> cst.BaseExpression:
        parts = self._parts(node)
        if not parts:
            return cst.parse_expression("''")
        code = " + ".join(self.module.code_for_node(p) for p in parts)
        return cst.parse_expression(f"({code})" if len(parts) > 1 else f"('' + {code})")

    def leave_FormattedString(self, original: cst.FormattedString, updated: cst.FormattedString):
        if _compiles(self.module.code_for_node(updated)):
            return updated
        self.count += 1
        return self._to_expr(updated)


def _escaped_literal(source_text: str) -> str:
    """A plain string literal for an f-string's literal text (escapes kept as written)."""
    text = source_text.replace("{{", "{").replace("}}", "}")
    for q in ('"', "'"):
        if q not in text and "\n" not in text:
            return q + text + q
    return '"""' + text.replace('"', '\\"') + '"""'


def _raw_literal(text: str) -> str:
    for q in ('"', "'"):
        if q not in text and "\n" not in text and not text.endswith("\\"):
            return "r" + q + text + q
    return repr(text)


def rewrite(source: str) -> tuple[str, int]:
    """(3.11-compatible source, number of f-strings rewritten). Raises libcst.ParserSyntaxError
    when the source is not valid Python of any version LibCST knows."""
    module = cst.parse_module(source)
    rw = _Rewriter(module)
    new = module.visit(rw)
    return new.code, rw.count


def needs_rewrite(source: str) -> bool:
    try:
        _compile(source, "<check>", "exec", dont_inherit=True)
        return False
    except SyntaxError as exc:
        return "f-string" in str(exc.msg) or "unexpected character after line continuation" in str(exc.msg)
