"""Checks a SARIF log against what the SARIF 2.1.0 schema requires and what GitHub code scanning
needs in practice, without a network (the schema is not shipped: this is the checked subset).

`validate_sarif(doc)` returns a list of problems, each naming the JSON path; empty = valid.
Used by the tests and the CI gate."""
from __future__ import annotations

import re

LEVELS = {"none", "note", "warning", "error"}
SUPPRESSION_KINDS = {"inSource", "external"}
PRECISIONS = {"very-high", "high", "medium", "low"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _text(obj, key: str) -> bool:
    value = (obj or {}).get(key) if isinstance(obj, dict) else None
    return isinstance(value, dict) and isinstance(value.get("text"), str) and bool(value["text"].strip())


def _check_rule(rule: dict, where: str) -> list[str]:
    problems = []
    if not isinstance(rule, dict):
        return [f"{where} is not an object"]
    if not rule.get("id"):
        problems.append(f"{where}.id missing")
    for key in ("shortDescription", "fullDescription", "help"):
        if not _text(rule, key):
            problems.append(f"{where}.{key}.text missing")
    if _text(rule, "help") and not (rule["help"].get("markdown") or "").strip():
        problems.append(f"{where}.help.markdown missing")
    props = rule.get("properties") or {}
    if props.get("precision") not in PRECISIONS:
        problems.append(f"{where}.properties.precision must be one of {sorted(PRECISIONS)}")
    sev = props.get("security-severity")
    if sev is not None:
        try:
            if not 0.0 <= float(sev) <= 10.0:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"{where}.properties.security-severity must be a number 0-10 as a string")
    elif props.get("problem.severity") not in ("error", "warning", "recommendation"):
        problems.append(f"{where}.properties needs security-severity or problem.severity")
    return problems


def _check_result(res: dict, ids: list, where: str) -> list[str]:
    problems = []
    if not isinstance(res, dict):
        return [f"{where} is not an object"]
    if res.get("ruleId") not in ids:
        problems.append(f"{where}.ruleId {res.get('ruleId')!r} is not among the run's rules")
    idx = res.get("ruleIndex")
    if idx is not None and (not isinstance(idx, int) or not 0 <= idx < len(ids) or ids[idx] != res.get("ruleId")):
        problems.append(f"{where}.ruleIndex does not point at ruleId")
    if res.get("level") not in LEVELS:
        problems.append(f"{where}.level must be one of {sorted(LEVELS)}")
    if not _text(res, "message"):
        problems.append(f"{where}.message.text missing")
    locs = res.get("locations")
    if not isinstance(locs, list) or len(locs) != 1:
        problems.append(f"{where}.locations must hold exactly one location")
    else:
        phys = (locs[0] or {}).get("physicalLocation") or {}
        uri = (phys.get("artifactLocation") or {}).get("uri", "")
        if not isinstance(uri, str) or not uri or uri.startswith("/") or "\\" in uri or _SCHEME.match(uri):
            problems.append(f"{where}: artifactLocation.uri must be repo-relative with '/' separators, not {uri!r}")
        line = (phys.get("region") or {}).get("startLine")
        if not isinstance(line, int) or isinstance(line, bool) or line < 1:
            problems.append(f"{where}: region.startLine must be a 1-based integer")
    if not (res.get("partialFingerprints") or {}).get("primaryLocationLineHash"):
        problems.append(f"{where}.partialFingerprints.primaryLocationLineHash missing")
    for s, sup in enumerate(res.get("suppressions") or []):
        if (sup or {}).get("kind") not in SUPPRESSION_KINDS:
            problems.append(f"{where}.suppressions[{s}].kind must be one of {sorted(SUPPRESSION_KINDS)}")
    return problems


def _check_invocations(run: dict, where: str) -> list[str]:
    problems = []
    for i, inv in enumerate(run.get("invocations") or []):
        iw = f"{where}.invocations[{i}]"
        if not isinstance((inv or {}).get("executionSuccessful"), bool):
            problems.append(f"{iw}.executionSuccessful (boolean) missing")
            continue
        notes = inv.get("toolExecutionNotifications") or []
        for n, note in enumerate(notes):
            if not _text(note, "message"):
                problems.append(f"{iw}.toolExecutionNotifications[{n}].message.text missing")
            if note.get("level", "warning") not in LEVELS:
                problems.append(f"{iw}.toolExecutionNotifications[{n}].level must be one of {sorted(LEVELS)}")
        if any(n.get("level") == "error" for n in notes) and inv["executionSuccessful"]:
            problems.append(f"{iw}: error notifications with executionSuccessful true")
    return problems


def validate_sarif(doc: dict) -> list[str]:
    problems: list[str] = []
    if not isinstance(doc, dict):
        return ["document is not a JSON object"]
    if doc.get("version") != "2.1.0":
        problems.append("version must be '2.1.0'")
    if not str(doc.get("$schema", "")).endswith(("sarif-2.1.0.json", "sarif-schema-2.1.0.json")):
        problems.append("$schema must name the SARIF 2.1.0 schema")
    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs:
        return problems + ["runs must be a non-empty list"]
    categories = []
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        if not isinstance(run, dict):
            problems.append(f"{where} is not an object")
            continue
        driver = (run.get("tool") or {}).get("driver") or {}
        for key in ("name", "version", "informationUri"):
            if not driver.get(key):
                problems.append(f"{where}.tool.driver.{key} missing")
        rules = driver.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{where}.tool.driver.rules must list every enabled rule")
            rules = []
        for j, rule in enumerate(rules):
            problems += _check_rule(rule, f"{where}.tool.driver.rules[{j}]")
        ids = [r.get("id") if isinstance(r, dict) else None for r in rules]
        if len(set(ids)) != len(ids):
            problems.append(f"{where}: duplicate rule ids")
        categories.append((run.get("automationDetails") or {}).get("id"))
        results = run.get("results")
        if not isinstance(results, list):
            problems.append(f"{where}.results must be a list (empty when nothing was found)")
            results = []
        for k, res in enumerate(results):
            problems += _check_result(res, ids, f"{where}.results[{k}]")
        problems += _check_invocations(run, where)
    if len(runs) > 1 and (None in categories or len(set(categories)) != len(categories)):
        problems.append("several runs need distinct automationDetails.id categories")
    return problems
