"""What a pull request changed, read with plain git plumbing (no work tree needed).

Files are read from the head *commit*, never from the work tree and never through `git archive`
(a PR could hide files from an archive with `export-ignore` in .gitattributes, or smudge them with
a filter): the audited bytes are exactly the committed blobs."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

SYMLINK_MODE, SUBMODULE_MODE = "120000", "160000"


class GitError(Exception):
    """git failed: a bad ref, not a repository (a usage error for the gate)."""


@dataclass(frozen=True)
class Change:
    """One entry of `git diff --raw`: status A/M/D/T (renames are split into D + A)."""

    status: str
    path: str  # repo-relative, posix
    old_mode: str = "000000"
    new_mode: str = "000000"

    @property
    def parts(self) -> tuple[str, ...]:
        return PurePosixPath(self.path).parts


@dataclass(frozen=True)
class TreeFile:
    path: str  # repo-relative, posix
    mode: str
    size: int | None  # None for submodules


def git(repo: Path, *args: str, binary: bool = False) -> str | bytes:
    # -c core.quotepath=off: names with non-ASCII characters come back as they are
    cmd = ["git", "-C", str(repo), "-c", "core.quotepath=off", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"{' '.join(cmd[3:])}: {exc}") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(f"git {' '.join(args[:3])}: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc.stdout if binary else proc.stdout.decode("utf-8", "replace")


def resolve(repo: Path, ref: str) -> str:
    """The commit a ref names (full sha)."""
    if not ref or ref.startswith("-"):
        raise GitError(f"not a ref: {ref!r}")
    try:
        return str(git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")).strip()
    except GitError:
        raise GitError(f"unknown revision {ref!r} (fetch it first: the gate needs the base commit, "
                       "e.g. actions/checkout with fetch-depth: 0)") from None


def repo_root(path: Path) -> Path:
    return Path(str(git(path, "rev-parse", "--show-toplevel")).strip())


def merge_base(repo: Path, base: str, head: str) -> str:
    """What the PR is compared with: the merge base, as GitHub's "Files changed" does."""
    return str(git(repo, "merge-base", base, head)).strip()


def changed_files(repo: Path, base: str, head: str) -> list[Change]:
    """Every path the PR changes between `base` (a commit) and `head`; renames are split into a
    deletion and an addition so a moved record shows as an edit of that record."""
    out = git(repo, "diff", "--raw", "-z", "--no-renames", "--no-abbrev", "--no-ext-diff",
              "--no-textconv", base, head, "--", binary=True)
    fields = out.split(b"\0")
    changes = []
    i = 0
    while i + 1 < len(fields):
        meta, path = fields[i].decode("utf-8", "replace"), fields[i + 1].decode("utf-8", "replace")
        i += 2
        if not meta.startswith(":"):
            continue
        old_mode, new_mode, _old, _new, status = meta[1:].split(" ")
        changes.append(Change(status=status[0], path=path, old_mode=old_mode, new_mode=new_mode))
    return changes


def tree_files(repo: Path, commit: str, folder: str = "") -> list[TreeFile]:
    """Files (blobs, symlinks, submodules) under `folder` at `commit`, with sizes."""
    args = ["ls-tree", "-r", "-l", "-z", "--full-tree", commit]
    if folder:
        args += ["--", folder.rstrip("/") + "/"]
    out = git(repo, *args, binary=True)
    files = []
    for entry in out.split(b"\0"):
        if not entry:
            continue
        meta, path = entry.split(b"\t", 1)
        mode, _kind, _sha, size = meta.decode().split()
        files.append(TreeFile(path.decode("utf-8", "replace"), mode,
                              int(size) if size.isdigit() else None))
    return files


def record_folders(repo: Path, commit: str) -> set[str]:
    """`records/<track>/<name>` folders that exist at `commit`."""
    out = str(git(repo, "ls-tree", "-d", "-z", "--name-only", "--full-tree", commit, "--", "records/"))
    tracks = [t for t in out.split("\0") if t]
    folders: set[str] = set()
    for track in tracks:
        sub = str(git(repo, "ls-tree", "-d", "-z", "--name-only", "--full-tree", commit, "--", track + "/"))
        folders |= {s for s in sub.split("\0") if s}
    return folders


def materialize(repo: Path, commit: str, folder: str, dest_root: Path) -> tuple[Path, list[str]]:
    """Write the regular files of `folder` at `commit` under dest_root (same relative layout).
    Symlinks, submodules and unreadable names are not written (a record must be self-contained);
    they are returned as skipped paths."""
    skipped = []
    for f in tree_files(repo, commit, folder):
        if f.mode in (SYMLINK_MODE, SUBMODULE_MODE) or not f.mode.startswith("100"):
            skipped.append(f.path)
            continue
        rel = PurePosixPath(f.path)
        if ".." in rel.parts or rel.is_absolute():  # git forbids these; be sure anyway
            skipped.append(f.path)
            continue
        try:  # a name that is not UTF-8 was decoded with replacement characters and cannot be read back
            blob = git(repo, "cat-file", "blob", f"{commit}:{f.path}", binary=True)
        except GitError:
            skipped.append(f.path)
            continue
        target = dest_root.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    return dest_root.joinpath(*PurePosixPath(folder).parts), skipped
