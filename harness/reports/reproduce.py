"""Render `golf-eval reproduce` results: claimed vs measured, side by side."""
from __future__ import annotations

import json
from functools import partial

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.evaluation.verify_report import PASS
from harness.evaluation.reproduce import ReproduceReport
from harness.reports.common import number
from harness.reports.verify import EXIT_WORDS, MARK, STYLE, render_verify_text, verify_markdown


_f = partial(number, digits=1)  # seconds to one place; byte counts in full


def _side_by_side(rep: ReproduceReport) -> list[tuple[str, str, str, str, str]]:
    """(seed, quantity, claimed, fresh log, our measurement)."""
    out = []
    for row in rep.rows:
        s = str(row["seed"])
        v = row["val_bpb"]
        out.append((s, f"val_bpb ({v['label']})" if v.get("label") else "val_bpb", number(v["claimed"]),
                    number(v["fresh_log"]), "—"))
        t = row["train_s"]
        out.append((s, "train s", _f(t["claimed_log"]), _f(t["fresh_log"]),
                    f"{_f(t['measured_loop'])} loop / {_f(t['measured_from_start'])} from process start"))
        e = row["eval_s"]
        out.append((s, "eval s (all passes)", _f(e["claimed_log"]), _f(e["fresh_log"]),
                    f"{_f(e['measured'])} passes / {_f(e['measured_after_train'])} until exit"))
        a = row["artifact_bytes"]
        out.append((s, "artifact bytes", _f(a["claimed_log"]), _f(a["fresh_log"]), _f(a["measured_files"])))
    return out


def render_reproduce_text(rep: ReproduceReport, console: Console) -> None:
    console.print(Text(f"golf-eval reproduce {rep.target}" + (" (toy, CPU)" if rep.toy else ""), style="bold"))
    for w in rep.warnings:
        console.print(Text(f"warning: {w}", style="bold yellow"))
    for run in rep.runs:
        status = "ok" if not run.error else run.error
        console.print(f"seed {run.seed}: {status}; {run.wall_s:.1f} s wall; log {run.log_path}", markup=False,
                      highlight=False)
        console.print(f"  command: {' '.join(run.command)}", markup=False, highlight=False, style="dim")
        if run.env_added:
            env = " ".join(f"{k}={v}" for k, v in sorted(run.env_added.items()))
            console.print(f"  env: {env}", markup=False, highlight=False, style="dim")
        console.print(f"  train: measured {_f(run.measured_train_loop_s)} s first step → end of training, "
                      f"{_f(run.measured_train_s)} s from launch; log {_f(run.logged.get('train_s'))} s",
                      markup=False, highlight=False)
        for p in run.phases:
            logged = f"{p.logged_s:.1f} s logged" if p.logged_s is not None else "no time in log"
            console.print(f"  pass {p.label}: measured {p.measured_s:.1f} s ({logged})", markup=False,
                          highlight=False)
        if run.model_file is not None:
            code = ", ".join(run.code_files) if len(run.code_files) <= 3 else f"{len(run.code_files)} files"
            console.print(f"  artifact: {run.model_file} {_f(run.model_bytes)} + code {_f(run.code_bytes)} ({code}) = "
                          f"{_f(run.measured_artifact_bytes)} bytes measured; log {_f(run.logged.get('artifact_bytes'))}",
                          markup=False, highlight=False)
    table = Table(title="claimed vs measured", show_header=True, header_style="bold")
    for col in ("seed", "quantity", "claimed (submission logs)", "fresh log", "measured by golf-eval"):
        table.add_column(col, overflow="fold")
    for row in _side_by_side(rep):
        table.add_row(*row)
    console.print(table)
    for c in rep.checks:
        console.print(Text(f"{MARK[c.status]} {c.name}: {c.summary}", style=STYLE[c.status]))
        if c.status != PASS:
            for e in c.evidence:
                console.print(f"    {e}", markup=False, highlight=False)
    if rep.fresh is not None:
        console.print(Text("verify on the fresh logs:", style="bold"))
        render_verify_text(rep.fresh, console, verbose=False, show_exit=False)
    for n in rep.notes:
        console.print(f"note: {n}", markup=False, highlight=False, style="dim")
    code = int(rep.exit_code())
    console.print(Text(f"exit {code}: {_exit_words(rep)}", style="bold " + ("green" if code == 0 else "red")))


def _exit_words(rep: ReproduceReport) -> str:
    code = int(rep.exit_code())
    if not rep.toy:
        return EXIT_WORDS[code]
    problems = rep.toy_problems()
    if problems:
        return "toy run incomplete: " + "; ".join(problems)
    return (f"toy run complete ({len(rep.runs)} seed(s) ran; train, eval and artifact measured); the claims are "
            "8×H100 numbers, not verified at toy scale")


def reproduce_json(rep: ReproduceReport) -> str:
    return json.dumps({"tool": "golf-eval", "command": "reproduce", **rep.to_dict()}, indent=2, default=str)


def reproduce_markdown(rep: ReproduceReport) -> str:
    code = int(rep.exit_code())
    out = [f"## golf-eval reproduce `{rep.target}`" + (" (toy, CPU)" if rep.toy else ""), "",
           f"**Result: exit {code} — {_exit_words(rep)}.**", ""]
    out += [f"> ⚠️ **Warning:** {w}" for w in rep.warnings] + ([""] if rep.warnings else [])
    out += ["| seed | quantity | claimed (submission logs) | fresh log | measured by golf-eval |",
            "|---|---|---|---|---|"]
    out += [f"| {' | '.join(r)} |" for r in _side_by_side(rep)]
    if rep.checks:
        out += [""] + [f"- **{c.name}** {MARK[c.status]}: {c.summary}" for c in rep.checks]
    if rep.notes:
        out += ["", "### Notes", ""] + [f"- {n}" for n in rep.notes]
    if rep.fresh is not None:
        out += ["", verify_markdown(rep.fresh)]
    return "\n".join(out) + "\n"
