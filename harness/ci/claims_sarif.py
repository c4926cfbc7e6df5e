"""A third SARIF run, category `golf-audit/claims/`: the golf-eval verify checks that gate the PR and
failed, located at the submission.json field (or the log) they are about, so code scanning shows
claim failures next to the static and dynamic runs."""
from __future__ import annotations

import hashlib
from pathlib import Path

from harness import __version__
from harness.evaluation.verify_report import FAIL, UNVERIFIED, Check, VerifyReport
from harness.reports.common import one_line
from harness.reports.sarif import INFO_URI

# check name -> (one line, why it matters, the submission.json field it is about)
CHECKS = {
    "required-files": ("README.md, submission.json, a train log and the training script are present.",
                       "A record is verified from its own folder; a missing file leaves a claim unchecked.", None),
    "submission-fields": ("submission.json has name, github_id, author, val_bpb, date, bytes_total.",
                          "The leaderboard is built from these fields.", None),
    "claimed-score": ("The claimed val_bpb is the mean of one result line over the seeds' logs.",
                      "A claim no log line supports cannot be compared with the record.", "val_bpb"),
    "val_loss-field": ("val_loss holds the nats/token of the claimed line.",
                       "Significance is tested in nats; a bpb in val_loss (PR #713) breaks the test.", "val_loss"),
    "per-seed-claims": ("Per-seed numbers in submission.json match each seed's log.",
                        "Each seed's claim must be backed by its log.", "seed_results"),
    "artifact-size": ("Every seed's artifact is at most 16,000,000 bytes (decimal).",
                      "The size cap is per seed and decimal (a 16,071,321-byte artifact was rejected).", "bytes_total"),
    "bytes_total-field": ("bytes_total equals a seed's logged artifact or the seeds' mean.",
                          "The reported size must be the logged one.", "bytes_total"),
    "bytes_code-field": ("bytes_code equals the logged code size.", "The reported size must be the logged one.",
                         "bytes_code"),
    "train-time": ("Training (loop + post-loop passes over training data) is at most 600 s.",
                   "The 10-minute training budget includes every touch of training data.", None),
    "eval-time": ("Every eval pass after training sums to at most 600 s.",
                  "The 10-minute eval budget is summed over all phases.", "eval_time_seconds"),
    "significance": ("The improvement over the record is at least 0.005 nats at p < 0.01.",
                     "A new record must beat the current one by the margin with enough seeds.", "val_bpb"),
}


def rule_id(check: str) -> str:
    return f"golf-eval/{check}"


def _descriptor(check: str) -> dict:
    short, why, _ = CHECKS.get(check, (f"golf-eval verify check {check}.", "A claim of the submission.", None))
    doc = f"# {check} (golf-eval verify)\n\n{short}\n\n{why}\n\nSee docs/golf-eval.md.\n"
    return {"id": rule_id(check), "name": check, "shortDescription": {"text": short},
            "fullDescription": {"text": why}, "help": {"text": doc, "markdown": doc},
            "defaultConfiguration": {"level": "error"},
            "properties": {"precision": "high", "problem.severity": "error", "tags": ["parameter-golf", "claims"]}}


def _field_line(folder: Path, field: str | None) -> tuple[str, int]:
    """(file name inside the folder, 1-based line) for a submission.json field."""
    sub = folder / "submission.json"
    if sub.is_file():
        if field:
            for i, line in enumerate(sub.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if f'"{field}"' in line:
                    return "submission.json", i
        return "submission.json", 1
    for name in ("README.md", "train_gpt.py"):
        if (folder / name).is_file():
            return name, 1
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return (files[0].relative_to(folder).as_posix() if files else "submission.json"), 1


def build_run(items: list[tuple[str, Path, VerifyReport, set[str]]]) -> dict:
    """items: (repo-relative folder, folder on disk, verify report, names of gating checks)."""
    names = list(CHECKS)
    for _, _, rep, _ in items:
        names += [c.name for c in rep.checks if c.name not in names and c.name != "seeds"]
    descriptors = [_descriptor(n) for n in names]
    index = {n: i for i, n in enumerate(names)}
    results, notes = [], []
    for rel, disk, rep, gating in items:
        for check in rep.checks:
            if check.name not in index:
                continue
            if check.name not in gating:
                # an advisory (format) failure is shown as a note: it never gates
                if check.status == FAIL and getattr(check, "tier", "") == "advisory":
                    results.append(_result(rel, disk, check, index[check.name], level="note"))
                continue
            if check.status == FAIL:
                results.append(_result(rel, disk, check, index[check.name]))
            elif check.status == UNVERIFIED:
                notes.append({"level": "warning", "message": {"text": f"not verified: {rel}: {check.name}: "
                                                                      f"{one_line(check.summary)}"}})
    return {
        "tool": {"driver": {"name": "golf-audit", "version": __version__, "informationUri": INFO_URI,
                            "rules": descriptors}},
        "automationDetails": {"id": "golf-audit/claims/"},
        "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notes}],
        "results": results,
    }


def _result(rel: str, disk: Path, check: Check, idx: int, level: str = "error") -> dict:
    name, line = _field_line(disk, CHECKS.get(check.name, (None, None, None))[2])
    uri = f"{rel}/{name}"
    text = f"golf-eval verify: {check.name}: {one_line(check.summary)}"
    if check.evidence:
        text += "\nEvidence: " + "; ".join(one_line(e) for e in check.evidence[:6])
    # no line number in the fingerprint: the folder, the check and the file it points at
    fp = hashlib.sha256(f"{rule_id(check.name)}\x1f{uri}".encode()).hexdigest()[:32]
    return {"ruleId": rule_id(check.name), "ruleIndex": idx, "level": level, "message": {"text": text},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri}, "region": {"startLine": line}}}],
            "partialFingerprints": {"primaryLocationLineHash": fp}}
