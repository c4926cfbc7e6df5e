"""Render golf-eval results as text (rich), JSON or Markdown."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.evaluation.verify_report import FAIL, INFO, PASS, UNVERIFIED, VerifyReport
from harness.reports.common import md_cell, number

STYLE = {PASS: "green", FAIL: "bold red", UNVERIFIED: "yellow", INFO: "cyan"}
MARK = {PASS: "PASS", FAIL: "FAIL", UNVERIFIED: "UNVERIFIED", INFO: "info"}
EXIT_WORDS = {0: "every blocking check holds", 1: "a blocking check fails", 2: "usage error",
              3: "could not verify every blocking check"}


def _mark(c) -> str:
    """An advisory that fails or could not be checked is listed as advisory, not as a failure."""
    if c.tier == "advisory" and c.status in (FAIL, UNVERIFIED):
        return f"advisory ({MARK[c.status].lower()})"
    return MARK[c.status]


def tier_line(rep: VerifyReport) -> str:
    """One line: the blocking verdict with its counts (the first thing a reader needs)."""
    code = int(rep.exit_code())
    blocking, adv = rep.blocking_failures(), rep.advisories()
    unverified = [c for c in rep.blocking() if c.status == UNVERIFIED]
    verdict = {0: "not blocked", 1: "BLOCKED", 3: "not verified"}.get(code, EXIT_WORDS.get(code, ""))
    out = f"{verdict}: {len(blocking)} blocking failure(s)"
    if blocking:
        out += " (" + ", ".join(c.name for c in blocking) + ")"
    if unverified:
        out += f", {len(unverified)} blocking unverified (" + ", ".join(c.name for c in unverified) + ")"
    out += f", {len(adv)} advisory"
    if rep.rules:
        out += f"; rules of {rep.rules.date or 'today'}, {rep.rules.track}"
    return out


def _seed_key(row) -> tuple:
    return (row.seed is None, row.seed if row.seed is not None else 0, row.log)


# ---- text -----------------------------------------------------------------------------------


def render_verify_text(rep: VerifyReport, console: Console, verbose: bool = True, show_exit: bool = True) -> None:
    code = int(rep.exit_code())
    console.print(Text(f"golf-eval verify {rep.target}", style="bold"))
    console.print(Text(tier_line(rep), style="bold " + ("red" if code == 1 else "green" if code == 0 else "yellow")))
    if rep.score_label:
        console.print(f"claimed score line: [bold]{rep.score_label}[/bold]")
    checks = Table(show_header=True, header_style="bold", expand=False)
    checks.add_column("check")
    checks.add_column("tier")
    checks.add_column("status")
    checks.add_column("result", overflow="fold")
    for c in rep.checks:
        style = "dim" if c.tier == "advisory" and c.status in (FAIL, UNVERIFIED) else STYLE[c.status]
        checks.add_row(c.name, c.tier, Text(_mark(c), style=style), c.summary)
    console.print(checks)

    seeds = Table(title="per seed (from the logs)", show_header=True, header_style="bold")
    for col in ("seed", "log", "val_loss", "val_bpb", "train s", "eval s (logged)", "unmeasured eval", "artifact bytes"):
        seeds.add_column(col, overflow="fold")
    rows = sorted(rep.seeds, key=_seed_key)
    for row in rows:
        unmeasured = ", ".join(row.eval_unmeasured) or "—"
        if row.eval_unmeasured and row.eval_estimate_s:
            unmeasured += f" (est. ≥ {row.eval_estimate_s:.1f} s)"
        seeds.add_row(str(row.seed) if row.seed is not None else "?", row.log, number(row.val_loss), number(row.val_bpb), number(row.train_s, 1),
                      number(row.eval_logged_s, 1), unmeasured, number(row.artifact_bytes))
    if len(rows) >= 2:
        from statistics import mean, stdev

        for name, attr in (("mean", mean), ("std", stdev)):
            vals_l = [r.val_loss for r in rows if r.val_loss is not None]
            vals_b = [r.val_bpb for r in rows if r.val_bpb is not None]
            seeds.add_row(name, "", number(attr(vals_l), 5) if len(vals_l) >= 2 else "—",
                          number(attr(vals_b), 5) if len(vals_b) >= 2 else "—", "", "", "", "")
    console.print(seeds)

    if verbose:
        for c in rep.checks:
            if c.evidence and c.status != PASS:
                console.print(Text(f"{c.name} ({c.tier}):", style=STYLE[c.status]))
                for e in c.evidence:
                    console.print(f"  - {e}", markup=False, highlight=False)
        for row in rows:
            console.print(Text(f"eval phases, seed {row.seed} ({row.log}):", style="bold"))
            for p in row.eval_phases:
                if p["time_s"] is not None:
                    desc = f"{p['time_s']:.1f} s logged"
                else:
                    desc = "UNMEASURED from logs"
                    if p["estimate_s"] is not None:
                        bound = "≥ " if "lower" in p["estimate_kind"] else "≈ "
                        desc += f"; estimated {bound}{p['estimate_s']:.1f} s ({p['estimate_basis']})"
                alias = f" (same pass: {', '.join(p['aliases'])})" if p["aliases"] else ""
                console.print(f"  - {p['label']} [lines {p['lines']}]: {desc}{alias}", markup=False,
                              highlight=False)
                if p["time_s"] is None and p["markers"]:
                    console.print(f"      seen: {' | '.join(p['markers'][:4])}", markup=False, highlight=False)
    for n in rep.notes:
        console.print(f"note: {n}", markup=False, highlight=False, style="dim")
    if rep.logs_skipped:
        console.print("logs not used (duplicate seed): " + "; ".join(rep.logs_skipped), markup=False,
                      highlight=False, style="dim")
    if show_exit:
        console.print(Text(f"exit {code}: {EXIT_WORDS[code]}", style="bold " + ("green" if code == 0 else "red")))


# ---- json -----------------------------------------------------------------------------------


def verify_json(rep: VerifyReport) -> str:
    return json.dumps({"tool": "golf-eval", "command": "verify", **rep.to_dict()}, indent=2, default=str)


# ---- markdown -------------------------------------------------------------------------------


def verify_markdown(rep: VerifyReport) -> str:
    code = int(rep.exit_code())
    out = [f"## golf-eval verify `{rep.target}`", ""]
    out.append(f"**Result: exit {code} — {EXIT_WORDS[code]}.** {tier_line(rep)}."
               + (f" Claimed score line: `{rep.score_label}`." if rep.score_label else ""))
    out += ["", "| check | tier | status | result |", "|---|---|---|---|"]
    for c in rep.checks:
        out.append(f"| {c.name} | {c.tier} | {_mark(c)} | {md_cell(c.summary)} |")
    out += ["", "### Per seed", "",
            "| seed | log | val_loss | val_bpb | train s | eval s (logged) | unmeasured eval | artifact bytes |",
            "|---|---|---|---|---|---|---|---|"]
    for row in sorted(rep.seeds, key=_seed_key):
        um = ", ".join(row.eval_unmeasured) or "—"
        out.append(f"| {row.seed if row.seed is not None else '?'} | {md_cell(row.log)} | {number(row.val_loss)} | {number(row.val_bpb)} | "
                   f"{number(row.train_s, 1)} | {number(row.eval_logged_s, 1)} | {md_cell(um)} | "
                   f"{number(row.artifact_bytes)} |")
    details = [c for c in rep.checks if c.evidence and c.status != PASS]
    details.sort(key=lambda c: c.tier != "blocking")
    if details:
        out += ["", "### Details", ""]
        for c in details:
            out.append(f"- **{c.name}** ({c.tier}, {MARK[c.status]})")
            out += [f"  - {md_cell(e)}" for e in c.evidence]
    if rep.notes:
        out += ["", "### Not found in logs", ""] + [f"- {md_cell(n)}" for n in rep.notes]
    return "\n".join(out) + "\n"
