"""summary.md: the PR comment. GitHub-flavoured markdown: a heading with the verdict, then per record
folder a checklist table with one line per check (layout, files, size, times, claims vs logs,
significance, each compliance rule) with its verdict and evidence, the findings in detail, what
could not be audited, and the files of the record."""
from __future__ import annotations

from typing import TYPE_CHECKING

from harness.core.findings import ExitCode, Finding, Layer
from harness.reports.common import one_line, reason
from harness.core.rule import Rule
from harness.core.registry import all_rules

if TYPE_CHECKING:  # pragma: no cover
    from harness.ci.gate import FolderOutcome, GateResult

MARKER = "<!-- golf-audit-ci -->"  # lets the posting job find and update its own comment
MAX_CHARS = 60_000  # GitHub rejects comments over 65,536 characters
HEADLINE = {ExitCode.CLEAN: "✅ clean", ExitCode.FINDINGS: "❌ findings", ExitCode.NOT_AUDITABLE: "⚠️ not audited",
            ExitCode.USAGE: "⚠️ usage error"}
STATUS = {"pass": "✅ pass", "fail": "❌ fail", "unverified": "⚠️ unverified", "info": "ℹ️ info"}

# verify check -> title in the checklist (the order is verify's own)
TITLES = {
    "required-files": "Files present",
    "submission-fields": "submission.json fields",
    "claimed-score": "Claim vs logs: val_bpb",
    "val_loss-field": "Claim vs logs: val_loss",
    "per-seed-claims": "Claim vs logs: per-seed numbers",
    "artifact-size": "Size: artifact ≤ 16,000,000 bytes",
    "bytes_total-field": "Size: bytes_total claim",
    "bytes_code-field": "Size: bytes_code claim",
    "train-time": "Time: training ≤ 600 s",
    "eval-time": "Time: evaluation ≤ 600 s",
    "seeds": "Seeds",
    "significance": "Significance vs the record",
}


def _cell(text: str, limit: int = 400) -> str:
    text = one_line(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def _defang(text: str) -> str:
    """Text quoted from the PR must not @-mention people or close issues when posted."""
    return text.replace("@", "@\u200b")


def _where(fo: "FolderOutcome | None", f: Finding) -> str:
    loc = f.location
    path = f"{fo.folder}/{loc.path}" if fo is not None else loc.path
    fn = f" `{loc.function}()`" if loc.function else ""
    line = f":{loc.line}" if fo is not None else ""
    return f"`{path}{line}`{fn}"


def tier_counts(gate: "GateResult") -> str:
    """The blocking verdict in words: blocking failures (compliance findings at fail-on and
    blocking claim checks), what could not be verified, advisories, and the fused status of the
    compliance findings."""
    blocking, unverified, advisory = 0, 0, 0
    status: dict[str, int] = {}
    blocking += sum(1 for f in gate.layout if f.severity >= gate.fail_on)
    for fo in gate.folders:
        if fo.audit is not None:
            for f in fo.audit.active_findings:
                if f.severity >= gate.fail_on:
                    blocking += 1
                status[f.status or "static"] = status.get(f.status or "static", 0) + 1
            unverified += len(fo.audit.not_audited)
        else:
            unverified += 1
        if fo.verify is None:
            unverified += 1
            continue
        for c in fo.verify.checks:
            if c.name in fo.gating:
                blocking += c.status == "fail"
                unverified += c.status == "unverified"
            elif c.status in ("fail", "unverified"):
                advisory += 1
    out = f"{blocking} blocking, {unverified} not verified, {advisory} advisory"
    if status:
        out += " (findings: " + ", ".join(f"{n} {k}" for k, n in sorted(status.items())) + ")"
    return out


def render(gate: "GateResult") -> str:
    code = gate.exit_code()
    layers = ["layout", "static", "claims"] + (["dynamic (toy scale)"] if gate.dynamic else [])
    lines = [MARKER, f"## golf-audit CI: {HEADLINE[code]} (exit {int(code)}) — {tier_counts(gate)}", "",
             f"Base `{gate.base[:12]}` → head `{gate.head[:12]}` (merge base `{gate.merge_base[:12]}`), "
             f"{len(gate.changes)} changed path(s). Checks: {', '.join(layers)}. "
             f"Fails on severity ≥ {gate.fail_on.name.lower()}. "
             + ("Significance gates (a record was given)." if gate.significance_gates
                else "Significance is informational (no record given: `--sota-bpb`/`--sota-logs`)."), ""]
    if not gate.folders:
        lines += ["### Checklist", "", "| Check | Verdict | Evidence |", "|---|---|---|", _layout_row(gate, None), ""]
    for i, fo in enumerate(gate.folders):
        # above the checklist: a warning (e.g. writes not confined) qualifies every verdict in it
        warnings = fo.audit.warnings if fo.audit else []
        lines += [f"> ⚠️ **Warning** (`{fo.folder}`): {_cell(w, 600)}" for w in warnings] + ([""] if warnings else [])
        lines += [f"### Checklist — `{fo.folder}`", "", "| Check | Verdict | Evidence |", "|---|---|---|"]
        if i == 0:
            lines.append(_layout_row(gate, fo))
        lines += _verify_rows(gate, fo)
        lines += _rule_rows(gate, fo)
        lines.append("")
    lines += _findings(gate)
    lines += _not_audited(gate)
    for fo in gate.folders:
        lines += _files(fo)
        lines += _claims_details(fo)
    text = _defang("\n".join(lines).rstrip() + "\n")
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 200].rsplit("\n", 1)[0] + \
            "\n\n… (truncated: the full report is in verdict.json and golf-audit.sarif)\n"
    return text


def _layout_row(gate: "GateResult", fo: "FolderOutcome | None") -> str:
    names = ", ".join(f"`{r.name}`, {r.id}" for r in all_rules() if r.has_change_check())
    title = f"Layout: one new folder under `records/track_*/`, nothing else ({names})"
    if gate.layout:
        ev = "; ".join(f.message for f in gate.layout[:4]) + (f" (+{len(gate.layout) - 4} more)" if len(gate.layout) > 4 else "")
        return f"| {title} | ❌ {len(gate.layout)} finding(s) | {_cell(ev)} |"
    n = len(fo.files) if fo else 0
    size = sum(f.size or 0 for f in fo.files) if fo else 0
    return f"| {title} | ✅ pass | {_cell(f'adds `{fo.folder}` only: {n} file(s), {size:,} bytes')} |"


def _verify_rows(gate: "GateResult", fo: "FolderOutcome") -> list[str]:
    if fo.verify is None:
        return [f"| Claims vs logs (`golf-eval verify`) | ⚠️ not audited | {_cell(fo.verify_error)} |"]
    rows = []
    for c in fo.verify.checks:
        verdict = STATUS.get(c.status, c.status)
        if c.name not in fo.gating and c.status != "info":
            word = "advisory" if getattr(c, "tier", "") == "advisory" else "informational"
            verdict = f"ℹ️ {word} ({c.status})"
        ev = c.summary
        if c.evidence and c.status in ("fail", "unverified"):
            ev += " — " + "; ".join(c.evidence[:3])
        rows.append(f"| {TITLES.get(c.name, c.name)} (`{c.name}`) | {verdict} | {_cell(ev)} |")
    return rows


def _rule_ran(rule: Rule, layers_run: set[str]) -> bool:
    """Did a layer that can check this rule run? A rule with only a static layer but no static check
    (one that only judges a pull request's changed paths) is not checked by a folder audit."""
    static = rule.has_static() and Layer.STATIC.value in layers_run
    dynamic = rule.has_judge() and any(layer.value in layers_run for layer in rule.layers if layer != Layer.STATIC)
    return static or dynamic


def compliance_rules() -> list[Rule]:
    return [r for r in all_rules() if r.has_static() or r.has_judge()]


def _rule_rows(gate: "GateResult", fo: "FolderOutcome") -> list[str]:
    res = fo.audit
    rows = []
    ran = set(res.layers_run) if res else set()
    for rule in compliance_rules():
        title = f"Compliance: `{rule.name}` ({rule.id})"
        hits = [f for f in res.active_findings if f.rule == rule.name] if res else []
        blocked = [na for na in (res.not_audited if res else []) if na.layer in rule.layers]
        if hits:
            failing = [f for f in hits if f.severity >= gate.fail_on]
            verdict = f"❌ {len(hits)} finding(s)" if failing else f"ℹ️ {len(hits)} finding(s) below fail-on"
            ev = "; ".join(f"{_where(fo, f)}: {f.message}" + (f" [{one_line(f.evidence[0])}]" if f.evidence else "")
                           for f in hits[:2])
        elif not _rule_ran(rule, ran):
            layers = ", ".join(x.value for x in rule.layers)
            verdict, ev = "➖ not audited", f"needs the {layers} layer" + (
                " (run with `--dynamic`)" if not gate.dynamic and Layer.STATIC not in rule.layers else "")
        elif blocked:
            verdict, ev = "⚠️ not audited", "; ".join(reason(na) for na in blocked[:2])
        else:
            layers = [x.value for x in rule.layers if x.value in ran]
            verdict, ev = "✅ pass", f"no finding ({', '.join(layers)})"
        rows.append(f"| {title} | {verdict} | {_cell(ev)} |")
    return rows


def _finding_lines(fo: "FolderOutcome | None", f: Finding) -> list[str]:
    flags = " ".join(f"{k}={v}" for k, v in f.flags.items())
    reach = {None: "", True: " — reachable", False: " — not reachable as run"}[f.reachable]
    out = [f"- **{f.rule}** ({f.rule_id}, {f.severity.name.lower()}, {f.layer.value}) at {_where(fo, f)}"
           f"{reach}{' with ' + flags if flags else ''}: {f.message}"]
    out += [f"  - {_cell(e, 600)}" for e in f.evidence[:8]]
    if f.fix:
        out.append(f"  - *Fix:* {f.fix}")
    return out


def _findings(gate: "GateResult") -> list[str]:
    lines: list[str] = []
    for f in gate.layout:
        lines += _finding_lines(None, f)
    for fo in gate.folders:
        if fo.audit is None:
            continue
        for f in sorted(fo.audit.active_findings, key=lambda x: (-x.severity, x.location.path, x.location.line)):
            lines += _finding_lines(fo, f)
        if fo.verify is not None:
            for c in fo.verify.checks:
                if c.status == "fail" and c.name in fo.gating:
                    lines.append(f"- **golf-eval/{c.name}** (claims) in `{fo.folder}`: {one_line(c.summary)}")
                    lines += [f"  - {_cell(e, 600)}" for e in c.evidence[:6]]
    return (["### Findings", ""] + lines + [""]) if lines else []


def _not_audited(gate: "GateResult") -> list[str]:
    lines = [f"- `{n.path}`: {reason(n)}" for n in gate.not_audited]
    for fo in gate.folders:
        if fo.audit is not None:
            lines += [f"- `{fo.folder}` ({na.layer.value}): {_cell(reason(na), 600)}" for na in fo.audit.not_audited]
        if fo.verify is None:
            lines.append(f"- `{fo.folder}` (claims): {fo.verify_error}")
        else:
            for c in fo.verify.checks:
                if c.status == "unverified":
                    gates = "gates the PR" if c.name in fo.gating else "informational"
                    lines.append(f"- `{fo.folder}` (claims, {gates}): `{c.name}`: {_cell(c.summary, 600)}")
            lines += [f"- `{fo.folder}` (claims): {_cell(n, 600)}" for n in fo.verify.notes if "not found in log" in n]
        if not gate.dynamic:
            names = [r.name for r in compliance_rules() if not (r.has_static() and Layer.STATIC in r.layers)]
            lines.append(f"- `{fo.folder}` (dynamic): not requested; trace/probe-only rules not audited: "
                         + ", ".join(f"`{n}`" for n in names))
    return (["### What could not be audited", ""] + lines + [""]) if lines else []


def _files(fo: "FolderOutcome") -> list[str]:
    rows = [f"| `{_cell(f.path[len(fo.folder) + 1:], 200)}` | {f.size:,} |" if f.size is not None
            else f"| `{_cell(f.path[len(fo.folder) + 1:], 200)}` | (submodule) |" for f in fo.files[:60]]
    if len(fo.files) > 60:
        rows.append(f"| … {len(fo.files) - 60} more | |")
    return [f"<details><summary>Files in <code>{fo.folder}</code> ({len(fo.files)})</summary>", "",
            "| File | Bytes |", "|---|---:|"] + rows + ["", "</details>", ""]


def _claims_details(fo: "FolderOutcome") -> list[str]:
    if fo.verify is None:
        return []
    lines = [f"<details><summary>Claims evidence (golf-eval verify) for <code>{fo.folder}</code></summary>", ""]
    for c in fo.verify.checks:
        lines.append(f"- `{c.name}` {STATUS.get(c.status, c.status)}: {_cell(c.summary, 600)}")
        lines += [f"  - {_cell(e, 600)}" for e in c.evidence[:10]]
    lines += [f"- note: {_cell(n, 600)}" for n in fo.verify.notes]
    return lines + ["", "</details>", ""]
