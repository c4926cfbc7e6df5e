"""`--format json`: a versioned schema holding everything in each AuditResult."""
from __future__ import annotations

import json

from harness import __version__
from harness.core.findings import AuditResult, Severity, worst_exit
from harness.core.rule import Rule
from harness.core.serialize import SCHEMA, result_to_dict


def render(results: list[AuditResult], rules: list[Rule], fail_on: Severity = Severity.MEDIUM) -> str:
    doc = {
        "schema": SCHEMA,
        "tool": {"name": "golf-audit", "version": __version__},
        "exit_code": int(worst_exit([r.exit_code(fail_on) for r in results])),
        "fail_on": fail_on.name.lower(),
        "rules": [{"id": r.id, "name": r.name, "severity": r.severity.name.lower(),
                   "confidence": r.confidence.name.lower(), "layers": [x.value for x in r.layers],
                   "summary": r.summary} for r in rules],
        "results": [result_to_dict(r, fail_on) for r in results],
    }
    # default=str: a layer's stats may hold paths or numpy scalars; the report must not crash on them
    return json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n"
