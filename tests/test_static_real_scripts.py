"""The static audit on real contest folders, when a local extract of openai/parameter-golf is
present (nothing from it is in this repository): /tmp/pr713/... for PR #713 and
/tmp/pg/records/track_10min_16mb/* for the merged records. Skipped when absent.

PR #713 must get train-before-score at lora_ttt_eval and test_time_train, both reachable under
TTT_ENABLED=1 (its logs print `ttt_final`/`ttt:epoch`), and no hash-key-reads-target. Records
with legal score-first TTT must be clean of train-before-score on the path that ran."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from harness.core.findings import Severity
from harness.static.audit import audit_folder_static

PR713 = Path("/tmp/pr713/records/track_10min_16mb/2026-03-25_10L_LoRA_TTT")
RECORDS = sorted(Path(p) for p in glob.glob("/tmp/pg/records/track_10min_16mb/*/"))
LEGAL_TTT = [p for p in RECORDS if any(k in p.name for k in ("LegalTTT", "ScoreFirstTTT", "PhasedTTT"))
             or p.name == "2026-03-17_LoRA_TTT"]
# a few of them by default (each takes ~1 s); GOLF_AUDIT_ALL_RECORDS=1 runs every record
QUICK = LEGAL_TTT if os.environ.get("GOLF_AUDIT_ALL_RECORDS") else LEGAL_TTT[:1] + LEGAL_TTT[-2:]


@pytest.mark.skipif(not PR713.is_dir(), reason="PR #713 folder not extracted at /tmp/pr713")
def test_pr713():
    result = audit_folder_static(PR713)
    assert not result.not_audited, [n.reason for n in result.not_audited]
    assert result.env_flags.get("TTT_ENABLED") == "1"
    leaks = {f.location.function: f for f in result.findings if f.rule == "train-before-score"}
    assert {"lora_ttt_eval", "test_time_train"} <= set(leaks)
    for name in ("lora_ttt_eval", "test_time_train"):
        f = leaks[name]
        assert f.reachable is True and f.flags.get("TTT_ENABLED") == "1" and f.severity == Severity.HIGH
        assert f.evidence and f.fix and f.location.source_line
    assert "epoch == ttt_epochs - 1" in leaks["lora_ttt_eval"].message
    assert not [f for f in result.findings if f.rule == "hash-key-reads-target"]


@pytest.mark.parametrize("folder", QUICK, ids=[p.name for p in QUICK])
def test_legal_ttt_records_are_clean(folder: Path):
    result = audit_folder_static(folder)
    assert not [n for n in result.not_audited if "analyzer error" in n.reason]
    bad = [f for f in result.findings if f.rule == "train-before-score" and f.severity > Severity.LOW]
    assert bad == [], [(f.location.line, f.message) for f in bad]


@pytest.mark.slow
@pytest.mark.skipif(not RECORDS or not os.environ.get("GOLF_AUDIT_ALL_RECORDS"),
                    reason="set GOLF_AUDIT_ALL_RECORDS=1 with /tmp/pg extracted (about a minute)")
def test_every_record_audits_without_crash():
    for folder in RECORDS:
        result = audit_folder_static(folder)
        crashes = [n.reason for n in result.not_audited if "analyzer error" in n.reason or "nesting" in n.reason]
        assert not crashes, (folder.name, crashes)
