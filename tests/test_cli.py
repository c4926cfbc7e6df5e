"""golf-audit's command line: exit codes, bad input, formats, config, cache and parallelism.

Most tests call `main(argv)` in-process (the console script is the same function); one runs the
installed entry point as a subprocess to check argparse and the real process exit code."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli.audit import audit_paths, main
from harness.core.findings import ExitCode
from harness.reports.sarif_check import validate_sarif
from harness.core.registry import all_rules

REPO = Path(__file__).resolve().parent.parent
PR713 = REPO / "submissions" / "pr713"
CLEAN = REPO / "submissions" / "legal_score_first_ttt"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the repository's pyproject.toml is the config; URIs relative to it


def test_console_script_process_exit_codes(tmp_path):
    # the real process: argparse errors, a missing path and a finding, each with its exit code
    def run(*args):
        return subprocess.run([sys.executable, "-m", "harness.cli.audit", *args], capture_output=True, text=True,
                              cwd=REPO, timeout=120)

    p = run("--no-cache", "--format", "yaml", str(PR713))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "usage error" in p.stderr
    p = run("--no-cache", "--quiet", str(PR713), str(tmp_path / "nope"))
    assert p.returncode == 1 and p.stdout == ""  # 1 outranks 3
    assert "not auditable: " + str(tmp_path / "nope") + ": no such file or directory" in p.stderr


def test_pr713_exit_1_names_both_functions_and_lines(capsys, in_repo):
    code, out, err = cli(capsys, "--no-cache", "submissions/pr713")
    assert code == ExitCode.FINDINGS, err
    assert out.startswith("FINDINGS submissions/pr713")
    assert "lora_ttt_eval" in out and "test_time_train" in out
    assert re.search(r"train_gpt\.py:\d+ in lora_ttt_eval\(\)", out) and "TTT_ENABLED=1" in out
    assert "hash-key-reads-target" not in out
    assert "\x1b[" not in out  # no colour when not a terminal


@pytest.mark.parametrize("name,content,needle", [
    ("syntax", "def f(:\n    pass\n", "syntax error"),
    ("binary", b"\x00\x01\x02\xff", "binary"),
    ("unpackable", 'import lzma, base64\nexec(lzma.decompress(base64.b85decode("!!!")))\n', "cannot be unpacked"),
])
def test_bad_input_exits_3_with_one_line_reason(capsys, tmp_path, name, content, needle):
    folder = tmp_path / name
    folder.mkdir()
    target = folder / "train_gpt.py"
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out, err = cli(capsys, "--no-cache", str(folder))
    assert code == ExitCode.NOT_AUDITABLE, (out, err)
    assert out.startswith("NOT AUDITED")
    lines = [ln for ln in out.splitlines() if "not audited" in ln]
    assert lines and needle in lines[0]
    assert "Traceback" not in err + out


def test_single_file_is_audited(capsys, tmp_path):
    f = tmp_path / "train_gpt.py"
    f.write_text("def main():\n    print('hello')\n\nif __name__ == '__main__':\n    main()\n")
    code, out, _ = cli(capsys, "--no-cache", str(f))
    assert code == ExitCode.CLEAN and out.startswith("CLEAN")


def test_empty_folder_and_missing_path_exit_3(capsys, tmp_path):
    code, out, _ = cli(capsys, "--no-cache", str(tmp_path))
    assert code == ExitCode.NOT_AUDITABLE and "not audited" in out
    code, out, err = cli(capsys, "--no-cache", str(tmp_path / "nope"))
    assert code == ExitCode.NOT_AUDITABLE and "no such file or directory" in out
    assert err.strip() == f"golf-audit: not auditable: {tmp_path / 'nope'}: no such file or directory"


def test_usage_errors_exit_2_with_one_line(capsys, tmp_path, in_repo):
    for args in (["--format", "yaml", str(PR713)], ["--select", "no-such-rule", str(PR713)],
                 ["--env", "NOEQUALS", str(PR713)], ["--jobs", "0", str(PR713)], ["--blackbox-budget", "3", str(PR713)], ["--fail-on", "huge", str(PR713)],
                 ["--no-such-option", str(PR713)], [], ["--no-cache", "explain", "GA001"],
                 ["--no-cache", "-o", str(tmp_path / "no" / "dir" / "r.txt"), str(PR713)]):
        code, out, err = cli(capsys, *args)
        assert code == ExitCode.USAGE, args
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)
    code, _, err = cli(capsys, "explain", "no-such-rule")
    assert code == ExitCode.USAGE and "known rules" in err and "train-before-score" in err


def test_rules_and_explain(capsys):
    code, out, _ = cli(capsys, "rules")
    assert code == 0
    for r in all_rules():
        assert r.id in out and r.name in out
    for ident in ("train-before-score", "GA001"):
        code, out, _ = cli(capsys, "explain", ident)
        assert code == 0
        for section in ("## What it does", "## Why is this bad?", "## Example", "## Use instead", "## References"):
            assert section in out
        assert "PR #518" in out


def test_select_ignore_and_fail_on(capsys, in_repo):
    code, out, _ = cli(capsys, "--no-cache", "--ignore", "train-before-score", "submissions/pr713")
    assert code == ExitCode.CLEAN and "GA001" not in out
    code, out, _ = cli(capsys, "--no-cache", "--select", "GA003,GA004", "submissions/pr713")
    assert code == ExitCode.CLEAN
    # packed-source is low severity: fails only at --fail-on low
    args = ["--no-cache", "--select", "packed-source", "submissions/packed"]
    assert cli(capsys, *args)[0] == ExitCode.CLEAN
    assert cli(capsys, *args, "--fail-on", "low")[0] == ExitCode.FINDINGS


def test_config_from_pyproject_and_cli_override(capsys, tmp_path, monkeypatch):
    sub = tmp_path / "s"
    shutil.copytree(REPO / "submissions" / "packed", sub)
    (tmp_path / "pyproject.toml").write_text('[tool.golf-audit]\nfail-on = "low"\nselect = ["packed-source"]\n'
                                             'format = "json"\n')
    monkeypatch.chdir(sub)  # the nearest pyproject.toml is found upward from the working directory
    code, out, _ = cli(capsys, "--no-cache", ".")
    assert code == ExitCode.FINDINGS
    doc = json.loads(out)
    assert [r["name"] for r in doc["rules"]] == ["packed-source"] and doc["fail_on"] == "low"
    code, out, _ = cli(capsys, "--no-cache", "--fail-on", "medium", "--format", "text", ".")
    assert code == ExitCode.CLEAN and out.startswith("CLEAN")
    code, out, _ = cli(capsys, "--no-cache", "--select", "train-before-score", "--format", "text", ".")
    assert code == ExitCode.FINDINGS and "GA001" in out and "GA006" not in out  # --select replaces select

    (tmp_path / "pyproject.toml").write_text('[tool.golf-audit]\nfail_on = "low"\n')
    code, _, err = cli(capsys, "--no-cache", ".")
    assert code == ExitCode.USAGE and "unknown key" in err and "fail_on" in err
    (tmp_path / "pyproject.toml").write_text('[tool.golf-audit]\nformat = "yaml"\n')
    assert cli(capsys, "--no-cache", ".")[0] == ExitCode.USAGE
    (tmp_path / "pyproject.toml").write_text('[tool.golf-audit\n')
    assert cli(capsys, "--no-cache", ".")[0] == ExitCode.USAGE


def test_dynamic_unavailable_is_loud_never_a_pass(capsys, monkeypatch, in_repo):
    monkeypatch.setitem(sys.modules, "harness.dynamic.audit", None)  # makes the import fail
    code, out, _ = cli(capsys, "--no-cache", "--dynamic", "submissions/legal_score_first_ttt")
    assert code == ExitCode.NOT_AUDITABLE
    assert "not audited: submissions/legal_score_first_ttt: dynamic layer unavailable:" in out
    code, out, _ = cli(capsys, "--no-cache", "--no-static", "--format", "sarif", "submissions/legal_score_first_ttt")
    assert code == ExitCode.NOT_AUDITABLE
    doc = json.loads(out)
    assert validate_sarif(doc) == []
    # only the dynamic run: an empty static run would tell code scanning static alerts were fixed
    assert [r["automationDetails"]["id"] for r in doc["runs"]] == ["golf-audit/dynamic/"]
    inv = doc["runs"][0]["invocations"][0]
    assert inv["executionSuccessful"] is False and "dynamic layer unavailable" in \
        inv["toolExecutionNotifications"][0]["message"]["text"]
    # static findings still outrank "not audited"
    assert cli(capsys, "--no-cache", "--dynamic", "submissions/pr713")[0] == ExitCode.FINDINGS


def test_sarif_end_to_end(capsys, tmp_path, in_repo):
    out = tmp_path / "r.sarif"
    code, stdout, _ = cli(capsys, "--no-cache", "--format", "sarif", "-o", str(out), "submissions/pr713")
    assert code == ExitCode.FINDINGS and stdout == ""
    doc = json.loads(out.read_text())
    assert validate_sarif(doc) == []
    static = doc["runs"][0]
    assert static["automationDetails"]["id"] == "golf-audit/static/"
    assert [r["id"] for r in static["tool"]["driver"]["rules"]][:len(all_rules())] == [r.id for r in all_rules()]
    results = static["results"]
    assert {r["ruleId"] for r in results} == {"GA001"}
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results} == \
        {"submissions/pr713/train_gpt.py"}
    # --sarif-root: URIs relative to another folder
    code, stdout, _ = cli(capsys, "--no-cache", "--format", "sarif", "--sarif-root", "submissions", "submissions/pr713")
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in json.loads(stdout)["runs"][0]["results"]}
    assert uris == {"pr713/train_gpt.py"}


def test_json_and_markdown_end_to_end(capsys, in_repo):
    code, out, _ = cli(capsys, "--no-cache", "--format", "json", "submissions/pr713")
    doc = json.loads(out)
    assert doc["schema"] == "golf-audit/1" and doc["exit_code"] == code == 1
    fns = {f["location"]["function"] for f in doc["results"][0]["findings"]}
    assert {"lora_ttt_eval", "test_time_train"} <= fns
    n = sum(f["rule_id"] == "GA001" and f["suppressed"] is None for f in doc["results"][0]["findings"])
    code, out, _ = cli(capsys, "--no-cache", "--format", "markdown", "submissions/pr713")
    assert out.startswith("### golf-audit: ❌ findings")
    assert "| Check | Verdict | Evidence |" in out and f"| `train-before-score` (GA001) | ❌ {n} finding(s) |" in out


def test_fingerprint_ignores_line_shifts(tmp_path):
    src = (PR713 / "train_gpt.py").read_text()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "train_gpt.py").write_text(src)
    (b / "train_gpt.py").write_text("# a comment that shifts every line\n\n" + src)
    ra, rb = audit_paths([str(a), str(b)], {"env": {"TTT_ENABLED": "1"}, "jobs": 1})
    fa = sorted(f.fingerprint() for f in ra.findings)
    fb = sorted(f.fingerprint() for f in rb.findings)
    assert fa and fa == fb
    assert [f.location.line + 2 for f in ra.findings] == [f.location.line for f in rb.findings]


def test_suppression_with_reason_and_unused(tmp_path):
    src = (PR713 / "train_gpt.py").read_text().splitlines()
    first = audit_paths([str(PR713)], {"jobs": 1})[0]
    line = next(f.location.line for f in first.findings if f.location.function == "test_time_train")
    src[line - 1] += "  # golf-audit: ignore[train-before-score] -- reviewed: demo"
    src.insert(0, "# golf-audit: ignore[hash-key-reads-target] -- nothing here")
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "train_gpt.py").write_text("\n".join(src) + "\n")
    for extra in ("README.md", "train_seed42.log"):
        (folder / extra).write_text((PR713 / extra).read_text())
    r = audit_paths([str(folder)], {"jobs": 1})[0]
    suppressed = [f for f in r.findings if f.suppressed]
    assert len(suppressed) == 1 and suppressed[0].suppressed == "reviewed: demo"
    assert [u.line for u in r.unused_suppressions] == [1]
    assert r.exit_code() == 1


def test_cache_hit_is_identical_and_parallel_equals_serial(capsys, tmp_path, in_repo):
    folders = sorted(str(p.relative_to(REPO)) for p in (REPO / "submissions").glob("*/") if (p / "expected.json").exists())
    folders = folders[:4]  # enough to interleave two workers; keeps the test fast
    assert len(folders) == 4
    cache = tmp_path / "cache"
    cold = cli(capsys, "--cache-dir", str(cache), "--jobs", "2", "--format", "json", *folders)
    assert len(list(cache.glob("*.json"))) == len(folders)
    warm = cli(capsys, "--cache-dir", str(cache), "--jobs", "2", "--format", "json", *folders)
    serial = cli(capsys, "--no-cache", "--jobs", "1", "--format", "json", *folders)
    assert cold == warm == serial

    def must_not_run(*a, **k):
        raise AssertionError("cache miss")

    with pytest.MonkeyPatch.context() as mp:  # every folder is now a hit: nothing is audited again
        import harness.audit as service
        mp.setattr(service, "audit_one", must_not_run)
        hits = audit_paths(folders, {"cache_dir": str(cache), "jobs": 1, "rules": [r.name for r in all_rules()]})
        assert [h.target for h in hits] == folders
    # a changed file is a cache miss: its result is recomputed, the others are hits
    copy = tmp_path / "copy"
    shutil.copytree(PR713, copy)
    first = audit_paths([str(copy)], {"cache_dir": str(cache), "jobs": 1})[0]
    (copy / "train_gpt.py").write_text("def main():\n    pass\n")
    second = audit_paths([str(copy)], {"cache_dir": str(cache), "jobs": 1})[0]
    assert first.active_findings and not second.active_findings


def test_internal_errors_never_traceback(monkeypatch, capsys):
    import harness.cli.audit as cli_module

    def boom(*a, **k):
        raise RuntimeError("kaput")

    monkeypatch.setattr(cli_module, "audit_paths", boom)
    code, _, err = cli(capsys, str(PR713))
    assert code == ExitCode.NOT_AUDITABLE
    assert "internal error: RuntimeError: kaput" in err and "Traceback" not in err
    code, _, err = cli(capsys, "--debug", str(PR713))
    assert code == ExitCode.NOT_AUDITABLE and "Traceback" in err


def test_crash_inside_one_audit_is_not_audited(monkeypatch):
    import harness.static.audit

    def boom(*a, **k):
        raise ValueError("engine bug")

    monkeypatch.setattr(harness.static.audit, "audit_folder_static", boom)
    r = audit_paths([str(PR713)], {"jobs": 1})[0]
    assert r.exit_code() == ExitCode.NOT_AUDITABLE
    assert "internal error: ValueError: engine bug" in r.not_audited[0].reason
