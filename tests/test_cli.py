"""golf-audit's command line: exit codes, bad input, formats, cache and parallelism."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import audit_paths, main
from harness.reports.sarif_check import validate_sarif

REPO = Path(__file__).resolve().parent.parent
PR713 = REPO / "submissions" / "pr713"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=300)


def test_pr713_exit_1_names_both_functions_and_lines():
    p = run("--no-cache", str(PR713))
    assert p.returncode == 1, p.stderr
    assert "lora_ttt_eval" in p.stdout and "test_time_train" in p.stdout
    assert "train_gpt.py:" in p.stdout and "TTT_ENABLED=1" in p.stdout
    assert "hash-key-reads-target" not in p.stdout
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("name,content,needle", [
    ("syntax", "def f(:\n    pass\n", "syntax error"),
    ("binary", b"\x00\x01\x02\xff", "binary"),
    ("unpackable", 'import lzma, base64\nexec(lzma.decompress(base64.b85decode("!!!")))\n', "cannot be unpacked"),
])
def test_bad_input_exits_3_with_one_line_reason(tmp_path, name, content, needle):
    folder = tmp_path / name
    folder.mkdir()
    target = folder / "train_gpt.py"
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    p = run("--no-cache", str(folder))
    assert p.returncode == 3, (p.stdout, p.stderr)
    lines = [ln for ln in p.stdout.splitlines() if "not audited" in ln]
    assert lines and needle in lines[0]
    assert "Traceback" not in p.stderr + p.stdout


def test_empty_folder_and_missing_path_exit_3(tmp_path):
    assert run("--no-cache", str(tmp_path)).returncode == 3
    p = run("--no-cache", str(tmp_path / "nope"))
    assert p.returncode == 3 and "no such file or directory" in p.stdout


def test_usage_errors_exit_2():
    assert run("--format", "yaml", str(PR713)).returncode == 2
    assert run("--select", "no-such-rule", str(PR713)).returncode == 2
    assert run("--env", "NOEQUALS", str(PR713)).returncode == 2
    p = run("explain", "no-such-rule")
    assert p.returncode == 2 and "known rules" in p.stderr


def test_rules_and_explain():
    p = run("rules")
    assert p.returncode == 0 and "train-before-score" in p.stdout and "GA001" in p.stdout
    p = run("explain", "train-before-score")
    assert p.returncode == 0
    for section in ("## What it does", "## Why is this bad?", "## Example", "## Use instead", "## References"):
        assert section in p.stdout
    assert "PR #518" in p.stdout


def test_sarif_is_valid_and_lists_every_rule(tmp_path):
    out = tmp_path / "r.sarif"
    p = run("--no-cache", "--format", "sarif", "-o", str(out), str(PR713))
    assert p.returncode == 1
    doc = json.loads(out.read_text())
    assert validate_sarif(doc) == []
    static = doc["runs"][0]
    from harness.rule import all_rules
    assert {r["name"] for r in static["tool"]["driver"]["rules"]} == {r.name for r in all_rules()}
    results = static["results"]
    assert {r["ruleId"] for r in results} == {"GA001"}
    assert all(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "submissions/pr713/train_gpt.py"
               for r in results)


def test_sarif_checker_catches_missing_fields():
    assert validate_sarif({"version": "2.0.0", "runs": []})
    doc = {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
           "runs": [{"tool": {"driver": {"name": "x", "rules": [{"id": "A"}]}},
                     "results": [{"ruleId": "B", "level": "bad", "message": {},
                                  "locations": [{"physicalLocation": {"artifactLocation": {"uri": "/abs"},
                                                                      "region": {"startLine": 0}}}]}]}]}
    problems = " ".join(validate_sarif(doc))
    for needle in ("shortDescription", "ruleId", "level", "message.text", "repo-relative", "startLine",
                   "primaryLocationLineHash"):
        assert needle in problems


def test_json_and_markdown_formats():
    p = run("--no-cache", "--format", "json", str(PR713))
    doc = json.loads(p.stdout)
    assert doc["schema"] == "golf-audit/1" and doc["exit_code"] == 1
    fns = {f["location"]["function"] for f in doc["results"][0]["findings"]}
    assert {"lora_ttt_eval", "test_time_train"} <= fns
    p = run("--no-cache", "--format", "markdown", str(PR713))
    assert p.stdout.startswith("### golf-audit: ❌ findings")
    assert "| Check | Verdict | Evidence |" in p.stdout and "`train-before-score` (GA001) | ❌" in p.stdout


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


def test_cache_hit_is_identical_and_parallel_equals_serial(tmp_path):
    from harness.serialize import result_to_dict

    folders = [str(p) for p in sorted((REPO / "submissions").glob("*/")) if (p / "expected.json").exists()][:4]
    opts = {"cache_dir": str(tmp_path / "cache"), "jobs": 2}
    cold = audit_paths(folders, opts)
    warm = audit_paths(folders, opts)
    serial = audit_paths(folders, {"jobs": 1})
    assert [result_to_dict(r) for r in cold] == [result_to_dict(r) for r in warm] == \
        [result_to_dict(r) for r in serial]
    assert len(list((tmp_path / "cache").glob("*.json"))) == len(folders)


def test_internal_errors_never_traceback(monkeypatch, capsys):
    import harness.cli as cli

    def boom(*a, **k):
        raise RuntimeError("kaput")

    monkeypatch.setattr(cli, "audit_paths", boom)
    assert main([str(PR713)]) == 3
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: kaput" in err and "Traceback" not in err
