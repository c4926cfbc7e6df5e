"""`# golf-audit: ignore[name] -- reason` comments.

A suppression names the rule and gives a reason; it applies to findings on its own line or the
line below. Suppressed hits stay in the report with their reason; a suppression that matches
nothing, or has no reason, is reported (and fails the audit like a finding)."""
from __future__ import annotations

import re

from harness.core.findings import AuditResult, Location

PATTERN = re.compile(r"#\s*golf-audit:\s*ignore\[([^\]]*)\](?:\s*--\s*(.*))?")


def parse(text: str) -> list[tuple[int, list[str], str]]:
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        m = PATTERN.search(line)
        if m:
            names = [n.strip() for n in m.group(1).split(",") if n.strip()]
            out.append((i, names, (m.group(2) or "").strip()))
    return out


def apply_suppressions(result: AuditResult, rel: str, text: str) -> None:
    lines = text.splitlines()
    for line_no, names, reason in parse(text):
        used = False
        for f in result.findings:
            if f.location.path != rel or f.location.line not in (line_no, line_no + 1):
                continue
            if f.rule in names or f.rule_id in names:
                if reason:
                    f.suppressed = reason
                    used = True
        if not used or not reason:
            src = lines[line_no - 1].strip() if line_no <= len(lines) else ""
            why = "" if reason else " (no reason given: write `-- why`)"
            result.unused_suppressions.append(Location(rel, line_no, source_line=src + why))
