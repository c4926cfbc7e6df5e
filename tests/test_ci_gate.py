"""The pull-request gate (`golf-audit ci`) on throwaway git repositories shaped like the challenge repo.

The base commit holds a root train_gpt.py, a data script and one legal record (our fixture
submissions/baseline_sliding). Each PR is a branch off it; the gate runs with --head BRANCH, so it
reads the PR's committed files, not the work tree."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.ci.git_changes import Change
from harness.cli.audit import main as cli_main
from harness.core.findings import ExitCode, Severity
from harness.reports.sarif_check import validate_sarif
from harness.core.registry import all_rules, rule_by_name
from harness.core.registry import rule_by_name

check_pr = rule_by_name("submission-layout").check_change

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "submissions"
TRACK = "records/track_10min_16mb"
BASE_RECORD = f"{TRACK}/2026-03-19_SlidingWindowEval"
ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], env=ENV, check=True, capture_output=True,
                          text=True).stdout


def copy_fixture(name: str, dest: Path) -> None:
    # expected.json is our test metadata, not part of a submission
    shutil.copytree(FIXTURES / name, dest, ignore=shutil.ignore_patterns("expected.json", "__pycache__"))


def branch(repo: Path, name: str, edit) -> None:
    git(repo, "checkout", "-q", "-b", name, "main")
    edit(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", name)
    git(repo, "checkout", "-q", "main")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("challenge")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "commit.gpgsign", "false")
    (repo / "train_gpt.py").write_text("print('the challenge baseline')\n")
    (repo / "data").mkdir()
    (repo / "data" / "cached_challenge_fineweb.py").write_text("print('download shards')\n")
    copy_fixture("baseline_sliding", repo / BASE_RECORD)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")

    branch(repo, "pr-legal", lambda r: copy_fixture("legal_score_first_ttt", r / TRACK / "2026-04-01_LegalTTT"))
    branch(repo, "pr-713", lambda r: copy_fixture("pr713", r / TRACK / "2026-03-25_10L_LoRA_TTT"))

    def legal_plus_edits(r: Path) -> None:
        copy_fixture("legal_score_first_ttt", r / TRACK / "2026-04-01_LegalTTT")
        with open(r / BASE_RECORD / "README.md", "a") as fh:
            fh.write("\nedited by another PR\n")
        (r / "train_gpt.py").write_text("print('changed root script')\n")
    branch(repo, "pr-edits", legal_plus_edits)

    def no_submission_json(r: Path) -> None:
        copy_fixture("legal_score_first_ttt", r / TRACK / "2026-04-01_NoJson")
        (r / TRACK / "2026-04-01_NoJson" / "submission.json").unlink()
    branch(repo, "pr-nojson", no_submission_json)

    def symlinked_script(r: Path) -> None:
        folder = r / TRACK / "2026-04-01_Link"
        copy_fixture("legal_score_first_ttt", folder)
        (folder / "helper.py").symlink_to("../../../train_gpt.py")
    branch(repo, "pr-symlink", symlinked_script)
    return repo


def run_ci(repo: Path, out: Path, head: str, *extra: str) -> int:
    cwd = os.getcwd()
    os.chdir(repo)  # the gate runs inside the checkout, as in CI
    try:
        return cli_main(["ci", "--base", "main", "--head", head, "--out", str(out), *extra])
    finally:
        os.chdir(cwd)


def outputs(out: Path) -> tuple[dict, str, dict]:
    sarif = json.loads((out / "golf-audit.sarif").read_text())
    summary = (out / "summary.md").read_text()
    verdict = json.loads((out / "verdict.json").read_text())
    return sarif, summary, verdict


def run_gate(repo: Path, out: Path, head: str, expect: ExitCode) -> tuple[dict, str, dict]:
    """Run the gate on `head`, check its exit code and that its SARIF validates; its outputs."""
    code = run_ci(repo, out, head)
    sarif, summary, verdict = outputs(out)
    assert code == expect, summary
    assert validate_sarif(sarif) == []
    return sarif, summary, verdict


def sarif_results(sarif: dict, category: str) -> list[dict]:
    return [res for run in sarif["runs"] if run["automationDetails"]["id"] == f"golf-audit/{category}/"
            for res in run["results"]]


CELL = re.compile(r"(?<!\\)\|")


def checklist_rows(summary: str) -> list[list[str]]:
    """The checklist tables' body rows, split into cells (GitHub-flavoured markdown table syntax)."""
    rows, in_table = [], False
    for line in summary.splitlines():
        if line == "| Check | Verdict | Evidence |":
            in_table = True
            continue
        if in_table and line.startswith("|---"):
            continue
        if in_table and line.startswith("|"):
            cells = [c.strip() for c in CELL.split(line)[1:-1]]
            rows.append(cells)
        else:
            in_table = False
    return rows


def assert_summary_structure(summary: str, verdict: dict) -> list[list[str]]:
    lines = summary.splitlines()
    assert lines[0] == "<!-- golf-audit-ci -->"
    assert lines[1].startswith("## golf-audit CI: ") and f"(exit {verdict['exit_code']})" in lines[1]
    # the heading is the blocking verdict in one line: counts per tier
    counts = re.search(r"— (\d+) blocking, (\d+) not verified, (\d+) advisory", lines[1])
    assert counts, lines[1]
    assert (int(counts.group(1)) > 0) == (verdict["exit_code"] == 1), lines[1]
    rows = checklist_rows(summary)
    assert rows and all(len(r) == 3 and r[0] and r[1] and r[2] for r in rows), rows
    titles = [r[0] for r in rows]
    # one line per check: the layout, every verify check, every compliance rule
    assert sum("submission-layout" in t for t in titles) == 1
    for folder in verdict["folders"]:
        assert f"### Checklist — `{folder['folder']}`" in summary
        for check in folder["verify"]["checks"]:
            assert sum(f"(`{check['name']}`)" in t for t in titles) == 1, check["name"]
    for rule in all_rules():
        if rule.has_static() or rule.has_judge():
            assert sum(f"`{rule.name}` ({rule.id})" in t for t in titles) == len(verdict["folders"]), rule.name
    return rows


def test_legal_record_passes(repo, tmp_path):
    sarif, summary, verdict = run_gate(repo, tmp_path, "pr-legal", ExitCode.CLEAN)
    assert verdict["exit_code"] == 0 and verdict["verdict"] == "clean"
    assert [f["folder"] for f in verdict["folders"]] == [f"{TRACK}/2026-04-01_LegalTTT"]
    assert verdict["layout"] == []
    assert all(not run["results"] for run in sarif["runs"])
    # significance could not be tested (no record given): shown, but advisory (its tier without a record)
    rows = assert_summary_structure(summary, verdict)
    sig = next(r for r in rows if "(`significance`)" in r[0])
    assert sig[1].startswith("ℹ️ advisory") and "no record given" in sig[2]
    assert "significance" not in verdict["folders"][0]["gating_checks"]
    assert "What could not be audited" in summary and "dynamic" in summary


def test_pr713_fails_with_findings_in_sarif_and_summary(repo, tmp_path):
    sarif, summary, verdict = run_gate(repo, tmp_path, "pr-713", ExitCode.FINDINGS)
    folder = f"{TRACK}/2026-03-25_10L_LoRA_TTT"
    static = sarif_results(sarif, "static")
    tbs = [r for r in static if r["ruleId"] == rule_by_name("train-before-score").id]
    assert len(tbs) >= 2, static
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in tbs}
    assert uris == {f"{folder}/train_gpt.py"}
    # the SARIF lines are the lines of the committed file
    script = (FIXTURES / "pr713" / "train_gpt.py").read_text().splitlines()
    for r in tbs:
        line = r["locations"][0]["physicalLocation"]["region"]["startLine"]
        assert "step" in script[line - 1], script[line - 1]
    claims = {r["ruleId"] for r in sarif_results(sarif, "claims")}
    assert {"golf-eval/val_loss-field", "golf-eval/eval-time"} <= claims
    rows = assert_summary_structure(summary, verdict)
    row = next(r for r in rows if "`train-before-score`" in r[0])
    assert row[1].startswith("❌") and "lora_ttt_eval()" in row[2] and f"{folder}/train_gpt.py:" in row[2]
    # the bpb stored in val_loss is a format fault: advisory, a SARIF note, never the gate's verdict
    assert next(r for r in rows if "(`val_loss-field`)" in r[0])[1] == "ℹ️ advisory (fail)"
    levels = {r["ruleId"]: r["level"] for r in sarif_results(sarif, "claims")}
    assert levels["golf-eval/val_loss-field"] == "note" and levels["golf-eval/eval-time"] == "error"
    assert next(r for r in rows if "(`eval-time`)" in r[0])[1] == "❌ fail"
    assert "### Findings" in summary and "*Fix:*" in summary
    assert "test_time_train()" in summary  # the pre-quant TTT finding, with evidence lines
    assert verdict["exit_code"] == 1


def test_pr_that_also_edits_other_files(repo, tmp_path):
    sarif, summary, verdict = run_gate(repo, tmp_path, "pr-edits", ExitCode.FINDINGS)
    layout = [r for r in sarif_results(sarif, "static") if r["ruleId"] == "GA012"]
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in layout}
    assert uris == {f"{BASE_RECORD}/README.md", "train_gpt.py"}
    assert any("existing record" in f["message"] for f in verdict["layout"])
    assert any("root training script" in f["message"] for f in verdict["layout"])
    rows = assert_summary_structure(summary, verdict)
    row = next(r for r in rows if "submission-layout" in r[0])
    assert row[1] == "❌ 2 finding(s)" and "README.md" in row[2]
    # the new folder itself is still audited, and is clean
    assert verdict["folders"][0]["audit"]["exit_code"] == 0


def test_folder_missing_submission_json(repo, tmp_path):
    sarif, summary, verdict = run_gate(repo, tmp_path, "pr-nojson", ExitCode.FINDINGS)
    layout = [f for f in verdict["layout"] if "submission.json" in f["message"]]
    assert len(layout) == 1 and layout[0]["rule_id"] == "GA012"
    checks = {c["name"]: c["status"] for c in verdict["folders"][0]["verify"]["checks"]}
    assert checks["required-files"] == "fail"
    assert "golf-eval/required-files" in {r["ruleId"] for r in sarif_results(sarif, "claims")}
    rows = assert_summary_structure(summary, verdict)
    assert "no submission.json" in next(r for r in rows if "submission-layout" in r[0])[2]


def test_symlink_in_record_is_a_finding_and_not_followed(repo, tmp_path):
    sarif, summary, verdict = run_gate(repo, tmp_path, "pr-symlink", ExitCode.FINDINGS)
    link = f"{TRACK}/2026-04-01_Link/helper.py"
    assert [f["location"]["path"] for f in verdict["layout"]] == [link]
    assert "symbolic link" in verdict["layout"][0]["message"]
    assert verdict["not_audited"][0]["path"] == link  # not copied: the audit never reads the root script
    assert f"`{link}`: not a regular file" in summary
    audited = {f["path"] for f in verdict["folders"][0]["audit"]["files"]}
    assert "train_gpt.py" in audited and "helper.py" not in audited


def test_significance_gates_when_a_record_is_given(repo, tmp_path):
    # the record's own score: no improvement at all, so the test must fail and fail the gate
    claimed = json.loads((FIXTURES / "legal_score_first_ttt" / "submission.json").read_text())["val_bpb"]
    code = run_ci(repo, tmp_path, "pr-legal", "--sota-bpb", str(claimed))
    _, summary, verdict = outputs(tmp_path)
    assert code == ExitCode.FINDINGS
    assert "significance" in verdict["folders"][0]["gating_checks"] and verdict["significance_gates"]
    row = next(r for r in checklist_rows(summary) if "(`significance`)" in r[0])
    assert row[1] == "❌ fail" and "p=" in row[2]


def test_bad_ref_is_a_usage_error(repo, tmp_path, capsys):
    assert run_ci(repo, tmp_path, "no-such-branch") == ExitCode.USAGE
    assert "unknown revision" in capsys.readouterr().err
    assert not (tmp_path / "verdict.json").exists()


def test_not_a_repository_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["ci", "--base", "main", "--repo", str(tmp_path), "--out", str(out)]) == ExitCode.USAGE
    assert cli_main(["ci", "--head", "HEAD"]) == ExitCode.USAGE  # --base is required


def test_console_script_runs_the_gate(repo, tmp_path):
    """The real entry point, in a subprocess: `python -m harness.cli.audit ci` from the checkout."""
    env = {**ENV, "PYTHONPATH": str(ROOT) + os.pathsep + ENV.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "harness.cli.audit", "ci", "--base", "main", "--head", "pr-edits",
                           "--out", str(tmp_path)], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "summary.md").is_file()


# ---- GA012 submission-layout on hand-written change lists --------------------------------------

NEW = f"{TRACK}/2026-04-01_New"
GOOD = [Change("A", f"{NEW}/{n}", new_mode="100644")
        for n in ("README.md", "submission.json", "train_gpt.py", "train_seed42.log")]


def messages(findings) -> list[str]:
    return [f.message for f in findings]


def test_layout_clean_pr():
    assert check_pr(GOOD, {BASE_RECORD}) == []


def test_layout_findings():
    rule = rule_by_name("submission-layout")
    cases = {
        "symbolic link": GOOD + [Change("A", f"{NEW}/data.bin", new_mode="120000")],
        "git submodule": GOOD + [Change("A", f"{NEW}/vendor", new_mode="160000")],
        "second record folder": GOOD + [Change("A", f"{TRACK}/2026-04-02_Other/{c.path.rsplit('/', 1)[1]}",
                                               new_mode="100644") for c in GOOD],
        "data scripts": GOOD + [Change("M", "data/cached_challenge_fineweb.py", "100644", "100644")],
        "outside any record folder": GOOD + [Change("A", f"{TRACK}/notes.txt", new_mode="100644")],
        "deletes": GOOD + [Change("D", f"{BASE_RECORD}/train.log", "100644", "000000")],
        "adds no new folder": [Change("M", "README.md", "100644", "100644")],
        "no train log": [c for c in GOOD if not c.path.endswith(".log")],
    }
    for needle, changes in cases.items():
        found = check_pr(changes, {BASE_RECORD})
        assert any(needle in m for m in messages(found)), (needle, messages(found))
        assert all(f.rule == rule.name and f.rule_id == "GA012" and f.fix for f in found)
    no_script = [c for c in GOOD if not c.path.endswith("train_gpt.py")]
    found = check_pr(no_script, {BASE_RECORD})
    assert messages(found) == [f"The record folder `{NEW}` has no training script (train_gpt.py or train*.py "
                               "at the top of the folder)."]
    assert found[0].severity == Severity.MEDIUM
    # a script only in a subfolder does not count as the folder's training script
    nested = no_script + [Change("A", f"{NEW}/src/train_gpt.py", new_mode="100644")]
    assert len(check_pr(nested, {BASE_RECORD})) == 1


def test_layout_fingerprints_are_distinct():
    found = check_pr([Change("A", f"{NEW}/README.md", new_mode="100644")], set())
    prints = [f.fingerprint() for f in found]
    assert len(found) == 3 and len(set(prints)) == 3


def test_layout_rule_contract():
    rule = rule_by_name("GA012")
    assert rule is not None and rule.name == "submission-layout"
    assert not rule.has_static() and not rule.has_judge()  # not part of a folder audit
    doc = rule.documentation()
    for section in ("## What it does", "## Why is this bad?", "## Example", "## Use instead", "## References"):
        assert section in doc


# ---- pre-commit hook and example workflows -----------------------------------------------------

def test_precommit_audits_touched_record_folders(repo, tmp_path):
    from harness.ci.precommit import folders_of, main as precommit_main

    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "--detach", str(wt), "pr-713")
    try:
        cwd = os.getcwd()
        os.chdir(wt)
        try:
            folder = f"{TRACK}/2026-03-25_10L_LoRA_TTT"
            names = [f"{folder}/train_gpt.py", f"./{folder}/README.md", "train_gpt.py", "data/x.py"]
            assert folders_of(names) == [folder]
            assert precommit_main(["--no-cache", "--quiet", *names]) == ExitCode.FINDINGS
            assert precommit_main(["--no-cache", "--quiet", "--", f"{BASE_RECORD}/train_gpt.py"]) == ExitCode.CLEAN
            assert precommit_main(["train_gpt.py"]) == ExitCode.CLEAN  # no record touched: nothing to audit
        finally:
            os.chdir(cwd)
    finally:
        git(repo, "worktree", "remove", "--force", str(wt))


def _yaml(path: Path):
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


def test_precommit_hooks_file():
    hooks = _yaml(ROOT / ".pre-commit-hooks.yaml")
    hook = next(h for h in hooks if h["id"] == "golf-audit")
    assert hook["entry"] == "python -m harness.ci.precommit" and hook["pass_filenames"] is True
    assert re.match(hook["files"], f"{TRACK}/x/train_gpt.py") and not re.match(hook["files"], "train_gpt.py")


def test_example_workflows_are_split():
    gate = _yaml(ROOT / "examples/github/golf-audit.yml")
    report = _yaml(ROOT / "examples/github/golf-audit-report.yml")
    on = lambda wf: wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    # the half that runs PR code: pull_request only, read-only, no secrets
    assert set(on(gate)) == {"pull_request"}
    assert gate["permissions"] == {"contents": "read"}
    gate_text = (ROOT / "examples/github/golf-audit.yml").read_text()
    assert not re.search(r"\$\{\{[^}]*secrets\.", gate_text) and "pull_request_target:" not in gate_text
    steps = gate["jobs"]["audit"]["steps"]
    checkout = next(s for s in steps if str(s.get("uses", "")).startswith("actions/checkout"))
    assert checkout["with"]["persist-credentials"] is False
    assert any("golf-audit ci" in s.get("run", "") for s in steps)
    # the privileged half: workflow_run, writes, and never checks out or runs PR code
    assert set(on(report)) == {"workflow_run"} and report["permissions"] == {}
    job = report["jobs"]["report"]
    assert job["permissions"]["security-events"] == "write" and job["permissions"]["pull-requests"] == "write"
    uses = [str(s.get("uses", "")) for s in job["steps"]]
    assert not any(u.startswith(("actions/checkout", "actions/setup-python")) for u in uses)
    runs = " ".join(s.get("run", "") for s in job["steps"])
    assert not re.search(r"\b(python|pip|bash golf-audit-ci|sh golf-audit-ci|golf-audit ci)\b", runs)
    assert any(u.startswith("github/codeql-action/upload-sarif") for u in uses)


def test_dynamic_results_get_their_own_sarif_category(repo, tmp_path, monkeypatch):
    """Plumbing only (the real dynamic audit takes minutes; tests/test_dynamic_fixtures.py runs it):
    with --dynamic the gate passes the folder to run_dynamic and reports its findings in the
    `golf-audit/dynamic/` run and the checklist."""
    import harness.dynamic.audit as dynamic_audit
    from harness.core.findings import AuditResult, Confidence, Finding, Layer, Location

    seen = []

    def fake_run_dynamic(folder, options=None):
        seen.append(Path(folder))
        rule = rule_by_name("future-dependent-score")
        f = Finding(rule.name, rule.id, rule.severity, Confidence.HIGH, Layer.PROBE,
                    "score at position 5 changed when token 9 changed", Location("train_gpt.py", 12),
                    evidence=["probe: replaced token 9, score 5 moved by 0.3 nats"])
        return AuditResult(target=str(folder), findings=[f], layers_run=["trace", "probe"])

    monkeypatch.setattr(dynamic_audit, "run_dynamic", fake_run_dynamic)
    code = run_ci(repo, tmp_path, "pr-legal", "--dynamic")
    sarif, summary, verdict = outputs(tmp_path)
    assert code == ExitCode.FINDINGS and len(seen) == 1 and seen[0].name == "2026-04-01_LegalTTT"
    assert (seen[0] / "train_gpt.py").is_file() is False  # the scratch copy is removed afterwards
    assert validate_sarif(sarif) == []
    dyn = sarif_results(sarif, "dynamic")
    assert [r["ruleId"] for r in dyn] == [rule_by_name("future-dependent-score").id]
    assert dyn[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
        f"{TRACK}/2026-04-01_LegalTTT/train_gpt.py"
    assert not sarif_results(sarif, "static")
    row = next(r for r in assert_summary_structure(summary, verdict) if "`future-dependent-score`" in r[0])
    assert row[1] == "❌ 1 finding(s)" and "token 9" in row[2]
    assert verdict["dynamic"] is True


def test_weak_sandbox_warning_reaches_every_gate_output(repo, tmp_path, monkeypatch):
    """Plumbing only: --allow-weak-sandbox reaches the dynamic layer, and the warning of a run whose
    writes were not confined shows in summary.md (above the checklist), the SARIF dynamic run and
    verdict.json."""
    import harness.dynamic.audit as dynamic_audit
    from harness.core.findings import AuditResult
    from harness.dynamic.run.sandbox import WEAK_WARNING

    seen = []

    def fake_run_dynamic(folder, options=None):
        seen.append(dict(options or {}))
        return AuditResult(target=str(folder), layers_run=["trace"], warnings=[WEAK_WARNING])

    monkeypatch.setattr(dynamic_audit, "run_dynamic", fake_run_dynamic)
    run_ci(repo, tmp_path, "pr-legal", "--dynamic", "--allow-weak-sandbox")
    sarif, summary, verdict = outputs(tmp_path)
    assert seen and seen[0]["allow_weak_sandbox"] is True
    assert "writes were NOT confined" in summary
    assert summary.index("> ⚠️ **Warning**") < summary.index("### Checklist")
    dyn = next(r for r in sarif["runs"] if r["automationDetails"]["id"] == "golf-audit/dynamic/")
    assert any(n["level"] == "warning" and "NOT confined" in n["message"]["text"]
               for n in dyn["invocations"][0]["toolExecutionNotifications"])
    assert verdict["folders"][0]["audit"]["warnings"] == [WEAK_WARNING]
    assert validate_sarif(sarif) == []
