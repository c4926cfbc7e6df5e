"""Small text helpers every report format shares."""
from __future__ import annotations

import re
from typing import Any

from harness.core.findings import NotAudited

_PREFIX = re.compile(r"^\s*not audited:\s*", re.IGNORECASE)


def number(x: Any, digits: int = 4) -> str:
    """A value in a table: none as an em dash, a float to `digits` places, an int with thousands
    separators, anything else as str()."""
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def md_cell(text: str) -> str:
    """Text inside a Markdown table cell or list item: pipes escaped, newlines as spaces."""
    return text.replace("|", "\\|").replace("\n", " ")


def one_line(text: str) -> str:
    """Evidence may quote a multi-line statement; a report line shows it on one line."""
    return " ".join(text.split())


def reason(na: NotAudited) -> str:
    """The reason without a leading "not audited:" (some layers write it; reports add it)."""
    return _PREFIX.sub("", na.reason).strip() or "no reason given"
