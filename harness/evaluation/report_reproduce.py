"""Render `golf-eval reproduce` results: claimed vs measured, side by side."""
from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.evaluation.claims import PASS
from harness.evaluation.report import EXIT_WORDS, MARK, STYLE, render_verify_text, verify_markdown
from harness.evaluation.reproduce import ReproduceReport


def _f(x: Any, d: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{d}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _side_by_side(rep: ReproduceReport) -> list[tuple[str, str, str, str, str]]:
    """(seed, quantity, claimed, fresh log, our measurement)."""
    out = []
    for row in rep.rows:
        s = str(row["seed"])
        out.append((s, "val_bpb", _f(row["val_bpb"]["claimed"], 4), _f(row["val_bpb"]["fresh_log"], 4), "—"))
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
    for run in rep.runs:
        status = "ok" if not run.error else run.error
        console.print(f"seed {run.seed}: {status}; {run.wall_s:.1f} s wall; log {run.log_path}", markup=False,
                      highlight=False)
        console.print(f"  command: {' '.join(run.command)}", markup=False, highlight=False, style="dim")
        if run.env_added:
            env = " ".join(f"{k}={v}" for k, v in sorted(run.env_added.items()))
            console.print(f"  env: {env}", markup=False, highlight=False, style="dim")
        for p in run.phases:
            logged = f"{p.logged_s:.1f} s logged" if p.logged_s is not None else "no time in log"
            console.print(f"  pass {p.label}: measured {p.measured_s:.1f} s ({logged})", markup=False,
                          highlight=False)
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
    console.print(Text(f"exit {code}: {EXIT_WORDS[code]}", style="bold " + ("green" if code == 0 else "red")))


def reproduce_json(rep: ReproduceReport) -> str:
    return json.dumps({"tool": "golf-eval", "command": "reproduce", **rep.to_dict()}, indent=2, default=str)


def reproduce_markdown(rep: ReproduceReport) -> str:
    code = int(rep.exit_code())
    out = [f"## golf-eval reproduce `{rep.target}`" + (" (toy, CPU)" if rep.toy else ""), "",
           f"**Result: exit {code} — {EXIT_WORDS[code]}.**", "",
           "| seed | quantity | claimed (submission logs) | fresh log | measured by golf-eval |",
           "|---|---|---|---|---|"]
    out += [f"| {' | '.join(r)} |" for r in _side_by_side(rep)]
    if rep.checks:
        out += [""] + [f"- **{c.name}** {MARK[c.status]}: {c.summary}" for c in rep.checks]
    if rep.notes:
        out += ["", "### Notes", ""] + [f"- {n}" for n in rep.notes]
    if rep.fresh is not None:
        out += ["", verify_markdown(rep.fresh)]
    return "\n".join(out) + "\n"
