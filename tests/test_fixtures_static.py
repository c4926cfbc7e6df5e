"""The fixture submissions under submissions/: their files are consistent, and the static audit
reports exactly what each folder's expected.json says.

expected.json (see docs/fixtures.md):
    static.exit_code          the exit code audit_folder_static must give
    static.must_report        [{"rule": ..., "function": ...?, "line": ...?}] each must be found; for a folder
                              with findings the set of rules reported must equal this set
    static.must_not_report    rule names that must not appear
    env                       the flags the submission ran with (passed to the audit)
"""
from __future__ import annotations

import importlib.util
import json
import lzma
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import function_matches

REPO = Path(__file__).resolve().parent.parent
SUBMISSIONS = REPO / "submissions"
FIXTURES = sorted(p.parent for p in SUBMISSIONS.glob("*/expected.json"))
IDS = [p.name for p in FIXTURES]
SUBMISSION_FIELDS = ("name", "author", "github_id", "bytes_total", "blurb", "date")


def load_expected(folder: Path) -> dict:
    return json.loads((folder / "expected.json").read_text())


def test_fixtures_exist():
    names = set(IDS)
    for required in ("pr713", "legal_score_first_ttt", "legal_lora_ttt", "baseline_sliding",
                     "hash_leak", "packed", "unpackable", "val_calibration"):
        assert required in names, f"fixture submissions/{required} is missing"


# ---------------------------------------------------------------- file consistency (no audit)

@pytest.mark.parametrize("folder", FIXTURES, ids=IDS)
def test_fixture_files(folder: Path):
    for name in ("README.md", "submission.json", "train_gpt.py", "expected.json"):
        assert (folder / name).is_file(), f"{folder.name}: {name} missing"
    readme = " ".join((folder / "README.md").read_text().split())
    assert "golf-audit" in readme and "shares no code" in readme, f"{folder.name}: README must say it is ours"
    assert re.search(r"PR #\d+|record", readme), f"{folder.name}: README must name what it models"
    sub = json.loads((folder / "submission.json").read_text())
    for field in SUBMISSION_FIELDS:
        assert field in sub, f"{folder.name}: submission.json lacks {field}"
    assert "val_bpb" in sub or "val_loss" in sub
    expected = load_expected(folder)
    static = expected["static"]
    assert static["exit_code"] in (0, 1, 3)
    if static["exit_code"] == 0:
        assert static["must_report"] == [], f"{folder.name}: a clean fixture cannot expect findings"
    else:
        assert static["must_report"], f"{folder.name}: exit {static['exit_code']} needs must_report"
    assert list((folder).glob("*.log")), f"{folder.name}: no log"


@pytest.mark.parametrize("folder", FIXTURES, ids=IDS)
def test_logs_match_script(folder: Path):
    """The logs' `Code size` is the byte size of the script as committed, and the claimed
    bytes_total is one seed's logged total."""
    code_bytes = (folder / "train_gpt.py").stat().st_size
    totals = []
    for log in folder.glob("*.log"):
        text = log.read_text()
        sizes = [int(x) for x in re.findall(r"^Code size: (\d+) bytes", text, re.M)]
        assert sizes == [code_bytes], f"{log.name}: Code size {sizes} != train_gpt.py {code_bytes} bytes"
        totals += [int(x) for x in re.findall(r"^Total submission size int8\+zlib: (\d+) bytes", text, re.M)]
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["bytes_total"] in totals


def test_pr713_keeps_the_real_quirks():
    sub = json.loads((SUBMISSIONS / "pr713" / "submission.json").read_text())
    assert "val_bpb" not in sub and sub["val_loss"] < 1.2, "PR #713 stores the bpb in val_loss"
    source = (SUBMISSIONS / "pr713" / "train_gpt.py").read_text()
    assert 'os.environ.get("TTT_ENABLED", "0")' in source
    assert 'os.environ.get("NUM_LAYERS", 10)' in source
    for log in (SUBMISSIONS / "pr713").glob("*.log"):
        text = log.read_text()
        for marker in ("ttt_final val_loss:", "ttt:epoch=1/", "final_ttt val_loss:", "final_ttt_exact val_loss:"):
            assert marker in text, f"{log.name} lacks {marker!r}"


def test_make_pack_is_reproducible(tmp_path):
    """make_pack.py rebuilds both packed fixtures byte for byte."""
    packed = SUBMISSIONS / "packed" / "train_gpt.py"
    corrupt = SUBMISSIONS / "unpackable" / "train_gpt.py"
    before = packed.read_bytes(), corrupt.read_bytes()
    spec = importlib.util.spec_from_file_location("make_pack", SUBMISSIONS / "packed" / "make_pack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    payload = module.pack((SUBMISSIONS / "packed" / "train_gpt_source.py.txt").read_text())
    assert module.packed_script(payload).encode() == before[0], "run submissions/packed/make_pack.py"
    assert module.corrupt_script(payload).encode() == before[1], "run submissions/packed/make_pack.py"


def _payload(script: str) -> bytes:
    import base64

    return base64.b85decode(re.search(r'b85decode\("([^"]+)"\)', script).group(1))


def test_packed_payload_holds_the_source_and_corrupt_one_does_not():
    source = (SUBMISSIONS / "packed" / "train_gpt_source.py.txt").read_text()
    raw = [{"id": lzma.FILTER_LZMA2}]
    good = _payload((SUBMISSIONS / "packed" / "train_gpt.py").read_text())
    assert lzma.decompress(good, format=lzma.FORMAT_RAW, filters=raw).decode() == source
    bad = _payload((SUBMISSIONS / "unpackable" / "train_gpt.py").read_text())
    with pytest.raises(lzma.LZMAError):
        lzma.decompress(bad, format=lzma.FORMAT_RAW, filters=raw)


def test_fixture_scripts_compile():
    for folder in FIXTURES:
        compile((folder / "train_gpt.py").read_text(), str(folder / "train_gpt.py"), "exec")
    compile((SUBMISSIONS / "packed" / "train_gpt_source.py.txt").read_text(), "train_gpt_source", "exec")


# ---------------------------------------------------------------- the static audit

@pytest.mark.parametrize("folder", FIXTURES, ids=IDS)
def test_static_audit_matches_expected(folder: Path):
    static_audit = pytest.importorskip("harness.static.audit", reason="harness.static.audit not written yet")
    expected = load_expected(folder)
    want = expected["static"]
    result = static_audit.audit_folder_static(folder, env=dict(expected.get("env", {})))
    findings = result.active_findings
    summary = "\n".join(
        f"  {f.rule} at {f.location.path}:{f.location.line} in {f.location.function}" for f in findings
    ) + "".join(f"\n  not audited: {n.path}: {n.reason}" for n in result.not_audited)

    for item in want["must_report"]:
        hits = [f for f in findings if f.rule == item["rule"]]
        if "function" in item:
            hits = [f for f in hits if function_matches(f.location.function, item["function"])]
        if "line" in item:
            hits = [f for f in hits if f.location.line == item["line"]]
        assert hits, f"leak undetected: {folder.name} should report {item}; got:\n{summary}"
    reported = {f.rule for f in findings}
    for rule in want["must_not_report"]:
        assert rule not in reported, f"false leak: {folder.name} must not report {rule}; got:\n{summary}"
    if want["must_report"]:
        expected_rules = {item["rule"] for item in want["must_report"]}
        assert reported == expected_rules, (
            f"{folder.name}: reported rules {sorted(reported)} != expected {sorted(expected_rules)}:\n{summary}")
    else:
        assert not findings, f"false leak: clean fixture {folder.name} got findings:\n{summary}"
    assert int(result.exit_code()) == want["exit_code"], (
        f"{folder.name}: exit {int(result.exit_code())} != {want['exit_code']}:\n{summary}")


def test_packed_finding_points_into_the_unpacked_code():
    """A finding inside a pack gets the unpacked code's own line and names the file it was packed in."""
    static_audit = pytest.importorskip("harness.static.audit", reason="harness.static.audit not written yet")
    folder = SUBMISSIONS / "packed"
    result = static_audit.audit_folder_static(folder, env={"TTT_ENABLED": "1"})
    source_lines = (folder / "train_gpt_source.py.txt").read_text().splitlines()
    hits = [f for f in result.active_findings if f.rule == "train-before-score"]
    assert hits
    for f in hits:
        assert f.location.packed_in == "train_gpt.py", f.location
        assert 2 < f.location.line <= len(source_lines), f"line {f.location.line} is not an unpacked line"
