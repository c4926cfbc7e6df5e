"""One triage task: one pull request's submission folder, audited where the task runs (a local
worker process or a Dask worker). The task carries the folder's bytes, so a worker needs no
access to the clone; it needs the same golf-audit (checked by its code digest).

`audit_task(task) -> record` never raises for a bad submission: what could not be checked is a
`not_audited` reason. Untrusted code runs only through `harness.audit.audit_one`'s dynamic layer
(the sandbox); the static layer and `golf-eval verify` only read files."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path, PurePosixPath
from typing import Any

# Verdicts, best first; "legal" is clean, "flagged" is findings or claims-fail.
CLEAN, FINDINGS, CLAIMS_FAIL, CLAIMS_UNVERIFIED, NOT_AUDITED = (
    "clean", "findings", "claims-fail", "claims-unverified", "not-audited")
VERDICTS = (CLEAN, FINDINGS, CLAIMS_FAIL, CLAIMS_UNVERIFIED, NOT_AUDITED)
FLAGGED = (FINDINGS, CLAIMS_FAIL)
# files the static layer and verify read: one of these missing from the clone leaves a gap
TEXT_SUFFIXES = {".py", ".json", ".md", ".log", ".txt", ".sh", ".toml", ".cfg", ".yaml", ".yml"}
MAX_EVIDENCE = 6


def code_digest() -> str:
    from harness import cache

    return cache._code_digest().hex()


def audit_task(task: dict[str, Any]) -> dict[str, Any]:
    """Audit one PR's folder; returns its triage record (see `harness.triage.report.SCHEMA`)."""
    t0, c0 = time.perf_counter(), time.process_time()
    record = base_record(task)
    try:
        digest = task.get("code_digest")
        if digest and digest != code_digest():
            record["transient"] = True
            record["not_audited"].append(
                f"the worker runs a different golf-audit (code digest {code_digest()[:12]}, "
                f"the client's {digest[:12]}): install the same version on every worker")
        else:
            _audit_into(task, record)
    except Exception as exc:  # noqa: BLE001 - a crash is "not audited", never a pass
        record["not_audited"].append(f"internal error: {type(exc).__name__}: {exc}")
        record["transient"] = True
        record["detail"] = traceback.format_exc()[-4000:]
    record["verdict"] = verdict_of(record)
    record["time_s"] = round(time.perf_counter() - t0, 3)
    record["cpu_s"] = round(time.process_time() - c0, 3)  # this process only (not a dynamic run's children)
    record["worker"] = f"{os.uname().nodename}:{os.getpid()}"
    return record


def base_record(task: dict[str, Any]) -> dict[str, Any]:
    return {
        "pr": task["pr"], "folder": task.get("folder"), "other_folders": list(task.get("other_folders") or []),
        "how": task.get("how", ""), "commit": task.get("commit", ""), "note": task.get("note", ""),
        "claimed": {}, "record_claim": False, "verdict": NOT_AUDITED,
        "blocking": [], "advisories": [], "not_audited": list(task.get("not_audited") or []),
        "claims": None, "layers": [], "time_s": 0.0, "cached": False, "attempts": 1,
    }


def _audit_into(task: dict[str, Any], record: dict[str, Any]) -> None:
    c0 = time.process_time()
    from harness.audit import audit_one
    from harness.core.findings import Layer, Severity
    from harness.core.registry import UNUSED_SUPPRESSION_ID

    options = dict(task["options"])
    fail_on = Severity[task.get("fail_on", "medium").upper()]
    folder = task["folder"] or ""
    dynamic = bool(options.get("dynamic"))
    scratch = Path(tempfile.mkdtemp(prefix="golf-triage-"))
    try:
        # the folder keeps its place under records/track_*/: verify reads the track from it
        disk = scratch.joinpath(*PurePosixPath(folder).parts) if folder else scratch / "root"
        disk.mkdir(parents=True, exist_ok=True)
        for rel, data in task["files"]:
            parts = PurePosixPath(rel).parts
            if not parts or ".." in parts or PurePosixPath(rel).is_absolute():
                record["not_audited"].append(f"{rel}: unsafe path, not extracted")
                continue
            target = disk.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        for rel in task.get("missing") or []:
            # a blob the clone lacks (the mirror leaves out large binaries): it matters to the
            # static layer and verify only as text; the dynamic layer may read anything
            if dynamic or PurePosixPath(rel).suffix.lower() in TEXT_SUFFIXES:
                record["not_audited"].append(f"{rel}: blob missing from the clone, not extracted")
            else:
                record["advisories"].append({"kind": "note", "rule": "missing-blob", "file": rel, "line": None,
                                             "message": "blob missing from the clone (binary artifact); "
                                                        "not needed by the static audit or verify"})
        for rel in task.get("skipped") or []:
            record["not_audited"].append(f"{rel}: not a regular file (symlink, submodule); not extracted")
        phases = record.setdefault("phases", {})
        phases["extract_cpu_s"] = round(time.process_time() - c0, 3)
        sub = _submission(disk)
        record["claimed"] = sub
        record["track"] = _track(folder)
        record["record_claim"] = record["track"] == "track_10min_16mb" and sub.get("val_bpb") is not None

        c1 = time.process_time()
        result = audit_one(str(disk), options)
        phases["audit_cpu_s"] = round(time.process_time() - c1, 3)
        # as harness.audit caches: a crash, or a dynamic layer that did not complete, may pass
        # on a re-run; a static parse failure is for good
        record["transient"] = any("internal error" in n.reason or n.layer != Layer.STATIC
                                  for n in result.not_audited)
        _unsuppress(result)
        prefix = str(disk) + "/"
        record["layers"] = list(result.layers_run)
        for f in result.active_findings:
            entry = _finding_entry(f, prefix)
            (record["blocking"] if f.severity >= fail_on else record["advisories"]).append(entry)
        for loc in result.unused_suppressions:
            record["blocking"].append({"kind": "rule", "rule": "unused-suppression", "rule_id": UNUSED_SUPPRESSION_ID,
                                       "severity": "medium", "file": loc.path, "line": loc.line,
                                       "function": loc.function, "message": "suppression without a reason "
                                       "or matching nothing"})
        for na in result.not_audited:
            where = na.path.replace(prefix, "").replace(str(disk), folder or ".")
            reason = na.reason.replace(prefix, "").replace(str(disk), folder or ".")
            record["not_audited"].append(f"{where}: {reason}" if where and where not in reason else reason)
        record["warnings"] = [w.replace(prefix, "") for w in result.warnings]
        if task.get("claims"):
            record["layers"].append("claims")
            c2 = time.process_time()
            _claims(disk, record)
            phases["claims_cpu_s"] = round(time.process_time() - c2, 3)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unsuppress(result) -> None:
    """As in the CI gate: the author of a suppression is the author under review."""
    for f in result.findings:
        if f.suppressed is not None:
            f.evidence.append(f"the submission suppresses this in its source ({f.suppressed!r}); not honoured")
            f.suppressed = None


def _finding_entry(f, prefix: str) -> dict[str, Any]:
    loc = f.location
    return {
        "kind": "rule", "rule": f.rule, "rule_id": f.rule_id, "severity": f.severity.name.lower(),
        "confidence": f.confidence.name.lower(), "layer": f.layer.value, "status": f.status,
        "file": loc.packed_in or loc.path, "line": loc.packed_line or loc.line,
        "unpacked": f"{loc.path}:{loc.line}" if loc.packed_in else None,
        "function": loc.function, "reachable": f.reachable, "flags": dict(f.flags),
        "message": f.message, "evidence": [e.replace(prefix, "") for e in f.evidence[:MAX_EVIDENCE]],
        "fix": f.fix,
    }


def _claims(disk: Path, record: dict[str, Any]) -> None:
    from harness.evaluation.claims import FAIL, UNVERIFIED, VerifyOptions, verify

    try:
        rep = verify(disk, VerifyOptions())
    except Exception as exc:  # noqa: BLE001 - claims that could not be checked are not verified
        record["claims"] = {"exit_code": 3, "error": f"golf-eval verify could not run: {type(exc).__name__}: {exc}",
                            "checks": []}
        return
    record["claims"] = {
        "exit_code": int(rep.exit_code()), "score_label": rep.score_label,
        "checks": [{"name": c.name, "status": c.status, "tier": c.tier, "summary": c.summary} for c in rep.checks],
    }
    score = rep.check("claimed-score")
    claimed = record["claimed"]
    if claimed.get("val_bpb") is None and claimed.get("val_loss") is not None and score is not None \
            and score.status == "pass" and "taken from val_loss" in score.summary:
        # the submission stores its bpb under val_loss (PR #713); verify matched it to the logs' bpb
        claimed["val_bpb"] = claimed["val_loss"]
        claimed["val_bpb_from"] = "val_loss (golf-eval verify: it is the logs' bpb)"
        record["record_claim"] = record.get("track") == "track_10min_16mb"
    for c in rep.checks:
        entry = {"kind": "claim", "rule": c.name, "file": "submission.json", "line": None, "status": c.status,
                 "message": c.summary, "evidence": list(c.evidence[:MAX_EVIDENCE])}
        if c.tier == "blocking" and c.status == FAIL:
            record["blocking"].append(entry)
        elif c.tier != "blocking" and c.status in (FAIL, UNVERIFIED):
            record["advisories"].append(entry)


def verdict_of(record: dict[str, Any]) -> str:
    """findings > claims-fail > not-audited > claims-unverified > clean (a finding outranks a
    gap, as exit code 1 outranks 3; a gap in the audit outranks one in the claims)."""
    if any(b["kind"] == "rule" for b in record["blocking"]):
        return FINDINGS
    if any(b["kind"] == "claim" for b in record["blocking"]):
        return CLAIMS_FAIL
    if record["not_audited"] or record.get("folder") is None or not record["layers"]:
        return NOT_AUDITED
    claims = record.get("claims")
    if claims is not None and claims.get("exit_code") != 0:
        return CLAIMS_UNVERIFIED
    return CLEAN


def _track(folder: str | None) -> str | None:
    parts = PurePosixPath(folder or "").parts
    return parts[1] if len(parts) >= 2 and parts[0] == "records" and parts[1].startswith("track_") else None




def _submission(disk: Path) -> dict[str, Any]:
    """What submission.json claims (the fields the triage table shows)."""
    from harness.evaluation.claim_logs import number  # the claim checks' own reading of a number

    for p in [disk / "submission.json"] + sorted(disk.glob("submission*.json")):
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                return {"error": f"{p.name} does not parse"}
            if not isinstance(data, dict):
                return {"error": f"{p.name} is not a JSON object"}
            out: dict[str, Any] = {"val_bpb": number(data.get("val_bpb")), "val_loss": number(data.get("val_loss"))}
            for key in ("val_bpb", "val_loss"):
                v = out[key]
                if v is not None and not v > 0:  # 0 or -1: a template's placeholder, no score can be
                    out[key] = None
                    out[f"{key}_placeholder"] = v
            for key in ("name", "author", "github_id", "date", "track"):
                if isinstance(data.get(key), (str, int, float)) and not isinstance(data.get(key), bool):
                    out[key] = str(data[key])[:200]
            return out
    return {}
