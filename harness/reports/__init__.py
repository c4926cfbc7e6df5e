"""Report formats. Each `render(results, rules, options) -> str` reads only AuditResults and the
rule catalogue."""
from __future__ import annotations

from harness.reports import json_report, markdown, sarif, text

FORMATS = {"text": text.render, "json": json_report.render, "sarif": sarif.render, "markdown": markdown.render}
