"""Each report format, from AuditResults built here (no engine run): structure, every part of the
result shown, SARIF fields, fingerprints, and the exit-code combination."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.core.findings import (AuditResult, ExitCode, FileReport, Finding, Layer, Location, NotAudited,
                              Severity, worst_exit)
from harness.reports import json_report, markdown, sarif, text
from harness.reports.sarif_check import validate_sarif
from harness.core.registry import all_rules
from harness.core.serialize import merge_results, result_from_dict, result_to_dict

RULES = all_rules()
GA001 = next(r for r in RULES if r.id == "GA001")
GA006 = next(r for r in RULES if r.id == "GA006")
GA010 = next(r for r in RULES if r.id == "GA010")


def finding(rule=GA001, line=10, layer=Layer.STATIC, source="opt.step()", function="ttt", **kw) -> Finding:
    return rule.finding(layer, f"{function}() trains before it scores", Location(
        "train_gpt.py", line, column=4, function=function, source_line=source),
        evidence=[f"step at line {line}: `{source}`", "score at line 99:\n    `loss_sum += nll`"],
        reachable=True, flags={"TTT_ENABLED": "1"}, **kw)


def sample(tmp_path: Path) -> AuditResult:
    folder = tmp_path / "sub"
    folder.mkdir(exist_ok=True)
    packed = finding(GA001, line=467, function="eval_ttt", source="optimizer.step()")
    packed.location.packed_in, packed.location.packed_line = "train_gpt.py", 2
    return AuditResult(
        target=str(folder),
        findings=[finding(), finding(line=20),  # two hits on identical lines: occurrence 0 and 1
                  finding(line=30, source="opt2.step()", suppressed="reviewed: legal score-first"),
                  finding(GA006, line=2, source="exec(lzma...)", function=None), packed,
                  finding(GA010, line=50, layer=Layer.PROBE, source="logits = model(x)", function="eval_val")],
        not_audited=[NotAudited(str(folder), "not audited: toy run timed out after 300 s", layer=Layer.TRACE)],
        files=[FileReport("train_gpt.py", "ab" * 32, 100)],
        notes=["ran eager: torch.compile shimmed"],
        env_flags={"TTT_ENABLED": "1"},
        layers_run=["static", "trace", "probe"],
        stats={"static_s": 0.5},
        unused_suppressions=[Location("train_gpt.py", 5, source_line="# golf-audit: ignore[rescored-tokens] -- x")],
    )


# ---------------------------------------------------------------- exit codes
def test_exit_codes_and_combination():
    clean = AuditResult("a", layers_run=["static"])
    low = AuditResult("b", findings=[finding(GA006)])
    not_audited = AuditResult("c", not_audited=[NotAudited("c", "syntax error")])
    both = AuditResult("d", findings=[finding()], not_audited=[NotAudited("d", "syntax error")])
    unused = AuditResult("e", unused_suppressions=[Location("x.py", 1)])
    suppressed = AuditResult("f", findings=[finding(suppressed="why")])
    assert clean.exit_code() == ExitCode.CLEAN
    assert low.exit_code() == ExitCode.CLEAN and low.exit_code(Severity.LOW) == ExitCode.FINDINGS
    assert not_audited.exit_code() == ExitCode.NOT_AUDITABLE
    assert both.exit_code() == ExitCode.FINDINGS  # 1 outranks 3
    assert unused.exit_code() == ExitCode.FINDINGS  # an unused suppression is a finding
    assert suppressed.exit_code() == ExitCode.CLEAN
    assert worst_exit([ExitCode.CLEAN, ExitCode.NOT_AUDITABLE]) == ExitCode.NOT_AUDITABLE
    assert worst_exit([ExitCode.NOT_AUDITABLE, ExitCode.FINDINGS, ExitCode.CLEAN]) == ExitCode.FINDINGS
    assert worst_exit([]) == ExitCode.CLEAN


# ---------------------------------------------------------------- text
def test_text_shows_every_part(tmp_path):
    r = sample(tmp_path)
    out = text.render([r], RULES)
    assert out.startswith(f"FINDINGS {r.target}")
    assert "5 finding(s), 1 unused suppression(s)" in out.splitlines()[0]  # 6 hits, one suppressed
    assert "GA001 train-before-score (high, confidence medium, static)" in out
    assert "train_gpt.py:10 in ttt() — reachable from main with TTT_ENABLED=1" in out
    assert "• score at line 99: `loss_sum += nll`" in out  # multi-line evidence on one line
    assert "fix: " + GA001.fix in out
    assert "unpacked from train_gpt.py:2" in out
    assert "GA010 future-dependent-score" in out and "probe" in out
    assert "suppressed:" in out and "reviewed: legal score-first" in out
    assert "unused suppression at train_gpt.py:5" in out
    # the layer's own "not audited:" prefix is not doubled
    assert f"not audited: {r.target}: toy run timed out after 300 s (trace)" in out
    assert "note: ran eager: torch.compile shimmed" in out
    assert "\x1b[" not in out
    assert "\x1b[" in text.render([r], RULES, color=True)


def test_text_verdicts(tmp_path):
    out = text.render([AuditResult("a", layers_run=["static"]),
                       AuditResult("b", not_audited=[NotAudited("b", "no such file or directory")])], RULES)
    assert out.splitlines()[0].startswith("CLEAN a")
    assert "NOT AUDITED b" in out and "not audited: b: no such file or directory" in out


# ---------------------------------------------------------------- json
def test_json_holds_everything_and_round_trips(tmp_path):
    r = sample(tmp_path)
    doc = json.loads(json_report.render([r], RULES, Severity.MEDIUM))
    assert doc["schema"] == "golf-audit/1" and doc["tool"]["name"] == "golf-audit"
    assert doc["exit_code"] == 1 and doc["fail_on"] == "medium"
    assert [x["id"] for x in doc["rules"]] == [x.id for x in RULES]
    res = doc["results"][0]
    for key in ("target", "exit_code", "findings", "not_audited", "files", "notes", "env_flags", "layers_run",
                "stats", "unused_suppressions"):
        assert key in res
    f = res["findings"][0]
    assert f["severity"] == "high" and f["confidence"] == "medium" and f["layer"] == "static"
    assert f["location"]["line"] == 10 and f["flags"] == {"TTT_ENABLED": "1"} and f["reachable"] is True
    assert result_to_dict(result_from_dict(res)) == res  # the cache relies on this


def test_json_survives_odd_stats():
    r = AuditResult("a", stats={"path": Path("/x"), "n": 3})
    assert json.loads(json_report.render([r], RULES))["results"][0]["stats"] == {"path": "/x", "n": 3}


# ---------------------------------------------------------------- sarif
def test_sarif_structure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = sample(tmp_path)
    doc = sarif.build([r], RULES)
    assert validate_sarif(doc) == []
    assert doc["version"] == "2.1.0" and "sarif" in doc["$schema"]
    static, dynamic = doc["runs"]
    assert static["automationDetails"]["id"] == "golf-audit/static/"
    assert dynamic["automationDetails"]["id"] == "golf-audit/dynamic/"
    for run in doc["runs"]:
        driver = run["tool"]["driver"]
        assert driver["name"] == "golf-audit" and driver["version"] and driver["informationUri"]
        ids = [d["id"] for d in driver["rules"]]
        assert ids[:len(RULES)] == [x.id for x in RULES]  # every enabled rule, fired or not
        d = driver["rules"][0]
        assert d["name"] == GA001.name and d["help"]["markdown"] == GA001.documentation()
        assert d["properties"]["precision"] == "medium" and d["properties"]["security-severity"]
    # static run: static findings (incl. suppressed) + the unused suppression; dynamic run: the probe hit
    assert [x["ruleId"] for x in static["results"]] == ["GA001", "GA001", "GA001", "GA006", "GA001", "GA000"]
    assert [x["ruleId"] for x in dynamic["results"]] == ["GA010"]
    first = static["results"][0]
    assert first["level"] == "error" and first["ruleIndex"] == 0
    loc = first["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "sub/train_gpt.py" and loc["region"]["startLine"] == 10
    assert "Evidence: step at line 10" in first["message"]["text"] and "Fix: " in first["message"]["text"]
    # identical key, two hits: different occurrence, different fingerprint
    fps = [x["partialFingerprints"]["primaryLocationLineHash"] for x in static["results"]]
    assert len(set(fps)) == len(fps)
    assert fps[0] == r.findings[0].fingerprint(0) and fps[1] == r.findings[1].fingerprint(1)
    assert static["results"][2]["suppressions"] == [{"kind": "inSource",
                                                     "justification": "reviewed: legal score-first"}]
    assert "suppressions" not in first
    # packed code: points at the pack's line in the real file, names the unpacked line
    packed = static["results"][4]
    assert packed["locations"][0]["physicalLocation"]["region"]["startLine"] == 2
    assert "line 467 of the code unpacked" in packed["message"]["text"]
    unused = static["results"][5]
    assert unused["ruleIndex"] == len(RULES) and unused["level"] == "warning"
    # the trace layer's timeout: an error notification, execution not successful, in the dynamic run
    assert static["invocations"][0]["executionSuccessful"] is True
    inv = dynamic["invocations"][0]
    assert inv["executionSuccessful"] is False
    assert inv["toolExecutionNotifications"] == [{"level": "error", "message": {
        "text": f"not audited: {r.target}: toy run timed out after 300 s"}}]


def test_sarif_uris_relative_to_root_with_forward_slashes(tmp_path, monkeypatch):
    nested = tmp_path / "records" / "track" / "sub"
    nested.mkdir(parents=True)
    r = AuditResult(str(nested), findings=[finding()], layers_run=["static"])
    monkeypatch.chdir(tmp_path)
    uri = lambda doc: doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri(sarif.build([r], RULES)) == "records/track/sub/train_gpt.py"
    assert uri(sarif.build([r], RULES, root=tmp_path / "records")) == "track/sub/train_gpt.py"
    r.target = "records/track/sub"  # relative target, as typed on the command line
    assert uri(sarif.build([r], RULES)) == "records/track/sub/train_gpt.py"


def test_sarif_only_runs_for_layers_that_ran():
    static_only = sarif.build([AuditResult("a", layers_run=["static"])], RULES)
    assert [x["automationDetails"]["id"] for x in static_only["runs"]] == ["golf-audit/static/"]
    assert static_only["runs"][0]["results"] == [] and validate_sarif(static_only) == []
    dyn_only = sarif.build([AuditResult("a", layers_run=["trace"])], RULES)
    assert [x["automationDetails"]["id"] for x in dyn_only["runs"]] == ["golf-audit/dynamic/"]


def test_sarif_fingerprint_stable_when_lines_shift(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = sample(tmp_path)
    b = copy.deepcopy(a)
    for f in b.findings:
        f.location.line += 7
    fp = lambda r: [x["partialFingerprints"]["primaryLocationLineHash"] for x in sarif.build([r], RULES)["runs"][0]["results"]]
    assert fp(a) == fp(b)
    b.findings[0].location.source_line = "opt.step()  # changed"
    assert fp(a)[0] != fp(b)[0]


def test_sarif_checker_catches_missing_fields():
    assert validate_sarif({"version": "2.0.0", "runs": []})
    assert validate_sarif([]) == ["document is not a JSON object"]
    doc = {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
           "runs": [{"tool": {"driver": {"name": "x", "rules": [{"id": "A"}]}},
                     "invocations": [{"executionSuccessful": True,
                                      "toolExecutionNotifications": [{"level": "error", "message": {"text": "x"}}]}],
                     "results": [{"ruleId": "B", "ruleIndex": 3, "level": "bad", "message": {},
                                  "suppressions": [{"kind": "maybe"}],
                                  "locations": [{"physicalLocation": {"artifactLocation": {"uri": "C:\\abs"},
                                                                      "region": {"startLine": 0}}}]}]},
                    {"tool": {"driver": {"name": "x", "rules": []}}}]}
    problems = "\n".join(validate_sarif(doc))
    for needle in ("driver.version", "informationUri", "shortDescription", "fullDescription", "help.text",
                   "precision", "security-severity or problem.severity", "ruleId 'B'", "ruleIndex", "level",
                   "message.text", "repo-relative", "startLine", "primaryLocationLineHash", "suppressions[0].kind",
                   "executionSuccessful true", "must list every enabled rule", "results must be a list",
                   "distinct automationDetails.id"):
        assert needle in problems, needle


# ---------------------------------------------------------------- markdown
def test_markdown_review(tmp_path):
    r = sample(tmp_path)
    out = markdown.render([r], RULES)
    assert out.startswith(f"### golf-audit: ❌ findings — `{r.target}`")
    rows = [ln for ln in out.splitlines() if ln.startswith("| `")]
    assert len(rows) == len(RULES)  # one line per enabled check
    row = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in rows}
    assert row["`train-before-score` (GA001)"] == "❌ 3 finding(s)"  # the suppressed one is not counted
    assert row["`future-dependent-score` (GA010)"] == "❌ 1 finding(s)"
    assert row["`network-at-eval` (GA005)"] == "✅ clean"  # static only, no finding
    assert row["`hash-key-reads-target` (GA003)"] == "⚠️ not audited"  # clean statically, its trace layer timed out
    assert row["`incomplete-scoring` (GA007)"] == "⚠️ not audited"  # its layer (trace) timed out
    assert "toy run timed out" in [ln for ln in rows if "GA007" in ln][0]
    for section in ("#### Findings", "#### Not audited", "#### Suppressed", "#### Unused suppressions", "Notes"):
        assert section in out
    assert "*Fix:*" in out and "reachable with TTT_ENABLED=1" in out


def test_markdown_verdicts_and_not_run():
    clean = markdown.render([AuditResult("a", layers_run=["static"])], RULES)
    assert clean.startswith("### golf-audit: ✅ clean")
    assert "| `incomplete-scoring` (GA007) | ➖ not run |" in clean  # trace layer not requested
    na = markdown.render([AuditResult("b", layers_run=["static"], not_audited=[NotAudited("b", "syntax error")])], RULES)
    assert na.startswith("### golf-audit: ⚠️ not audited") and "| ⚠️ not audited | syntax error |" in na


# ---------------------------------------------------------------- merge
def test_merge_static_and_dynamic():
    static = AuditResult("a", findings=[finding()], layers_run=["static"], notes=["n1"], env_flags={"X": "1"},
                         files=[FileReport("train_gpt.py", "0" * 64, 3)])
    dynamic = AuditResult("a", findings=[finding(GA010, layer=Layer.PROBE)], layers_run=["trace", "probe"],
                          notes=["n1", "n2"], not_audited=[NotAudited("a", "probe failed", layer=Layer.PROBE)],
                          files=[FileReport("train_gpt.py", "0" * 64, 3)])
    m = merge_results(static, dynamic)
    assert [f.rule_id for f in m.findings] == ["GA001", "GA010"]
    assert m.layers_run == ["static", "trace", "probe"] and m.notes == ["n1", "n2"] and len(m.files) == 1
    assert m.exit_code() == ExitCode.FINDINGS and static.findings == [static.findings[0]]  # inputs untouched


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "markdown"])
def test_every_format_renders_an_empty_run(fmt):
    from harness.reports import FORMATS
    assert FORMATS[fmt]([], RULES, Severity.MEDIUM) is not None


def test_reports_do_not_depend_on_flag_insertion_order():
    a = AuditResult("a", findings=[finding()], env_flags={"RANK": "0", "WORLD_SIZE": "1"})
    b = AuditResult("a", findings=[finding()], env_flags={"WORLD_SIZE": "1", "RANK": "0"})
    b.findings[0].flags = {"B": "1", "A": "2"}
    a.findings[0].flags = {"A": "2", "B": "1"}
    for fmt in ("text", "json", "markdown"):
        from harness.reports import FORMATS
        assert FORMATS[fmt]([a], RULES, Severity.MEDIUM) == FORMATS[fmt]([b], RULES, Severity.MEDIUM), fmt
    assert sarif.render([a], RULES) == sarif.render([b], RULES)  # the text, not only equal dicts
