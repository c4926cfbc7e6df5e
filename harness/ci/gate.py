"""`golf-audit ci`: the pull-request gate, run inside a checkout of the challenge repository.

    golf-audit ci --base REF [--head REF] [--dynamic] [--out DIR] [--sota-bpb X | --sota-logs DIR]

1. What the PR changed: `git diff --raw` between the merge base of BASE and HEAD, and HEAD.
2. Layout: the rules with a change check (`Rule.check_change`) judge the changed paths (e.g.
   exactly one new folder under records/track_*/, nothing else).
3. Each new record folder, read from the HEAD commit's blobs into a scratch folder: the static
   audit, `golf-eval verify` (claims vs logs), and with --dynamic the toy-scale dynamic audit.
4. Writes OUT/golf-audit.sarif (runs: static incl. layout, dynamic, claims), OUT/summary.md
   (the PR comment) and OUT/verdict.json. Exit code as golf-audit: 0 clean, 1 findings,
   2 usage, 3 not auditable (1 outranks 3).

Which verify checks gate the exit code: every check except `seeds` (information) and
`significance`, which gates only when a record is given (--sota-bpb / --sota-logs); without one it
is reported as informational, since a PR may be a non-record submission. A gating check that fails
is a finding (1); one that is unverified (the logs do not show it) makes the PR not auditable (3).

In CI the submission's own `# golf-audit: ignore[...]` comments are not honoured (the author of the
code under review cannot waive its findings); they are shown as evidence. --honor-suppressions
restores the usual behaviour. No configuration is read from the PR's files (pyproject.toml).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from harness.ci import claims_sarif, summary
from harness.ci.git_changes import Change, GitError, changed_files, materialize, merge_base, record_folders, \
    repo_root, resolve, tree_files
from harness.core.findings import AuditResult, ExitCode, Finding, Layer, NotAudited, Severity, worst_exit
from harness.challenge.layout import record_folder_of
from harness.core.registry import all_rules
from harness.core.usage import UsageParser

SARIF_NAME, SUMMARY_NAME, VERDICT_NAME = "golf-audit.sarif", "summary.md", "verdict.json"
MAX_FOLDERS = 3  # a PR adding more is already a layout finding; audit a few, say so for the rest
INFORMATIONAL = {"seeds"}  # verify checks that never gate



def ci_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="golf-audit ci", description="Gate a Parameter Golf pull request: layout, static audit, "
                "claims vs logs (golf-eval verify), optionally the dynamic toy audit.")
    p.add_argument("--base", required=True, metavar="REF", help="the branch the PR targets (e.g. origin/main or a sha)")
    p.add_argument("--head", default="HEAD", metavar="REF", help="the PR's head commit (default: HEAD)")
    p.add_argument("--repo", default=".", metavar="DIR", help="the checkout (default: current directory)")
    p.add_argument("--out", default="golf-audit-ci", metavar="DIR",
                   help=f"where {SARIF_NAME}, {SUMMARY_NAME} and {VERDICT_NAME} go (default: golf-audit-ci)")
    p.add_argument("--dynamic", action="store_true", help="also run the dynamic toy audit on the record folder")
    p.add_argument("--timeout", type=int, default=None, metavar="S", help="dynamic: seconds per run")
    p.add_argument("--allow-weak-sandbox", action="store_true",
                   help="dynamic: without bubblewrap, run under `unshare -Urn` (writes NOT confined; the summary, "
                        "SARIF and verdict.json warn) instead of reporting the folder as not audited")
    p.add_argument("--fail-on", choices=["low", "medium", "high"], default="medium",
                   help="lowest finding severity that fails the gate (default: medium)")
    sota = p.add_mutually_exclusive_group()
    sota.add_argument("--sota-bpb", type=float, default=None, metavar="X",
                      help="current record's val_bpb: makes significance gate the exit code")
    sota.add_argument("--sota-logs", default=None, metavar="DIR",
                      help="current record's folder (in the base checkout): makes significance gate")
    p.add_argument("--margin-nats", type=float, default=0.005, help="significance margin (default 0.005)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    p.add_argument("--honor-suppressions", action="store_true",
                   help="honour the submission's own `# golf-audit: ignore` comments (off in CI)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


@dataclass
class FolderOutcome:
    """Everything the gate learned about one new record folder."""

    folder: str  # repo-relative
    disk: Path  # the scratch copy read from the head commit
    files: list = field(default_factory=list)  # TreeFile at head
    audit: AuditResult | None = None
    verify: object | None = None  # VerifyReport, or None when verify could not run
    verify_error: str = ""
    gating: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)  # symlinks/submodules not copied

    def claims_exit(self) -> ExitCode:
        if self.verify is None:
            return ExitCode.NOT_AUDITABLE
        statuses = {c.status for c in self.verify.checks if c.name in self.gating}
        if "fail" in statuses:
            return ExitCode.FINDINGS
        if "unverified" in statuses or not self.verify.checks:
            return ExitCode.NOT_AUDITABLE
        return ExitCode.CLEAN


@dataclass
class GateResult:
    base: str
    head: str
    merge_base: str
    fail_on: Severity
    changes: list[Change]
    layout: list[Finding]
    folders: list[FolderOutcome]
    not_audited: list[NotAudited] = field(default_factory=list)  # PR-level (folders beyond MAX_FOLDERS)
    dynamic: bool = False
    significance_gates: bool = False
    sarif_problems: list[str] = field(default_factory=list)

    def exit_code(self) -> ExitCode:
        codes = [ExitCode.FINDINGS if any(f.severity >= self.fail_on for f in self.layout) else ExitCode.CLEAN]
        for fo in self.folders:
            codes.append(fo.audit.exit_code(self.fail_on) if fo.audit else ExitCode.NOT_AUDITABLE)
            codes.append(fo.claims_exit())
        if self.not_audited:
            codes.append(ExitCode.NOT_AUDITABLE)
        return worst_exit(codes)


def change_findings(changes: list[Change], base_folders: set[str]) -> list[Finding]:
    """What the rules with a change check say about the PR's changed paths."""
    return [f for rule in all_rules() if rule.has_change_check() for f in rule.check_change(changes, base_folders)]


def new_record_folders(changes: list[Change], base_folders: set[str]) -> list[str]:
    out: list[str] = []
    for ch in changes:
        folder = record_folder_of(ch.path)
        if folder and folder not in base_folders and ch.status == "A" and folder not in out:
            out.append(folder)
    return out


def run_gate(args: argparse.Namespace, scratch: Path) -> GateResult:
    from harness.audit import audit_paths

    repo = repo_root(Path(args.repo))
    base, head = resolve(repo, args.base), resolve(repo, args.head)
    mb = merge_base(repo, base, head)
    changes = changed_files(repo, mb, head)
    base_folders = record_folders(repo, mb)
    gate = GateResult(base=base, head=head, merge_base=mb, fail_on=Severity[args.fail_on.upper()],
                      changes=changes, layout=change_findings(changes, base_folders), folders=[],
                      dynamic=args.dynamic,
                      significance_gates=args.sota_bpb is not None or args.sota_logs is not None)
    folders = new_record_folders(changes, base_folders)
    for extra in folders[MAX_FOLDERS:]:
        gate.not_audited.append(NotAudited(extra, f"not audited: the gate audits at most {MAX_FOLDERS} new folders"))
    for rel in folders[:MAX_FOLDERS]:
        disk, skipped = materialize(repo, head, rel, scratch)
        fo = FolderOutcome(folder=rel, disk=disk, files=tree_files(repo, head, rel), skipped=skipped)
        gate.folders.append(fo)
        gate.not_audited += [NotAudited(p, "not audited: not a regular file (symlink, submodule) or unreadable "
                                        "name; not copied into the audited folder") for p in skipped]
    if gate.folders:
        options = {"dynamic": args.dynamic, "timeout": args.timeout, "jobs": 1, "cache_dir": None,
                   "allow_weak_sandbox": args.allow_weak_sandbox}
        results = audit_paths([str(fo.disk) for fo in gate.folders], options)
        for fo, res in zip(gate.folders, results):
            if not args.honor_suppressions:
                _unsuppress(res)
            if not args.dynamic:
                res.notes.append("dynamic toy audit not requested (run the gate with --dynamic): "
                                 "trace- and probe-only rules not audited")
            fo.audit = res
            _verify(fo, args, repo, gate.significance_gates)
    return gate


def _unsuppress(res: AuditResult) -> None:
    for f in res.findings:
        if f.suppressed is not None:
            f.evidence.append(f"the submission suppresses this in its source ({f.suppressed!r}); "
                              "not honoured by the CI gate")
            f.suppressed = None


def _verify(fo: FolderOutcome, args: argparse.Namespace, repo: Path, significance_gates: bool) -> None:
    from harness.evaluation.claims import verify
    from harness.evaluation.verify_report import VerifyOptions

    sota_logs = None
    if args.sota_logs:
        sota_logs = Path(args.sota_logs)
        if not sota_logs.is_absolute():
            sota_logs = repo / sota_logs
    opts = VerifyOptions(sota_bpb=args.sota_bpb, sota_logs=sota_logs, margin_nats=args.margin_nats, alpha=args.alpha)
    try:
        fo.verify = verify(fo.disk, opts)
    except Exception as exc:  # noqa: BLE001 - claims that could not be checked are "not audited"
        fo.verify_error = f"golf-eval verify could not run: {type(exc).__name__}: {exc}"
        if args.debug:
            traceback.print_exc()
        return
    # the blocking tier gates (golf-eval verify's own); advisories (format) are listed only
    fo.gating = {c.name for c in fo.verify.checks
                 if c.name not in INFORMATIONAL and getattr(c, "tier", "blocking") == "blocking"
                 and (c.name != "significance" or significance_gates)}


def _relativize(gate: GateResult, scratch: Path) -> None:
    """Reports name repo-relative folders, not the scratch copy."""
    prefix = str(scratch) + "/"
    for fo in gate.folders:
        res = fo.audit
        if res is None:
            continue
        res.target = fo.folder
        for na in res.not_audited:
            na.path = na.path.replace(prefix, "")
            na.reason = na.reason.replace(prefix, "")
            na.detail = na.detail.replace(prefix, "")
        res.notes = [n.replace(prefix, "") for n in res.notes]
        res.warnings = [w.replace(prefix, "") for w in res.warnings]
        for f in res.findings:
            f.evidence = [e.replace(prefix, "") for e in f.evidence]
        if fo.verify is not None:
            fo.verify.target = fo.folder


def build_sarif(gate: GateResult, scratch: Path) -> dict:
    from harness.reports import sarif

    rules = all_rules()
    layout = AuditResult(target=str(scratch), findings=list(gate.layout), layers_run=["static"])
    doc = sarif.build([layout] + [fo.audit for fo in gate.folders if fo.audit], rules, root=scratch)
    items = [(fo.folder, fo.disk, fo.verify, fo.gating) for fo in gate.folders if fo.verify is not None]
    if items:
        doc["runs"].append(claims_sarif.build_run(items))
    return doc


def verdict_dict(gate: GateResult) -> dict:
    from harness.core.serialize import result_to_dict

    code = gate.exit_code()
    return {
        "schema": "golf-audit-ci/1",
        "exit_code": int(code),
        "verdict": {0: "clean", 1: "findings", 2: "usage", 3: "not-audited"}[int(code)],
        "base": gate.base, "head": gate.head, "merge_base": gate.merge_base,
        "fail_on": gate.fail_on.name.lower(),
        "dynamic": gate.dynamic,
        "significance_gates": gate.significance_gates,
        "changes": [{"status": c.status, "path": c.path, "mode": c.new_mode} for c in gate.changes],
        "layout": [f.to_dict() for f in gate.layout],
        "not_audited": [{"path": n.path, "reason": n.reason} for n in gate.not_audited],
        "folders": [{
            "folder": fo.folder,
            "files": [{"path": f.path, "mode": f.mode, "bytes": f.size} for f in fo.files],
            "audit": result_to_dict(fo.audit, gate.fail_on) if fo.audit else None,
            "verify": fo.verify.to_dict() if fo.verify is not None else None,
            "verify_error": fo.verify_error,
            "gating_checks": sorted(fo.gating),
            "claims_exit_code": int(fo.claims_exit()),
        } for fo in gate.folders],
        "sarif_problems": gate.sarif_problems,
    }


def write_outputs(gate: GateResult, scratch: Path, out: Path) -> None:
    from harness.reports.sarif_check import validate_sarif

    doc = build_sarif(gate, scratch)
    gate.sarif_problems = validate_sarif(doc)
    _relativize(gate, scratch)
    out.mkdir(parents=True, exist_ok=True)
    (out / SARIF_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / SUMMARY_NAME).write_text(summary.render(gate), encoding="utf-8")
    (out / VERDICT_NAME).write_text(json.dumps(verdict_dict(gate), indent=2, default=str) + "\n", encoding="utf-8")


def main_ci(argv: list[str]) -> int:
    """The `golf-audit ci` subcommand; returns the exit code, never raises."""
    try:
        args = ci_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    out = Path(args.out)
    scratch = Path(tempfile.mkdtemp(prefix="golf-audit-ci-"))
    try:
        gate = run_gate(args, scratch)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"golf-audit ci: usage error: cannot write to --out {out}: {exc.strerror or exc}", file=sys.stderr)
            return ExitCode.USAGE
        write_outputs(gate, scratch, out)
    except GitError as exc:
        print(f"golf-audit ci: usage error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except Exception as exc:  # noqa: BLE001 - never a bare traceback, never a pass
        if args.debug:
            traceback.print_exc()
        print(f"golf-audit ci: internal error: {type(exc).__name__}: {exc} (not audited)", file=sys.stderr)
        return ExitCode.NOT_AUDITABLE
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    code = gate.exit_code()
    if gate.sarif_problems:
        print("golf-audit ci: SARIF problems: " + "; ".join(gate.sarif_problems), file=sys.stderr)
    print(f"golf-audit ci: {verdict_dict(gate)['verdict']} (exit {int(code)}); wrote {out / SARIF_NAME}, "
          f"{out / SUMMARY_NAME}, {out / VERDICT_NAME}", file=sys.stderr)
    return code
