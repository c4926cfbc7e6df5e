"""`--format sarif`: SARIF 2.1.0 as GitHub code scanning reads it.

Every enabled rule is listed (not only those that fired); static and dynamic findings go in
separate runs with their own `automationDetails.id` (GitHub's category)."""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness import __version__
from harness.core.findings import AuditResult, Finding, Layer, Location, Severity, location_fingerprint
from harness.reports.common import one_line, reason
from harness.core.registry import UNUSED_SUPPRESSION_ID
from harness.core.rule import Rule

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFO_URI = "https://github.com/openai/parameter-golf"
SECURITY_SEVERITY = {Severity.LOW: "3.0", Severity.MEDIUM: "6.0", Severity.HIGH: "8.5"}
RUNS = (("static", (Layer.STATIC,)), ("dynamic", (Layer.TRACE, Layer.PROBE)))


@dataclass(frozen=True)
class ToolCheck:
    """A check golf-audit makes on its own input, not a rule of `rules/`: it has no `Rule` class,
    no judge and no static check, and the registry does not list it. SARIF still needs a
    reportingDescriptor in `driver.rules` for it, because GitHub code scanning shows only results
    that point at one (a `toolExecutionNotification` is not an alert). Its descriptors follow the
    rules', so a rule's `ruleIndex` is its position in the catalogue; its ids are kept in the
    registry with the rules', which no rule may take."""

    id: str
    name: str
    short: str
    text: str
    fix: str

    def descriptor(self) -> dict:
        doc = f"# {self.name} ({self.id})\n\n{self.text}\n\n{self.fix}\n"
        return {"id": self.id, "name": self.name,
                "shortDescription": {"text": self.short},
                "fullDescription": {"text": self.text},
                "help": {"text": doc, "markdown": doc},
                "defaultConfiguration": {"level": "warning"},
                "properties": {"precision": "very-high", "problem.severity": "warning",
                               "tags": ["parameter-golf", "suppression"]}}


# An unused (or reason-less) suppression fails the audit like a finding, so code scanning must see
# it too.
UNUSED_SUPPRESSION = ToolCheck(
    id=UNUSED_SUPPRESSION_ID, name="unused-suppression",
    short="Suppression comment that suppresses nothing or gives no reason.",
    text=("A `# golf-audit: ignore[rule] -- reason` comment that matches no finding on its "
          "line or the next, or that gives no reason."),
    fix="Remove the comment, or name the rule that fires there and say why.")


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


def _physical(result: AuditResult, loc: Location, root: Path) -> dict:
    """Code unpacked from a packed file has no line of its own in the repository: point at the
    line of the pack in the outer file (the message names the unpacked line)."""
    if loc.packed_in:
        return {"artifactLocation": {"uri": _uri(result, loc.packed_in, root)},
                "region": {"startLine": max(1, loc.packed_line or 1)}}
    return {"artifactLocation": {"uri": _uri(result, loc.path, root)},
            "region": {"startLine": max(1, loc.line), "startColumn": loc.column + 1}}


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
    loc = f.location
    if loc.packed_in:
        parts.append(f"At line {loc.line} of the code unpacked from {loc.packed_in}:{loc.packed_line}"
                     + (f", in {loc.function}()" if loc.function else "") + ".")
    if f.evidence:
        parts.append("Evidence: " + "; ".join(one_line(e) for e in f.evidence))
    if f.flags:
        parts.append("Flags: " + " ".join(f"{k}={v}" for k, v in sorted(f.flags.items())))
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
                "locations": [{"physicalLocation": _physical(result, f.location, root)}],
                "partialFingerprints": {"primaryLocationLineHash": f.fingerprint(occurrence)},
                "properties": {"layer": f.layer.value, "reachable": f.reachable, "flags": dict(sorted(f.flags.items())),
                               "confidence": f.confidence.name.lower()},
            }
            if f.status:
                item["properties"]["status"] = f.status
            if f.suppressed is not None:
                item["suppressions"] = [{"kind": "inSource", "justification": f.suppressed}]
            out_results.append(item)
        if Layer.STATIC in layers:
            unused_index = len(rules)
            for loc in result.unused_suppressions:
                key = (loc.path, " ".join(loc.source_line.split()))
                occurrence = seen[key]
                seen[key] += 1
                fp = location_fingerprint(UNUSED_SUPPRESSION.name, loc, occurrence)
                out_results.append({
                    "ruleId": UNUSED_SUPPRESSION.id, "ruleIndex": unused_index, "level": "warning",
                    "message": {"text": f"unused suppression: {loc.source_line}"},
                    "locations": [{"physicalLocation": _physical(result, loc, root)}],
                    "partialFingerprints": {"primaryLocationLineHash": fp},
                })
        for na in result.not_audited:
            if na.layer in layers:
                notifications.append({"level": "error",
                                      "message": {"text": f"not audited: {na.path}: {reason(na)}"}})
        if Layer.TRACE in layers:  # warnings come from running the submission: the dynamic run's
            notifications += [{"level": "warning", "message": {"text": f"warning: {result.target}: {w}"}}
                              for w in result.warnings]
    descriptors = [_rule_descriptor(r) for r in rules]
    if Layer.STATIC in layers:
        descriptors.append(UNUSED_SUPPRESSION.descriptor())
    return {
        "tool": {"driver": {"name": "golf-audit", "version": __version__, "informationUri": INFO_URI,
                            "rules": descriptors}},
        "automationDetails": {"id": f"golf-audit/{name}/"},
        "invocations": [{"executionSuccessful": not any(n["level"] == "error" for n in notifications),
                         "toolExecutionNotifications": notifications}],
        "results": out_results,
    }


def build(results: list[AuditResult], rules: list[Rule], root: Path | None = None) -> dict:
    root = root or Path.cwd()
    ran = {layer for r in results for layer in r.layers_run}
    runs = []
    # A run per layer that ran (or reported): an empty static run under --no-static would tell
    # code scanning that every static alert was fixed.
    for name, layers in RUNS:
        if any(layer.value in ran for layer in layers) or \
                any(f.layer in layers for r in results for f in r.findings) or \
                any(na.layer in layers for r in results for na in r.not_audited):
            runs.append(_run(name, layers, results, rules, root))
    if not runs:
        runs.append(_run("static", RUNS[0][1], results, rules, root))
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": runs}


def render(results: list[AuditResult], rules: list[Rule], fail_on: Severity = Severity.MEDIUM,
           root: Path | None = None) -> str:
    return json.dumps(build(results, rules, root), indent=2) + "\n"
