"""The SARIF 2.1.0 fields GitHub code scanning requires in practice, checked without a network.

`validate_sarif(doc)` returns a list of problems (empty = valid). Used by the tests and the CI gate."""
from __future__ import annotations

LEVELS = {"none", "note", "warning", "error"}


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
        driver = run.get("tool", {}).get("driver", {})
        if not driver.get("name"):
            problems.append(f"{where}.tool.driver.name missing")
        rules = driver.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{where}.tool.driver.rules must list every enabled rule")
            rules = []
        ids = []
        for j, rule in enumerate(rules):
            rw = f"{where}.tool.driver.rules[{j}]"
            if not rule.get("id"):
                problems.append(f"{rw}.id missing")
            ids.append(rule.get("id"))
            for key in ("shortDescription", "fullDescription", "help"):
                if not (rule.get(key) or {}).get("text"):
                    problems.append(f"{rw}.{key}.text missing")
        if len(set(ids)) != len(ids):
            problems.append(f"{where}: duplicate rule ids")
        categories.append((run.get("automationDetails") or {}).get("id"))
        for k, res in enumerate(run.get("results", [])):
            rw = f"{where}.results[{k}]"
            if res.get("ruleId") not in ids:
                problems.append(f"{rw}.ruleId {res.get('ruleId')!r} is not among the run's rules")
            idx = res.get("ruleIndex")
            if idx is not None and (not isinstance(idx, int) or idx >= len(ids) or ids[idx] != res.get("ruleId")):
                problems.append(f"{rw}.ruleIndex does not point at ruleId")
            if res.get("level") not in LEVELS:
                problems.append(f"{rw}.level must be one of {sorted(LEVELS)}")
            if not (res.get("message") or {}).get("text"):
                problems.append(f"{rw}.message.text missing")
            locs = res.get("locations")
            if not isinstance(locs, list) or len(locs) != 1:
                problems.append(f"{rw}.locations must hold exactly one location")
            else:
                phys = locs[0].get("physicalLocation", {})
                uri = (phys.get("artifactLocation") or {}).get("uri", "")
                if not uri or uri.startswith("/") or "\\" in uri or "://" in uri:
                    problems.append(f"{rw}: artifactLocation.uri must be repo-relative with '/' separators")
                line = (phys.get("region") or {}).get("startLine")
                if not isinstance(line, int) or line < 1:
                    problems.append(f"{rw}: region.startLine must be a 1-based integer")
            if not (res.get("partialFingerprints") or {}).get("primaryLocationLineHash"):
                problems.append(f"{rw}.partialFingerprints.primaryLocationLineHash missing")
    if len(runs) > 1 and (None in categories or len(set(categories)) != len(categories)):
        problems.append("several runs need distinct automationDetails.id categories")
    return problems
