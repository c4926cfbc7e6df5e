"""The triage outputs: `triage.json` (the document, schema golf-audit-triage/1), `triage.md` (a
table to paste into an issue, leaderboard candidates first) and `index.html` (one self-contained
page: no network, inline CSS/JS/SVG; a sortable, filterable table, the claimed-score
distribution of legal vs flagged PRs, each PR's findings one click away).

Record fields (one per PR, in `prs`): pr, folder (null: no submission folder), other_folders,
how (open / merged / on main), commit, note, claimed {val_bpb, val_loss, name, author, ...},
record_claim (a main-track folder with a claimed val_bpb), verdict (clean / findings /
claims-fail / claims-unverified / not-audited), blocking [{kind rule|claim, rule, rule_id,
severity, file, line, function, message, evidence, fix}], advisories (same shape: low-severity
findings, advisory claim checks, notes), not_audited [reason], claims {exit_code, checks},
layers, time_s (the audit's own time; for a cached record, the time when it was audited),
cached, attempts, same_as (a PR with a byte-identical folder audited in this run)."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from harness.triage.work import CLAIMS_FAIL, CLAIMS_UNVERIFIED, CLEAN, FINDINGS, FLAGGED, NOT_AUDITED, VERDICTS

MAX_MD_CHARS = 60_000  # GitHub rejects issue bodies and comments over 65,536 characters
VERDICT_LABEL = {CLEAN: "✅ clean", FINDINGS: "❌ findings", CLAIMS_FAIL: "❌ claims fail",
                 CLAIMS_UNVERIFIED: "⚠️ claims unverified", NOT_AUDITED: "⚠️ not audited"}


def write_all(doc: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "triage.json", out / "triage.md", out / "index.html"]
    paths[0].write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    paths[1].write_text(render_markdown(doc), encoding="utf-8")
    paths[2].write_text(render_html(doc), encoding="utf-8")
    return paths


# ------------------------------------------------------------------ ordering
def bpb(rec: dict) -> float | None:
    v = (rec.get("claimed") or {}).get("val_bpb")
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def leaderboard(doc: dict) -> list[dict]:
    """Legal record claims (clean, main track, a claimed val_bpb), best (lowest) first."""
    return sorted((r for r in doc["prs"] if r["verdict"] == CLEAN and r.get("record_claim") and bpb(r) is not None),
                  key=lambda r: (bpb(r), r["pr"]))


def by_score(recs: list[dict]) -> list[dict]:
    return sorted(recs, key=lambda r: (bpb(r) is None, bpb(r) or 0.0, r["pr"]))


def where(b: dict) -> str:
    if b.get("line"):
        return f"{b.get('file')}:{b['line']}"
    return str(b.get("file") or "")


def blocking_text(rec: dict, limit: int = 3) -> str:
    items = [f"{b.get('rule_id') or 'claims'} {b['rule']} ({where(b)})" for b in rec["blocking"][:limit]]
    more = len(rec["blocking"]) - limit
    return "; ".join(items) + (f"; +{more} more" if more > 0 else "")


# ------------------------------------------------------------------ markdown
def _cell(text: Any, limit: int = 300) -> str:
    t = " ".join(str(text if text is not None else "").split())
    if len(t) > limit:
        t = t[: limit - 1] + "…"
    return t.replace("|", "\\|").replace("`", "'").replace("@", "@\u200b")


def _score(rec: dict) -> str:
    v = bpb(rec)
    return "—" if v is None else f"{v:.4f}"


def render_markdown(doc: dict) -> str:
    prs = doc["prs"]
    opts = doc.get("options", {})
    layers = "static" + (" + dynamic" if opts.get("dynamic") else "") + (" + claims" if opts.get("claims") else "")
    lines = [f"## golf-audit triage: {len(prs)} pull requests", "",
             f"main `{doc['main'][:12]}` · {doc['tool']} · {layers} · {doc['generated']} · "
             f"{doc['timing']['audited']} audited, {doc['timing']['from_cache']} from cache, "
             f"{doc['timing']['wall_s']:.0f} s" + (" · **interrupted**: PRs not reached are listed as not audited"
                                                   if doc.get("interrupted") else ""), "",
             "| verdict | PRs |", "|---|---:|"]
    lines += [f"| {VERDICT_LABEL[v]} | {doc['counts'].get(v, 0)} |" for v in VERDICTS]
    lb = leaderboard(doc)
    lines += ["", f"### Leaderboard candidates: legal record claims, best claimed score first ({len(lb)})", "",
              "| # | PR | claimed val_bpb | folder | advisories |", "|---:|---|---:|---|---|"]
    for i, r in enumerate(lb, 1):
        adv = ", ".join(sorted({a["rule"] for a in r["advisories"]}))
        lines.append(f"| {i} | #{r['pr']} | {_score(r)} | {_cell(r['folder'], 90)} | {_cell(adv, 120)} |")
    flagged = by_score([r for r in prs if r["verdict"] in FLAGGED])
    lines += ["", f"### Flagged: blocking findings or failed claims ({len(flagged)})", "",
              "| PR | claimed val_bpb | verdict | blocking |", "|---|---:|---|---|"]
    lines += [f"| #{r['pr']} | {_score(r)} | {VERDICT_LABEL[r['verdict']]} | {_cell(blocking_text(r))} |"
              for r in flagged]
    unver = by_score([r for r in prs if r["verdict"] == CLAIMS_UNVERIFIED])
    lines += ["", f"### Audited clean, claims unverified ({len(unver)})", "",
              "| PR | claimed val_bpb | not verified |", "|---|---:|---|"]
    for r in unver:
        checks = [c["name"] for c in (r.get("claims") or {}).get("checks", [])
                  if c["tier"] == "blocking" and c["status"] == "unverified"]
        what = ", ".join(checks) or (r.get("claims") or {}).get("error", "")
        lines.append(f"| #{r['pr']} | {_score(r)} | {_cell(what)} |")
    na = [r for r in prs if r["verdict"] == NOT_AUDITED]
    lines += ["", f"### Not audited ({len(na)})", "", "| PR | reason |", "|---|---|"]
    lines += [f"| #{r['pr']} | not audited: {_cell('; '.join(r['not_audited'][:2]) or 'no layer ran')} |" for r in na]
    other = by_score([r for r in prs if r["verdict"] == CLEAN and r not in lb])
    lines += ["", f"### Clean, not a record claim (non-record track, no claimed score, outside records/) "
              f"({len(other)})", "", "| PR | claimed val_bpb | folder |", "|---|---:|---|"]
    lines += [f"| #{r['pr']} | {_score(r)} | {_cell(r['folder'], 90)} |" for r in other]
    text = "\n".join(lines).rstrip() + "\n"
    if len(text) > MAX_MD_CHARS:
        text = text[: MAX_MD_CHARS - 200].rsplit("\n", 1)[0] + \
            "\n\n… (cut at GitHub's size limit: every PR is in triage.json and index.html)\n"
    return text


# ------------------------------------------------------------------ the plot
def score_plot(doc: dict, width: int = 720, height: int = 260, bins: int = 30) -> str:
    """Inline SVG: histogram of claimed val_bpb, legal (clean) vs flagged (findings or failed
    claims), side by side per bin. Claims outside the central 98% go to the two edge bins."""
    legal = [bpb(r) for r in doc["prs"] if r["verdict"] == CLEAN and bpb(r) is not None]
    flagged = [bpb(r) for r in doc["prs"] if r["verdict"] in FLAGGED and bpb(r) is not None]
    values = sorted(legal + flagged)
    title = f"Claimed val_bpb: {len(legal)} legal vs {len(flagged)} flagged PRs (lower is better)"
    if not values:
        return (f'<svg id="score-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="60" '
                f'role="img"><title>{html.escape(title)}</title><text x="10" y="30">no claimed scores</text></svg>')
    lo = values[int(0.01 * (len(values) - 1))]
    hi = values[int(math.ceil(0.99 * (len(values) - 1)))]
    if hi - lo < 1e-6:
        lo, hi = lo - 0.005, hi + 0.005
    step = (hi - lo) / bins

    def counts(xs: list[float]) -> list[int]:
        c = [0] * bins
        for x in xs:
            c[min(bins - 1, max(0, int((x - lo) / step)))] += 1
        return c

    cl, cf = counts(legal), counts(flagged)
    top = max(cl + cf + [1])
    ml, mr, mt, mb = 44, 12, 28, 40
    pw, ph = width - ml - mr, height - mt - mb
    bw = pw / bins
    parts = [f'<svg id="score-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="11">',
             f"<title>{html.escape(title)}</title>",
             f'<text x="{ml}" y="16" font-size="13">{html.escape(title)}</text>',
             f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#333"/>',
             f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#333"/>']
    for i in range(bins):
        x = ml + i * bw
        for j, (c, color, cls) in enumerate(((cl[i], "#2e7d32", "legal"), (cf[i], "#c62828", "flagged"))):
            if c:
                h = ph * c / top
                edge = " (includes claims beyond the axis)" if i in (0, bins - 1) else ""
                a, b = lo + i * step, lo + (i + 1) * step
                parts.append(f'<rect class="bar {cls}" x="{x + 1 + j * (bw - 2) / 2:.1f}" y="{mt + ph - h:.1f}" '
                             f'width="{max(1.0, (bw - 2) / 2):.1f}" height="{h:.1f}" fill="{color}">'
                             f'<title>{cls}: {c} PR(s), val_bpb {a:.4f}–{b:.4f}{edge}</title></rect>')
    decimals = max(2, min(6, int(math.ceil(-math.log10((hi - lo) / 5))) + 1))
    for k in range(6):
        v = lo + k * (hi - lo) / 5
        x = ml + k * pw / 5
        parts.append(f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" stroke="#333"/>')
        parts.append(f'<text x="{x:.1f}" y="{mt + ph + 16}" text-anchor="middle">{v:.{decimals}f}</text>')
    for k in range(3):
        v = top * k / 2
        y = mt + ph - ph * k / 2
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle">claimed val_bpb '
                 f'(axis {lo:.{decimals}f}–{hi:.{decimals}f}; outliers in the edge bins)</text>')
    lx, ly = ml + pw - 170, 7
    parts.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="#2e7d32"/>'
                 f'<text x="{lx + 14}" y="{ly + 9}">legal ({len(legal)})</text>')
    parts.append(f'<rect x="{lx + 85}" y="{ly}" width="10" height="10" fill="#c62828"/>'
                 f'<text x="{lx + 99}" y="{ly + 9}">flagged ({len(flagged)})</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# ------------------------------------------------------------------ html
def _page_rows(doc: dict) -> list[dict]:
    lb = {r["pr"]: i for i, r in enumerate(leaderboard(doc), 1)}
    rows = []
    for r in doc["prs"]:
        rows.append({
            "pr": r["pr"], "bpb": bpb(r), "verdict": r["verdict"], "folder": r.get("folder"),
            "rank": lb.get(r["pr"]), "record": bool(r.get("record_claim")),
            "author": (r.get("claimed") or {}).get("author") or (r.get("claimed") or {}).get("github_id") or "",
            "blocking": r["blocking"], "advisories": r["advisories"], "not_audited": r["not_audited"],
            "time": r.get("time_s"), "cached": bool(r.get("cached")), "how": r.get("how", ""),
            "note": r.get("note", ""), "others": r.get("other_folders") or [],
        })
    return rows


PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em} .meta{color:#555;font-size:.9em}
.chips span{display:inline-block;margin:.2em .4em .2em 0;padding:.15em .6em;border-radius:1em;background:#eee}
.controls{margin:.8em 0} .controls input,.controls select{margin-right:1em;padding:.2em}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border-bottom:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{cursor:pointer;background:#f4f4f4;user-select:none;position:sticky;top:0}
th.asc::after{content:" ▲"} th.desc::after{content:" ▼"}
tr.pr{cursor:pointer} tr.pr:hover{background:#f8f8ff}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.v-clean{color:#2e7d32} .v-findings,.v-claims-fail{color:#c62828;font-weight:600}
.v-not-audited,.v-claims-unverified{color:#b26a00}
tr.details td{background:#fafafa} .details ul{margin:.2em 0 .4em 1.2em;padding:0} code{font-size:.95em}
.hidden{display:none}
"""

PAGE_JS = r"""
(function(){
  "use strict";
  var rows = JSON.parse(document.getElementById("triage-data").textContent);
  var tbody = document.querySelector("#prs tbody");
  var state = {key: "rank", dir: 1};
  function esc(s){ return String(s == null ? "" : s).replace(/[&<>"]/g, function(c){
    return {"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]; }); }
  function where(b){ return b.line ? b.file + ":" + b.line : (b.file || ""); }
  function item(b){
    var head = "<b>" + esc(b.rule_id ? b.rule_id + " " + b.rule : "claims: " + b.rule) + "</b>";
    if (b.severity) head += " (" + esc(b.severity) + (b.status ? ", " + esc(b.status) : "") + ")";
    var loc = where(b) ? " <code>" + esc(where(b)) + (b["function"] ? " in " + esc(b["function"]) + "()" : "") + "</code>" : "";
    var ev = (b.evidence || []).map(function(e){ return "<li>" + esc(e) + "</li>"; }).join("");
    return "<li>" + head + loc + ": " + esc(b.message) + (ev ? "<ul>" + ev + "</ul>" : "") + "</li>";
  }
  function details(r){
    var h = "";
    if (r.blocking.length) h += "<div><b>Blocking</b><ul>" + r.blocking.map(item).join("") + "</ul></div>";
    if (r.not_audited.length) h += "<div><b>Not audited</b><ul>" + r.not_audited.map(function(x){ return "<li>" + esc(x) + "</li>"; }).join("") + "</ul></div>";
    if (r.advisories.length) h += "<div><b>Advisories</b><ul>" + r.advisories.map(item).join("") + "</ul></div>";
    var meta = [];
    if (r.how) meta.push(esc(r.how));
    if (r.note) meta.push(esc(r.note));
    if (r.others.length) meta.push("other folders: " + esc(r.others.join(", ")));
    if (r.cached) meta.push("from cache");
    if (meta.length) h += "<div class=\"meta\">" + meta.join(" · ") + "</div>";
    return h || "<div>nothing to report</div>";
  }
  function build(){
    rows.forEach(function(r){
      var tr = document.createElement("tr");
      tr.className = "pr"; tr.dataset.pr = r.pr; tr.dataset.verdict = r.verdict;
      var first = r.blocking.length ? r.blocking[0] : null;
      var summary = first ? (first.rule_id || "claims") + " " + first.rule + " (" + where(first) + ")" +
        (r.blocking.length > 1 ? " (+" + (r.blocking.length - 1) + ")" : "") :
        (r.not_audited.length ? "not audited: " + r.not_audited[0] : "");
      tr.innerHTML = "<td class=\"num\">" + r.pr + "</td>" +
        "<td class=\"num bpb\">" + (r.bpb == null ? "—" : r.bpb.toFixed(4)) + "</td>" +
        "<td class=\"v-" + r.verdict + "\">" + esc(r.verdict) + "</td>" +
        "<td class=\"num\">" + (r.rank == null ? "" : r.rank) + "</td>" +
        "<td>" + esc(r.folder == null ? "—" : (r.folder || "(root)")) + "</td>" +
        "<td>" + esc(r.author) + "</td>" +
        "<td>" + esc(summary) + "</td>" +
        "<td class=\"num\">" + r.advisories.length + "</td>" +
        "<td class=\"num\">" + (r.time == null ? "" : r.time.toFixed(1)) + "</td>";
      var dt = document.createElement("tr");
      dt.className = "details hidden"; dt.dataset.for = r.pr;
      dt.innerHTML = "<td colspan=\"9\">" + details(r) + "</td>";
      tr.addEventListener("click", function(){ dt.classList.toggle("hidden"); });
      r._tr = tr; r._dt = dt;
    });
  }
  function val(r, key){
    if (key === "bpb" || key === "rank" || key === "time") return r[key];
    if (key === "blocking" || key === "advisories") return r[key].length;
    return r[key] == null ? "" : String(r[key]).toLowerCase();
  }
  function cmp(a, b){
    var x = val(a, state.key), y = val(b, state.key);
    var xn = x == null || x === "", yn = y == null || y === "";
    if (xn && yn) return a.pr - b.pr;
    if (xn) return 1;  // missing values last, whichever the direction
    if (yn) return -1;
    if (x < y) return -state.dir;
    if (x > y) return state.dir;
    return a.pr - b.pr;
  }
  function visible(r){
    var q = document.getElementById("filter").value.trim().toLowerCase();
    var v = document.getElementById("verdict").value;
    var rec = document.getElementById("records").checked;
    if (v && r.verdict !== v && !(v === "flagged" && (r.verdict === "findings" || r.verdict === "claims-fail"))) return false;
    if (rec && !r.record) return false;
    if (!q) return true;
    var hay = [r.pr, r.folder, r.author, r.verdict].concat(r.blocking.map(function(b){ return b.rule + " " + (b.rule_id || "") + " " + where(b); }))
      .concat(r.not_audited).join(" ").toLowerCase();
    return hay.indexOf(q) >= 0;
  }
  function render(){
    var sorted = rows.slice().sort(cmp);
    var frag = document.createDocumentFragment(), shown = 0;
    sorted.forEach(function(r){
      var on = visible(r);
      r._tr.classList.toggle("hidden", !on);
      if (!on) r._dt.classList.add("hidden");
      frag.appendChild(r._tr); frag.appendChild(r._dt);
      if (on) shown++;
    });
    tbody.appendChild(frag);
    document.getElementById("shown").textContent = shown + " of " + rows.length + " PRs shown";
    document.querySelectorAll("#prs th").forEach(function(th){
      th.classList.remove("asc", "desc");
      if (th.dataset.key === state.key) th.classList.add(state.dir > 0 ? "asc" : "desc");
    });
  }
  document.querySelectorAll("#prs th").forEach(function(th){
    th.addEventListener("click", function(){
      var k = th.dataset.key;
      state = {key: k, dir: state.key === k ? -state.dir : 1};
      render();
    });
  });
  ["filter", "verdict", "records"].forEach(function(id){
    var el = document.getElementById(id);
    el.addEventListener("input", render); el.addEventListener("change", render);
  });
  build(); render();
  window.triage = {rows: rows, render: render, sortBy: function(k, dir){ state = {key: k, dir: dir || 1}; render(); }};
})();
"""


def render_html(doc: dict) -> str:
    rows = _page_rows(doc)
    data = json.dumps(rows, default=str).replace("</", "<\\/").replace("<!--", "<\\!--")
    opts = doc.get("options", {})
    layers = "static" + (" + dynamic" if opts.get("dynamic") else "") + (" + claims" if opts.get("claims") else "")
    chips = "".join(f'<span class="v-{v}">{html.escape(v)}: {doc["counts"].get(v, 0)}</span>' for v in VERDICTS)
    options = "".join(f'<option value="{v}">{v}</option>' for v in ("flagged",) + VERDICTS)
    heads = [("pr", "PR"), ("bpb", "claimed val_bpb"), ("verdict", "verdict"), ("rank", "candidate #"),
             ("folder", "folder"), ("author", "author"), ("blocking", "blocking / reason"),
             ("advisories", "advisories"), ("time", "audit s")]
    th = "".join(f'<th data-key="{k}">{html.escape(t)}</th>' for k, t in heads)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>golf-audit triage: {len(rows)} pull requests</title>
<style>{PAGE_CSS}</style></head>
<body>
<h1>golf-audit triage: {len(rows)} pull requests</h1>
<div class="meta">main <code>{html.escape(doc['main'][:12])}</code> · {html.escape(doc['tool'])} · {html.escape(layers)} ·
{html.escape(doc['generated'])} · {doc['timing']['audited']} audited, {doc['timing']['from_cache']} from cache</div>
<div class="chips">{chips}</div>
<figure>{score_plot(doc)}</figure>
<div class="controls">
<input id="filter" type="search" placeholder="filter: PR, folder, author, rule, reason" size="40">
<select id="verdict"><option value="">all verdicts</option>{options}</select>
<label><input id="records" type="checkbox"> record claims only</label>
<span id="shown"></span>
</div>
<table id="prs"><thead><tr>{th}</tr></thead><tbody></tbody></table>
<p class="meta">Click a row for its findings; click a column to sort (again to reverse). Legal = clean;
flagged = blocking findings or failed claims; candidate # ranks legal record claims by claimed score.</p>
<script id="triage-data" type="application/json">{data}</script>
<script>{PAGE_JS}</script>
</body></html>
"""
