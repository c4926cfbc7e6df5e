"""`--format markdown`: a PR-comment review, one line per check with verdict and evidence."""
from __future__ import annotations

from harness.core.findings import AuditResult, ExitCode, Finding, Severity
from harness.reports.common import md_cell, one_line, reason
from harness.core.rule import Rule

TITLE = {ExitCode.CLEAN: "✅ clean", ExitCode.FINDINGS: "❌ findings", ExitCode.NOT_AUDITABLE: "⚠️ not audited"}


def _where(f: Finding) -> str:
    loc = f.location
    fn = f" `{loc.function}()`" if loc.function else ""
    return f"`{loc.path}:{loc.line}`{fn}"


def check_rows(result: AuditResult, rules: list[Rule]) -> list[tuple[str, str, str]]:
    """(check, verdict, evidence) for every enabled rule."""
    rows = []
    ran = set(result.layers_run)
    for rule in rules:
        hits = [f for f in result.active_findings if f.rule == rule.name]
        if not hits and not (rule.has_static() or rule.has_judge()):
            # checked outside a folder audit (a change check: only by `golf-audit ci`)
            rows.append((f"`{rule.name}` ({rule.id})", "➖ not run", "checked by `golf-audit ci` on a pull request"))
            continue
        layer_ran = any(layer.value in ran for layer in rule.layers)
        blocked = [na for na in result.not_audited if na.layer in rule.layers]
        if hits:
            ev = "; ".join(f"{_where(f)}: {f.message}" for f in hits[:3])
            verdict = f"❌ {len(hits)} finding(s)"
        elif not layer_ran:
            verdict, ev = "➖ not run", "layer(s) " + ", ".join(x.value for x in rule.layers) + " not requested"
        elif blocked:
            verdict, ev = "⚠️ not audited", "; ".join(reason(na) for na in blocked[:2])
        else:
            verdict, ev = "✅ clean", "no finding"
        rows.append((f"`{rule.name}` ({rule.id})", verdict, ev))
    return rows


def render_result(result: AuditResult, rules: list[Rule], fail_on: Severity = Severity.MEDIUM) -> str:
    code = result.exit_code(fail_on)
    lines = [f"### golf-audit: {TITLE[code]} — `{result.target}`", "",
             f"Layers run: {', '.join(result.layers_run) or 'none'}.", ""]
    # above the table: a warning qualifies every verdict in it
    lines += [f"> ⚠️ **Warning:** {md_cell(w)}" for w in result.warnings] + ([""] if result.warnings else [])
    lines += ["| Check | Verdict | Evidence |", "|---|---|---|"]
    lines += [f"| {c} | {v} | {md_cell(e)} |" for c, v, e in check_rows(result, rules)]
    if result.active_findings:
        lines += ["", "#### Findings", ""]
        for f in sorted(result.active_findings, key=lambda x: (-x.severity, x.location.path, x.location.line)):
            flags = " ".join(f"{k}={v}" for k, v in sorted(f.flags.items()))
            reach = {None: "reachability unknown", True: "reachable", False: "not reachable as run"}[f.reachable]
            status = f", {f.status}" if f.status else ""
            lines.append(f"- **{f.rule}** ({f.rule_id}, {f.severity.name.lower()}, {f.layer.value}{status}) at "
                         f"{_where(f)} — {reach}{' with ' + flags if flags else ''}: {f.message}")
            lines += [f"  - {one_line(e)}" for e in f.evidence]
            if f.fix:
                lines.append(f"  - *Fix:* {f.fix}")
    if result.not_audited:
        lines += ["", "#### Not audited", ""] + [f"- ⚠️ `{na.path}`: {reason(na)} ({na.layer.value})"
                                                  for na in result.not_audited]
    suppressed = [f for f in result.findings if f.suppressed is not None]
    if suppressed:
        lines += ["", "#### Suppressed", ""] + [f"- {f.rule} at {_where(f)} — {f.suppressed}" for f in suppressed]
    if result.unused_suppressions:
        lines += ["", "#### Unused suppressions", ""] + [f"- `{u.path}:{u.line}` `{u.source_line}`"
                                                         for u in result.unused_suppressions]
    if result.notes:
        lines += ["", "<details><summary>Notes</summary>", ""] + [f"- {n}" for n in result.notes] + ["", "</details>"]
    return "\n".join(lines) + "\n"


def render(results: list[AuditResult], rules: list[Rule], fail_on: Severity = Severity.MEDIUM) -> str:
    return "\n".join(render_result(r, rules, fail_on) for r in results)
