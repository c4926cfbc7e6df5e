"""GA012 submission-layout: a pull request adds exactly one new record folder and touches nothing else.

Not a LibCST check: it reads the list of paths a PR changes (harness.ci.git_changes.Change) and is
called by the CI gate (`golf-audit ci`) through `Rule.check_change`. It has no static check and no
trace judge, so the generated example tests (tests/test_rules_examples.py) do not apply to it; its
cases are in tests/test_ci_gate.py (`check_change` on hand-written change lists and on real git
repositories).
"""
from __future__ import annotations

import fnmatch
from collections import OrderedDict
from pathlib import PurePosixPath
from typing import Iterable

from harness.ci.git_changes import SUBMODULE_MODE, SYMLINK_MODE, Change
from harness.core.findings import Confidence, Finding, Layer, Location, Severity
from harness.core.rule import Rule
from harness.challenge.layout import LOG_PATTERNS, REQUIRED, record_folder_of

STATUS_WORDS = {"A": "adds", "M": "modifies", "D": "deletes", "T": "changes the type of"}


def _what(path: str) -> str:
    """A short description of a path outside the new folder, for the message."""
    parts = PurePosixPath(path).parts
    if len(parts) == 1 and parts[0].startswith("train_gpt"):
        return "the challenge's root training script"
    if parts[0] == "data":
        return "the data scripts"
    if parts[0] == ".github":
        return "the repository's CI configuration"
    if parts[0] == "records":
        return "the records tree outside any record folder"
    return "a file outside records/"


class SubmissionLayout(Rule, id="GA012", name="submission-layout",
                       severity=Severity.HIGH, confidence=Confidence.HIGH, layers=(Layer.STATIC,)):
    # the static layer: it reads the PR's file list, not code; reported in the static SARIF run
    static_is_proof = True  # the PR's file list is the fact

    summary = ("Checks that a pull request adds exactly one new folder under `records/track_*/`, "
               "with the required files, and changes nothing else.")
    why = """
A record is judged on its own folder: the script that runs from it, its logs and its claims. A PR that
also edits the root `train_gpt.py`, the data scripts or another record changes what other records run
or what the evaluation reads, and that change is not part of the submission reviewers audit. A folder
without `submission.json`, `README.md`, a training script or its logs cannot be verified. Symlinks and
submodules make the folder depend on files outside it; the artifact must be self-contained.
"""
    example = """
# git diff --name-status main...pr
A  records/track_10min_16mb/2026-04-01_MyRecord/train_gpt.py
M  train_gpt.py                                   # edits the root script
M  records/track_10min_16mb/2026-03-19_Other/README.md   # edits another record
"""
    use_instead = """
# git diff --name-status main...pr
A  records/track_10min_16mb/2026-04-01_MyRecord/README.md
A  records/track_10min_16mb/2026-04-01_MyRecord/submission.json
A  records/track_10min_16mb/2026-04-01_MyRecord/train_gpt.py
A  records/track_10min_16mb/2026-04-01_MyRecord/train_seed42.log
"""
    known_problems = """
Only the gate (`golf-audit ci`) runs this rule: auditing a folder alone cannot see what else a PR
changed, so a plain `golf-audit FOLDER` reports nothing for it. A PR that is not a submission
(a maintainer's fix to the README or the data scripts) fails the gate by design; run the gate only on
submission PRs (the example workflow filters on `records/**`). Non-record-track folders must also be
named `records/track_*/...` to be recognised.
"""
    references = (
        "Challenge README, 'Submission process': a PR adds one folder under records/ with README.md, "
        "submission.json, the train log(s) and train_gpt.py, which must run from that folder",
        "Issue 6 (golf-audit CI gate)",
    )
    fix = ("Limit the PR to one new folder records/<track>/<date>_<name>/ holding README.md, "
           "submission.json, train_gpt.py (plus its own dependencies) and the train logs.")

    # No static examples: `check_static` is not overridden, so the generated example suite skips it.

    def check_change(self, changes: Iterable[Change], base_folders: set[str]) -> list[Finding]:
        """Findings for a PR's changes. `base_folders` are the record folders that exist at the
        merge base (a change inside one of them edits an existing record)."""
        changes = list(changes)
        new_folders: "OrderedDict[str, list[Change]]" = OrderedDict()
        findings: list[Finding] = []
        for ch in changes:
            folder = record_folder_of(ch.path)
            if folder is not None and folder not in base_folders and ch.status == "A":
                new_folders.setdefault(folder, []).append(ch)
        for ch in changes:
            folder = record_folder_of(ch.path)
            verb = STATUS_WORDS.get(ch.status, f"changes ({ch.status})")
            if folder is None:
                findings.append(self._at(ch.path, f"The PR {verb} `{ch.path}`, {_what(ch.path)}: a submission "
                                         "may only add its own record folder.", [f"{ch.status}\t{ch.path}"], ch.path))
            elif folder in base_folders:
                findings.append(self._at(ch.path, f"The PR {verb} `{ch.path}` in the existing record `{folder}`: "
                                         "a submission may not edit other records.",
                                         [f"{ch.status}\t{ch.path}", f"`{folder}` exists at the merge base"],
                                         ch.path))
            elif ch.new_mode == SYMLINK_MODE:
                findings.append(self._at(ch.path, f"`{ch.path}` is a symbolic link: the record folder must hold "
                                         "its files, not point outside itself.", [f"mode {ch.new_mode}"], ch.path))
            elif ch.new_mode == SUBMODULE_MODE:
                findings.append(self._at(ch.path, f"`{ch.path}` is a git submodule: the record folder must hold "
                                         "its files.", [f"mode {ch.new_mode}"], ch.path))
        if not new_folders:
            findings.append(self._at("records", "The PR adds no new folder under `records/track_*/`.",
                                     [f"{len(changes)} changed path(s)"], "no record folder"))
        for extra in list(new_folders)[1:]:
            first = next(iter(new_folders))
            findings.append(self._at(new_folders[extra][0].path,
                                     f"The PR adds a second record folder `{extra}` (the first is `{first}`): "
                                     "one submission per PR.", [f"{len(new_folders[extra])} file(s) added there"],
                                     f"second folder {extra}"))
        for folder, added in new_folders.items():
            findings += self._missing_files(folder, added)
        return findings

    def _missing_files(self, folder: str, added: list[Change]) -> list[Finding]:
        regular = [c for c in added if c.new_mode.startswith("100")]
        top = [PurePosixPath(c.path).name for c in regular if PurePosixPath(c.path).parent.as_posix() == folder]
        anywhere = [PurePosixPath(c.path).name for c in regular]
        present_anchor = next((c.path for c in regular if c.path.endswith("/README.md")), None) \
            or (regular[0].path if regular else added[0].path)
        out = []
        for pattern, what in REQUIRED:
            if not any(fnmatch.fnmatch(n, pattern) for n in top):
                out.append(self._at(present_anchor, f"The record folder `{folder}` has no {what}.",
                                    [f"files at the top of the folder: {', '.join(sorted(top)) or 'none'}"],
                                    f"missing {pattern}", severity=Severity.MEDIUM))
        if not any(fnmatch.fnmatch(n, p) for n in anywhere for p in LOG_PATTERNS):
            out.append(self._at(present_anchor, f"The record folder `{folder}` has no train log (*.log or *.txt).",
                                [f"{len(anywhere)} file(s) in the folder"], "missing log", severity=Severity.MEDIUM))
        return out

    def _at(self, path: str, message: str, evidence: list[str], key: str,
            severity: Severity | None = None) -> Finding:
        # `source_line` carries what the finding is about: the fingerprint (no line numbers) then
        # tells "missing README.md" from "missing submission.json" at the same anchor file.
        f = self.finding(Layer.STATIC, message, Location(path=path, line=1, source_line=key), evidence)
        if severity is not None:
            f.severity = severity
        return f

