"""Small text helpers every report format shares."""
from __future__ import annotations

import re

from harness.core.findings import NotAudited

_PREFIX = re.compile(r"^\s*not audited:\s*", re.IGNORECASE)


def one_line(text: str) -> str:
    """Evidence may quote a multi-line statement; a report line shows it on one line."""
    return " ".join(text.split())


def reason(na: NotAudited) -> str:
    """The reason without a leading "not audited:" (some layers write it; reports add it)."""
    return _PREFIX.sub("", na.reason).strip() or "no reason given"
