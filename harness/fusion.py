"""The fused verdict: one status per compliance finding, from every layer that ran.

Static analysis suspects and localises; a traced run proves. For each finding:

- `proven`: a trace judge or a probe reported it (for a static finding: a dynamic finding of
  the same rule at the same line or function), or the static check reads the fact itself;
- `refuted`: a static finding whose flagged line ran in a complete trace, the trace recorded
  at least one event there of a kind that decides the rule (`Rule.refuted_by`), and every such
  event was legal. It drops to low severity and carries the trace's evidence;
- `suspected`: static only. When a complete trace exists but recorded nothing at the flagged
  line, the finding says "not exercised by the toy run": code the toy run did not execute
  (another branch, a flag that was off, a size-dependent path) is never cleared by it.

The exit code then follows from the fused severities. Nothing here knows a rule by name.
"""
from __future__ import annotations

from harness.core.findings import AuditResult, Finding, Layer, Severity
from harness.core.registry import rule_by_name

PROVEN, SUSPECTED, REFUTED = "proven", "suspected", "refuted"


def fuse(static: AuditResult | None, dynamic: AuditResult | None) -> None:
    """Set `status` on every finding of both results (in place); refuted findings drop to low."""
    dyn_findings = list(dynamic.findings) if dynamic is not None else []
    for f in dyn_findings:
        f.status = PROVEN
    if static is None:
        return
    sites = dynamic.trace_sites if dynamic is not None else None
    for f in static.findings:
        _fuse_static(f, dyn_findings, sites, dynamic)


def _fuse_static(f: Finding, dyn: list[Finding], sites: dict | None, dynamic: AuditResult | None) -> None:
    rule = rule_by_name(f.rule)
    if rule is not None and rule.static_is_proof:
        f.status = PROVEN
        return
    same = [d for d in dyn if d.rule == f.rule and d.location.path == f.location.path
            and (d.location.line == f.location.line
                 or (f.location.function and d.location.function == f.location.function))]
    if same:
        d = same[0]
        f.status = PROVEN
        f.evidence.append(f"proven by the {d.layer.value} layer at line {d.location.line}: {d.message}")
        return
    f.status = SUSPECTED
    if dynamic is None:
        return
    if sites is None:
        f.evidence.append("not checked against a trace: the toy run did not complete or recorded no scores")
        return
    site = sites.get(f"{f.location.path}:{f.location.line}")
    kinds = rule.refuted_by if rule is not None else ()
    if site is None or not (site.updates or site.scores):
        f.evidence.append(f"not exercised by the toy run: no update or score was recorded at line {f.location.line}"
                          + (" (the static finding stands)" if kinds else ""))
        return
    decisive = ("update" in kinds and site.updates) or ("score" in kinds and site.scores)
    if not decisive:
        f.evidence.append(f"the toy run reached line {f.location.line}, but recorded nothing there that "
                          "decides this rule (the static finding stands)")
        return
    if site.premature:
        f.evidence.append(f"the toy run made {site.premature} of {site.updates} update(s) at line "
                          f"{f.location.line} on positions not yet scored")
        return
    if any(d.rule == f.rule for d in dyn if d.severity >= Severity.MEDIUM and d.location.line == f.location.line):
        return
    f.status = REFUTED
    was = f.severity.name.lower()
    f.severity = Severity.LOW
    what = []
    if "update" in kinds and site.updates:
        what.append(f"{site.updates} update(s) at line {site.line} (first: {site.first_update}), every position "
                    "they used already scored when they ran")
    if "score" in kinds and site.scores:
        what.append(f"{site.scores} score(s) taken at line {site.line}, judged legal by the trace")
    f.evidence.append(f"refuted by the trace (static severity was {was}): " + "; ".join(what))
    f.evidence.extend(site.examples[:2])

