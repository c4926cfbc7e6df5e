"""AuditResult <-> plain dicts: the JSON report, the result cache and the CI gate share this."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from harness.core.findings import (AuditResult, Confidence, FileReport, Finding, Layer, Location, NotAudited,
                              Severity)

SCHEMA = "golf-audit/1"


def _finding_dict(f: Finding) -> dict[str, Any]:
    d = f.to_dict()
    d["flags"] = dict(sorted(d["flags"].items()))  # same report whatever order a layer found them in
    return d


def result_to_dict(result: AuditResult, fail_on: Severity = Severity.MEDIUM) -> dict[str, Any]:
    return {
        "target": result.target,
        "exit_code": int(result.exit_code(fail_on)),
        "findings": [_finding_dict(f) for f in result.findings],
        "not_audited": [{**asdict(n), "layer": n.layer.value} for n in result.not_audited],
        "files": [asdict(f) for f in result.files],
        "notes": list(result.notes),
        "warnings": list(result.warnings),
        "env_flags": dict(sorted(result.env_flags.items())),
        "layers_run": list(result.layers_run),
        "stats": result.stats,
        "unused_suppressions": [asdict(loc) for loc in result.unused_suppressions],
    }


def _location(d: dict) -> Location:
    names = {f.name for f in fields(Location)}
    return Location(**{k: v for k, v in d.items() if k in names})


def finding_from_dict(d: dict) -> Finding:
    return Finding(
        rule=d["rule"], rule_id=d["rule_id"],
        severity=Severity[d["severity"].upper()], confidence=Confidence[d["confidence"].upper()],
        layer=Layer(d["layer"]), message=d["message"], location=_location(d["location"]),
        evidence=list(d.get("evidence", [])), fix=d.get("fix", ""), reachable=d.get("reachable"),
        flags=dict(d.get("flags", {})), suppressed=d.get("suppressed"),
        related=[_location(r) for r in d.get("related", [])], status=d.get("status"),
    )


def result_from_dict(d: dict) -> AuditResult:
    return AuditResult(
        target=d["target"],
        findings=[finding_from_dict(f) for f in d.get("findings", [])],
        not_audited=[NotAudited(path=n["path"], reason=n["reason"], layer=Layer(n.get("layer", "static")),
                                detail=n.get("detail", "")) for n in d.get("not_audited", [])],
        files=[FileReport(**f) for f in d.get("files", [])],
        notes=list(d.get("notes", [])),
        warnings=list(d.get("warnings", [])),
        env_flags=dict(d.get("env_flags", {})),
        layers_run=list(d.get("layers_run", [])),
        stats=dict(d.get("stats", {})),
        unused_suppressions=[_location(x) for x in d.get("unused_suppressions", [])],
    )


def merge_results(first: AuditResult, *others: AuditResult) -> AuditResult:
    """One folder's results from several layers, as one result."""
    out = result_from_dict(result_to_dict(first))
    for other in others:
        out.findings += other.findings
        out.not_audited += other.not_audited
        known = {f.path for f in out.files}
        out.files += [f for f in other.files if f.path not in known]
        out.notes += [n for n in other.notes if n not in out.notes]
        out.warnings += [w for w in other.warnings if w not in out.warnings]
        for k, v in other.env_flags.items():
            out.env_flags.setdefault(k, v)
        out.layers_run += [layer for layer in other.layers_run if layer not in out.layers_run]
        out.stats.update(other.stats)
        out.unused_suppressions += other.unused_suppressions
    return out
