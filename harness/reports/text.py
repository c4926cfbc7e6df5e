"""The default terminal report (rich). Plain text when not on a terminal."""
from __future__ import annotations

import io

from rich.console import Console
from rich.markup import escape

from harness.core.findings import AuditResult, ExitCode, Finding, Severity
from harness.reports.common import one_line, reason
from harness.core.rule import Rule

VERDICT = {ExitCode.CLEAN: ("CLEAN", "bold green"), ExitCode.FINDINGS: ("FINDINGS", "bold red"),
           ExitCode.NOT_AUDITABLE: ("NOT AUDITED", "bold yellow")}


def _where(f: Finding) -> str:
    loc = f.location
    out = f"{loc.path}:{loc.line}"
    if loc.function:
        out += f" in {loc.function}()"
    if loc.packed_in:
        out += f" (unpacked from {loc.packed_in}:{loc.packed_line})"
    return out


def _reach(f: Finding) -> str:
    if f.reachable is None:
        return "reachability unknown"
    flags = " ".join(f"{k}={v}" for k, v in sorted(f.flags.items()))
    if f.reachable:
        return "reachable from main" + (f" with {flags}" if flags else "")
    return "not reachable as run" + (f" (needs {flags})" if flags else "")


def _finding(console: Console, f: Finding) -> None:
    colour = {Severity.HIGH: "red", Severity.MEDIUM: "yellow", Severity.LOW: "cyan"}[f.severity]
    console.print(f"  [{colour}]{f.rule_id} {f.rule}[/] [dim]({f.severity.name.lower()}, "
                  f"confidence {f.confidence.name.lower()}, {f.layer.value}"
                  f"{', ' + f.status if f.status else ''})[/]")
    console.print(f"    {escape(_where(f))} — {escape(_reach(f))}")
    console.print(f"    {escape(f.message)}")
    for line in f.evidence:
        console.print(f"      • {escape(one_line(line))}")
    if f.fix:
        console.print(f"    fix: {escape(f.fix)}")


def render(results: list[AuditResult], rules: list[Rule], fail_on: Severity = Severity.MEDIUM,
           color: bool = False) -> str:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=110, highlight=False,
                      soft_wrap=True)
    for result in results:
        code = result.exit_code(fail_on)
        word, style = VERDICT[code]
        layers = ", ".join(result.layers_run) or "none"
        counts = f"{len(result.active_findings)} finding(s)"
        if result.unused_suppressions:
            counts += f", {len(result.unused_suppressions)} unused suppression(s)"
        console.print(f"[{style}]{word}[/] {escape(result.target)}  [dim](layers: {layers}; {counts})[/]")
        for w in result.warnings:
            console.print(f"  [bold yellow]warning[/]: {escape(w)}")
        for na in result.not_audited:
            console.print(f"  [bold yellow]not audited[/]: {escape(na.path)}: {escape(reason(na))} [dim]({na.layer.value})[/]")
        active = sorted(result.active_findings, key=lambda f: (-f.severity, f.location.path, f.location.line))
        for f in active:
            _finding(console, f)
        suppressed = [f for f in result.findings if f.suppressed is not None]
        if suppressed:
            console.print("  suppressed:")
            for f in suppressed:
                console.print(f"    {f.rule} at {escape(_where(f))} -- {escape(f.suppressed or '')}")
        for loc in result.unused_suppressions:
            console.print(f"  [yellow]unused suppression[/] at {escape(loc.path)}:{loc.line}: {escape(loc.source_line)}")
        for note in result.notes:
            console.print(f"  [dim]note: {escape(note)}[/]")
        console.print("")
    return buf.getvalue()
