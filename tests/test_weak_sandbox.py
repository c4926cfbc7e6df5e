"""Without bubblewrap the submission's writes cannot be confined: `--dynamic` (and `golf-eval
reproduce --toy`) refuse with exit 3 and the install command; `--allow-weak-sandbox` runs under
`unshare -Urn`, and every report format says the writes were not confined.

bwrap is hidden by making the PATH lookup miss it (the sandbox asks at every call)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from harness.cli.audit import main
from harness.core.findings import ExitCode
from harness.dynamic.run import sandbox

REPO = Path(__file__).resolve().parent.parent
CLEAN = REPO / "submissions" / "legal_score_first_ttt"
INSTALL = "apt-get install bubblewrap"


def _unshare_works() -> bool:
    exe = shutil.which("unshare")
    return bool(exe) and sandbox._probe("unshare", [exe, "-Urn", "--"])[0]


needs_unshare = pytest.mark.skipif(not _unshare_works(), reason="`unshare -Urn` does not work here")


@pytest.fixture
def no_bwrap(monkeypatch):
    real = shutil.which

    def which(name, *args, **kwargs):
        return None if name == "bwrap" else real(name, *args, **kwargs)

    monkeypatch.setattr(sandbox.shutil, "which", which)
    monkeypatch.setattr(sandbox, "_PROBE_CACHE", {})
    assert sandbox.available_isolation() != "bwrap"


def test_sandbox_refuses_without_bwrap(no_bwrap, tmp_path):
    with pytest.raises(sandbox.SandboxUnavailable) as exc:
        sandbox.run([sys.executable, "-c", "print(1)"], scratch=tmp_path / "s", env={})
    text = str(exc.value)
    assert "not installed" in text and INSTALL in text and "--allow-weak-sandbox" in text


@needs_unshare
def test_weak_sandbox_does_not_confine_writes_and_says_so(no_bwrap, tmp_path):
    victim = tmp_path / "outside.txt"  # outside scratch
    r = sandbox.run([sys.executable, "-c", f"open({str(victim)!r}, 'w').write('pwned')"],
                    scratch=tmp_path / "s", env={}, allow_weak=True)
    assert r.returncode == 0, r.stderr
    assert r.isolation == "unshare"
    assert victim.read_text() == "pwned"  # the write went through: that is what the warning is for
    assert r.warnings and "NOT confined" in r.warnings[0]


def test_dynamic_without_bwrap_is_not_audited(no_bwrap, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = main(["--no-cache", "--dynamic", "--select", "train-before-score", "submissions/legal_score_first_ttt"])
    out = capsys.readouterr().out
    assert code == ExitCode.NOT_AUDITABLE, out
    assert "not audited" in out and "bubblewrap (bwrap) is not installed" in out and INSTALL in out
    code = main(["--no-cache", "--dynamic", "--format", "json", "--select", "train-before-score",
                 "submissions/legal_score_first_ttt"])
    doc = json.loads(capsys.readouterr().out)
    assert code == ExitCode.NOT_AUDITABLE and doc["exit_code"] == 3
    assert any(INSTALL in n["reason"] for n in doc["results"][0]["not_audited"])


def test_reproduce_toy_without_bwrap_is_refused(no_bwrap, capsys):
    from harness.cli.eval import main as eval_main

    code = eval_main(["reproduce", str(CLEAN), "--toy", "--seeds", "42"])
    err = capsys.readouterr().err
    assert code == ExitCode.NOT_AUDITABLE
    assert err.startswith("golf-eval: not audited: ") and INSTALL in err


def test_every_format_shows_warnings():
    # the renderers on a result that carries a warning (the slow test below gets one from a run)
    from harness.core.findings import AuditResult
    from harness.core.registry import all_rules

    res = AuditResult(target="x", layers_run=["static", "trace"], warnings=[sandbox.WEAK_WARNING])
    _assert_warned(res, all_rules())


def _assert_warned(res, rules) -> None:
    from harness.core.serialize import result_from_dict, result_to_dict
    from harness.reports import json_report, markdown, sarif, text

    needle = "writes were NOT confined"
    assert needle in text.render([res], rules).split("\n", 2)[1]  # right under the verdict line
    assert any(needle in w for w in json.loads(json_report.render([res], rules))["results"][0]["warnings"])
    md = markdown.render([res], rules)
    assert f"> ⚠️ **Warning:** {sarif_safe(sandbox.WEAK_WARNING)}" in md
    assert md.index("Warning") < md.index("| Check |")
    doc = sarif.build([res], rules)
    dynamic = next(r for r in doc["runs"] if r["automationDetails"]["id"] == "golf-audit/dynamic/")
    notes = dynamic["invocations"][0]["toolExecutionNotifications"]
    assert any(n["level"] == "warning" and needle in n["message"]["text"] for n in notes)
    assert dynamic["invocations"][0]["executionSuccessful"] is True  # a warning is not a failed run
    assert result_from_dict(result_to_dict(res)).warnings == res.warnings  # the cache keeps it


def sarif_safe(text: str) -> str:
    return text.replace("|", "\\|")


@pytest.mark.slow
@needs_unshare
def test_weak_sandbox_dynamic_run_warns_in_every_format(no_bwrap):
    from harness.core.registry import all_rules
    from harness.dynamic.audit import run_dynamic

    res = run_dynamic(CLEAN, {"allow_weak_sandbox": True, "probes": False, "blackbox": "off"})
    assert not any("bubblewrap" in n.reason for n in res.not_audited), res.not_audited
    assert "sandbox: unshare" in res.notes
    assert res.warnings == [sandbox.WEAK_WARNING]
    res.layers_run = ["static", *res.layers_run]
    _assert_warned(res, all_rules())
