"""`--format sarif`: SARIF 2.1.0 as GitHub code scanning reads it.

Every enabled rule is listed (not only those that fired); static and dynamic findings go in
separate runs with their own `automationDetails.id` (GitHub's category)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from harness import __version__
from harness.findings import AuditResult, Finding, Layer, Severity
from harness.rule import Rule

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFO_URI = "https://github.com/openai/parameter-golf"
SECURITY_SEVERITY = {Severity.LOW: "3.0", Severity.MEDIUM: "6.0", Severity.HIGH: "8.5"}
RUNS = (("static", (Layer.STATIC,)), ("dynamic", (Layer.TRACE, Layer.PROBE)))


def _rule_descriptor(rule: Rule) -> dict:
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": rule.summary.strip() or rule.name},
        "fullDescription": {"text": (rule.why.strip() or rule.summary.strip() or rule.name)},
        "help": {"text": rule.documentation(), "markdown": rule.documentation()},
        "helpUri": f"{INFO_URI}#{rule.name}",
        "defaultConfiguration": {"level": rule.severity.sarif_level},
        "properties": {"precision": rule.confidence.sarif_precision,
                       "security-severity": SECURITY_SEVERITY[rule.severity],
                       "problem.severity": rule.severity.sarif_level,
                       "tags": ["parameter-golf", "compliance"] + [layer.value for layer in rule.layers]},
    }


def _uri(result: AuditResult, path: str, root: Path) -> str:
    """Repository-relative URI with forward slashes."""
    base = Path(result.target)
    if base.is_file():
        base = base.parent
    full = (base / path).resolve()
    try:
        return full.relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(os.path.relpath(full, root.resolve())).as_posix()


def _message(f: Finding) -> str:
    parts = [f.message]
    if f.evidence:
        parts.append("Evidence: " + "; ".join(f.evidence))
    if f.flags:
        parts.append("Flags: " + " ".join(f"{k}={v}" for k, v in f.flags.items()))
    if f.fix:
        parts.append("Fix: " + f.fix)
    return "\n".join(parts)


def _run(name: str, layers: tuple[Layer, ...], results: list[AuditResult], rules: list[Rule], root: Path) -> dict:
    index = {r.name: i for i, r in enumerate(rules)}
    out_results, notifications = [], []
    for result in results:
        seen: Counter = Counter()
        for f in result.findings:
            if f.layer not in layers or f.rule not in index:
                continue
            key = (f.rule, f.location.path, f.location.function, " ".join(f.location.source_line.split()))
            occurrence = seen[key]
            seen[key] += 1
            item = {
                "ruleId": rules[index[f.rule]].id,
                "ruleIndex": index[f.rule],
                "level": f.severity.sarif_level,
                "message": {"text": _message(f)},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": _uri(result, f.location.path, root)},
                    "region": {"startLine": max(1, f.location.line), "startColumn": f.location.column + 1},
                }}],
                "partialFingerprints": {"primaryLocationLineHash": f.fingerprint(occurrence)},
                "properties": {"layer": f.layer.value, "reachable": f.reachable, "flags": f.flags,
                               "confidence": f.confidence.name.lower()},
            }
            if f.suppressed is not None:
                item["suppressions"] = [{"kind": "inSource", "justification": f.suppressed}]
            out_results.append(item)
        for na in result.not_audited:
            if na.layer in layers:
                notifications.append({"level": "error", "message": {"text": f"not audited: {na.path}: {na.reason}"}})
    return {
        "tool": {"driver": {"name": "golf-audit", "version": __version__, "informationUri": INFO_URI,
                            "rules": [_rule_descriptor(r) for r in rules]}},
        "automationDetails": {"id": f"golf-audit/{name}/"},
        "invocations": [{"executionSuccessful": not notifications, "toolExecutionNotifications": notifications}],
        "results": out_results,
    }


def build(results: list[AuditResult], rules: list[Rule], root: Path | None = None) -> dict:
    root = root or Path.cwd()
    ran = {layer for r in results for layer in r.layers_run}
    runs = []
    for name, layers in RUNS:
        if name == "static" or any(layer.value in ran for layer in layers) or \
                any(f.layer in layers for r in results for f in r.findings):
            runs.append(_run(name, layers, results, rules, root))
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": runs}


def render(results: list[AuditResult], rules: list[Rule], fail_on: Severity = Severity.MEDIUM,
           root: Path | None = None) -> str:
    return json.dumps(build(results, rules, root), indent=2) + "\n"
