"""A tiny challenge repository with fake pull-request refs (refs/pull/N/head), written by us, for
the `golf-audit triage` tests and benchmark. Nothing here comes from the challenge: the record
folders are our fixtures (submissions/) and a few small scripts.

    PR  what                                                          static verdict
    1   a legal score-first TTT record (fixture legal_score_first_ttt)   clean
    2   the PR #713 fixture (train-before-score)                          findings
    3   a non-record folder, merged with "Merge pull request #3"           clean
    4   a record folder whose name has spaces                             clean
    5   the root train_gpt.py edited in place (script outside records/)   clean
    6   a README edit only                                                not-audited (no folder)
    7   two record folders: one with the script, one with notes only       clean (folder: the script's)
    8   PR 1's folder again, byte for byte                                 clean (audited once)
    9   a train_gpt.py that does not parse                                 not-audited
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "submissions"
TRACK = "records/track_10min_16mb"
NON_RECORD = "records/track_non_record_16mb"
ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

TINY_TRAIN = '''import json
import torch


def main():
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(10):
        x = torch.randn(8, 4)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(json.dumps({"val_bpb": 1.2}))


if __name__ == "__main__":
    main()
'''

EXPECTED_STATIC = {1: "clean", 2: "findings", 3: "clean", 4: "clean", 5: "clean", 6: "not-audited", 7: "clean",
                   8: "clean", 9: "not-audited"}
FOLDERS = {1: f"{TRACK}/2026-04-01_LegalTTT", 2: f"{TRACK}/2026-03-25_10L_LoRA_TTT",
           3: f"{NON_RECORD}/2026-04-02_Merged", 4: f"{TRACK}/2026-04-03 Space Name", 5: "", 6: None,
           7: f"{TRACK}/2026-04-05_Main", 8: f"{TRACK}/2026-04-01_LegalTTT", 9: f"{TRACK}/2026-04-06_Broken"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], env=ENV, check=True, capture_output=True,
                          text=True).stdout


def copy_fixture(name: str, dest: Path) -> None:
    shutil.copytree(FIXTURES / name, dest, ignore=shutil.ignore_patterns("expected.json", "__pycache__"))


def tiny_record(dest: Path, bpb: float, author: str = "tester") -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train_gpt.py").write_text(TINY_TRAIN)
    (dest / "README.md").write_text(f"# {dest.name}\n\nA tiny test record.\n")
    (dest / "submission.json").write_text(
        f'{{"name": "{dest.name}", "author": "{author}", "github_id": "{author}", "val_bpb": {bpb}, '
        f'"date": "2026-04-01", "bytes_total": 1000}}\n')


def add_pr(repo: Path, number: int, edit, base: str = "main") -> str:
    """A branch off `base` with `edit` applied, published as refs/pull/N/head; returns its head."""
    git(repo, "checkout", "-q", "-b", f"pr{number}", base)
    edit(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"PR {number}")
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-ref", f"refs/pull/{number}/head", head)
    git(repo, "checkout", "-q", "main")
    return head


def build(path: Path) -> Path:
    """Create the repository at `path` (a work tree; the triage reads only its git objects)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "commit.gpgsign", "false")
    (path / "train_gpt.py").write_text("print('the challenge baseline')\n")
    (path / "README.md").write_text("# challenge\n")
    (path / "data").mkdir()
    (path / "data" / "cached_challenge_fineweb.py").write_text("print('download shards')\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "base")

    add_pr(path, 1, lambda r: copy_fixture("legal_score_first_ttt", r / FOLDERS[1]))
    add_pr(path, 2, lambda r: copy_fixture("pr713", r / FOLDERS[2]))
    add_pr(path, 3, lambda r: tiny_record(r / FOLDERS[3], 1.31, "merger"))
    git(path, "merge", "-q", "--no-ff", "pr3", "-m", "Merge pull request #3 from merger/tiny")
    add_pr(path, 4, lambda r: tiny_record(r / FOLDERS[4], 1.25, "spacey"))

    def root_edit(r: Path) -> None:
        (r / "train_gpt.py").write_text(TINY_TRAIN)
    add_pr(path, 5, root_edit)

    def readme_only(r: Path) -> None:
        with open(r / "README.md", "a") as fh:
            fh.write("\na typo fixed\n")
    add_pr(path, 6, readme_only)

    def two_folders(r: Path) -> None:
        tiny_record(r / FOLDERS[7], 1.19, "twofold")
        notes = r / TRACK / "2026-04-05_Notes"
        notes.mkdir(parents=True)
        (notes / "README.md").write_text("notes only\n")
    add_pr(path, 7, two_folders)
    add_pr(path, 8, lambda r: copy_fixture("legal_score_first_ttt", r / FOLDERS[8]))

    def broken(r: Path) -> None:
        tiny_record(r / FOLDERS[9], 1.0, "broken")
        (r / FOLDERS[9] / "train_gpt.py").write_text("def main(:\n    pass\n")
    add_pr(path, 9, broken)
    return path
