"""Which folder each pull request of the challenge repository adds, read with git plumbing only
(a bare clone is enough; no work tree, no checkout, no `git archive`).

For each PR whose head is `refs/pull/N/head`:

- open (head not on main): the PR's changes are the diff between the merge base of main and the
  head, and the head, as GitHub's "Files changed" tab shows them;
- merged (head an ancestor of main): the merge commit "Merge pull request #N ..." on main, diffed
  against its first parent (the main the PR was merged into); a merged PR with no such commit
  (fast-forwarded, squashed onto main by hand) is not audited, with that reason.

The submission folder is the changed folder that holds the training script: under
`records/track_*/<name>/` (or `records/<name>/`) when the PR adds one, else the folder of the
changed Python files (a PR that puts its script outside records/). A PR that changes several
candidate folders gets the one with a `train*.py`; the others are listed. The folder's files are
read from the commit's blobs with one long-lived `git cat-file --batch` (like the CI gate, so
`.gitattributes` cannot hide or rewrite a file)."""
from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

SYMLINK_MODE, SUBMODULE_MODE = "120000", "160000"
MERGE_SUBJECT = re.compile(r"^Merge pull request #(\d+)\b")
NULL_OID = "0" * 40


class GitError(Exception):
    """git failed or the path is not a git repository."""


def git(repo: str, *args: str, input: bytes | None = None, timeout: float = 300) -> bytes:
    cmd = ["git", "--git-dir", repo, "-c", "core.quotepath=off", *args]
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"git {' '.join(args[:2])}: {exc}") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(f"git {' '.join(args[:2])}: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc.stdout


def git_dir(path: str) -> str:
    """The git directory of a clone (bare or not), absolute."""
    try:
        proc = subprocess.run(["git", "-C", path, "rev-parse", "--absolute-git-dir"], capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"{path}: {exc}") from None
    if proc.returncode != 0:
        raise GitError(f"{path}: not a git repository")
    return proc.stdout.decode().strip()


@dataclass(frozen=True)
class Entry:
    """One file of the PR's diff, or of the audited folder (repo-relative posix path)."""

    path: str
    mode: str
    oid: str
    status: str = "A"  # A/M/T (D entries are kept apart)


@dataclass
class PRSource:
    """Where one PR's submission is in the clone, or why none was found."""

    number: int
    head: str  # refs/pull/N/head
    commit: str = ""  # the commit the folder is read from (the head, or the merge commit)
    base: str = ""  # what the changes are measured against
    how: str = ""  # "open" | "merged" (with the merge commit)
    folder: str | None = None  # repo-relative; "" = the repository root
    other_folders: list[str] = field(default_factory=list)
    files: list[Entry] = field(default_factory=list)  # the files to extract (repo-relative)
    skipped: list[str] = field(default_factory=list)  # symlinks, submodules: not extracted
    changed: int = 0  # paths the PR changes
    reason: str = ""  # why nothing can be audited (set => folder is None)
    note: str = ""  # how the folder was chosen, when it was not the obvious case

    def to_dict(self) -> dict:
        d = asdict(self)
        d["files"] = [asdict(e) for e in self.files]
        return d


class CatFile:
    """One `git cat-file --batch` process: blobs and trees by object id, without a process per
    object. Thread-safe (one request at a time)."""

    def __init__(self, repo: str):
        self.repo = repo
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(["git", "--git-dir", repo, "cat-file", "--batch"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def read(self, spec: str) -> tuple[str, bytes] | None:
        """(type, content) of an object (oid or `commit:path`), or None when it is missing."""
        if "\n" in spec:
            return None
        with self._lock:
            assert self._proc.stdin and self._proc.stdout
            self._proc.stdin.write(spec.encode() + b"\n")
            self._proc.stdin.flush()
            header = self._proc.stdout.readline()
            if not header:
                raise GitError("git cat-file --batch ended")
            parts = header.split()
            if len(parts) != 3:  # "<spec> missing" / "ambiguous"
                return None
            size = int(parts[2])
            data = self._read_exact(size)
            self._proc.stdout.read(1)  # the newline after the content
            return parts[1].decode(), data

    def _read_exact(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self._proc.stdout.read(left)  # type: ignore[union-attr]
            if not chunk:
                raise GitError("git cat-file --batch: short read")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def tree_files(self, commit: str, folder: str) -> list[Entry] | None:
        """Every entry under `folder` at `commit`, recursively (None when the folder is absent)."""
        spec = f"{commit}:{folder}" if folder else f"{commit}^{{tree}}"
        obj = self.read(spec)
        if obj is None or obj[0] != "tree":
            return None
        out: list[Entry] = []
        self._walk(obj[1], folder, out)
        return out

    def _walk(self, data: bytes, prefix: str, out: list[Entry]) -> None:
        i = 0
        while i < len(data):
            sp = data.index(b" ", i)
            nul = data.index(b"\0", sp)
            mode = data[i:sp].decode().rjust(6, "0")
            name = data[sp + 1:nul].decode("utf-8", "replace")
            oid = data[nul + 1:nul + 21].hex()
            i = nul + 21
            path = f"{prefix}/{name}" if prefix else name
            if mode == "040000":
                sub = self.read(oid)
                if sub is not None and sub[0] == "tree":
                    self._walk(sub[1], path, out)
            else:
                out.append(Entry(path, mode, oid))

    def sizes(self, oids: list[str]) -> dict[str, int | None]:
        """oid -> size in bytes, or None for an object the clone lacks (one `--batch-check`)."""
        uniq = sorted(set(oids))
        if not uniq:
            return {}
        out = git(self.repo, "cat-file", "--batch-check", input="".join(o + "\n" for o in uniq).encode())
        sizes: dict[str, int | None] = {}
        for line in out.decode().splitlines():
            parts = line.split()
            sizes[parts[0]] = int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else None
        return sizes

    def close(self) -> None:
        try:
            if self._proc.stdin:
                self._proc.stdin.close()
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()

    def __enter__(self) -> "CatFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ discovery
def pull_heads(repo: str) -> dict[int, str]:
    """PR number -> the commit of refs/pull/N/head."""
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/pull/").decode()
    heads = {}
    for line in out.splitlines():
        ref, _, oid = line.partition(" ")
        m = re.fullmatch(r"refs/pull/(\d+)/head", ref)
        if m:
            heads[int(m.group(1))] = oid
    return heads


def main_history(repo: str, main: str) -> tuple[set[str], dict[int, tuple[str, str]]]:
    """The commits on main, and PR number -> (merge commit, its first parent) for every
    "Merge pull request #N" on main (the latest one when a PR was merged twice)."""
    commits = set(git(repo, "rev-list", main).decode().split())
    merges: dict[int, tuple[str, str]] = {}
    out = git(repo, "log", "--merges", "--format=%H %P%x1f%s", main).decode("utf-8", "replace")
    for line in out.splitlines():
        ids, _, subject = line.partition("\x1f")
        m = MERGE_SUBJECT.match(subject)
        parts = ids.split()
        if m and len(parts) >= 3 and int(m.group(1)) not in merges:
            merges[int(m.group(1))] = (parts[0], parts[1])
    return commits, merges


def _merge_base(repo: str, a: str, b: str) -> str | None:
    try:
        return git(repo, "merge-base", a, b).decode().strip() or None
    except GitError:
        return None  # unrelated histories


def merge_bases(repo: str, main: str, heads: list[str]) -> dict[str, str | None]:
    """head -> its merge base with `main` (as `git merge-base main head`), for many heads with two
    `git rev-list` calls instead of one `git merge-base` per head (2,000 of those took 34 s here).

    The commits reachable from the heads but not from main are read with their parents; a head's
    merge-base candidates are the main commits its side of the graph reaches first; the best
    candidate is the one that no other candidate descends from (main's own ancestry decides).
    With several best candidates (criss-cross merges) the latest on main is taken."""
    heads = sorted(set(heads))
    if not heads:
        return {}
    main_parents: dict[str, list[str]] = {}
    order: list[str] = []  # main's commits, children before parents
    for line in git(repo, "rev-list", "--topo-order", "--parents", main).decode().splitlines():
        c, *ps = line.split()
        main_parents[c] = ps
        order.append(c)
    rank = {c: i for i, c in enumerate(order)}  # smaller = later on main
    side: dict[str, list[str]] = {}
    side_order: list[str] = []
    stdin = ("\n".join(heads) + "\n^" + main + "\n").encode()
    out = git(repo, "rev-list", "--topo-order", "--parents", "--stdin", input=stdin).decode()
    for line in out.splitlines():
        c, *ps = line.split()
        side[c] = ps
        side_order.append(c)
    frontier: dict[str, frozenset[str]] = {}
    for c in reversed(side_order):  # parents before children
        acc: set[str] = set()
        for p in side[c]:
            if p in main_parents:
                acc.add(p)
            else:
                acc |= frontier.get(p, frozenset())
        frontier[c] = frozenset(acc)
    ancestors: dict[str, set[str]] = {}

    def ancestors_of(c: str) -> set[str]:  # main commits strictly below c (iterative)
        if c not in ancestors:
            seen: set[str] = set()
            stack = list(main_parents.get(c, []))
            while stack:
                p = stack.pop()
                if p not in seen:
                    seen.add(p)
                    stack.extend(main_parents.get(p, []))
            ancestors[c] = seen
        return ancestors[c]

    result: dict[str, str | None] = {}
    for h in heads:
        if h in main_parents:
            result[h] = h
            continue
        cands = frontier.get(h, frozenset())
        best = [c for c in cands if not any(c in ancestors_of(o) for o in cands if o != c)]
        result[h] = min(best, key=lambda c: rank[c]) if best else None
    return result


def diff_many(repo: str, pairs: list[tuple[str, str]]) -> list[tuple[list[Entry], list[str]]]:
    """For each (base, head): the changed entries at head (A/M/T) and the deleted paths, with one
    `git diff-tree --stdin` for all of them (no renames: a move is a deletion and an addition)."""
    if not pairs:
        return []
    stdin = "".join(f"{head} {base}\n" for base, head in pairs).encode()
    out = git(repo, "diff-tree", "--stdin", "--always", "-r", "-z", "--raw", "--no-renames", "--no-abbrev",
              input=stdin)
    fields = out.split(b"\0")
    results: list[tuple[list[Entry], list[str]]] = []
    i = 0
    while i < len(fields):
        tok = fields[i]
        if not tok:
            i += 1
            continue
        if not tok.startswith(b":"):  # the header of the next pair: its head commit
            results.append(([], []))
            i += 1
            continue
        meta = tok.decode()[1:].split(" ")
        path = fields[i + 1].decode("utf-8", "replace")
        i += 2
        _old_mode, new_mode, _old, new, status = meta
        if status.startswith("D"):
            results[-1][1].append(path)
        else:
            results[-1][0].append(Entry(path, new_mode, new, status[0]))
    if len(results) != len(pairs):
        raise GitError(f"git diff-tree --stdin: {len(results)} diffs for {len(pairs)} pairs")
    return results


def _candidate(path: str) -> str | None:
    """The record folder a path belongs to: records/track_*/<name> or records/<name>."""
    parts = PurePosixPath(path).parts
    if len(parts) >= 4 and parts[0] == "records" and parts[1].startswith("track_"):
        return "/".join(parts[:3])
    if len(parts) >= 3 and parts[0] == "records" and not parts[1].startswith("track_"):
        return "/".join(parts[:2])
    return None


def _container(folder: str) -> bool:
    """The repository root, records/ or records/track_*: folders that hold other submissions."""
    parts = PurePosixPath(folder).parts
    return not parts or (parts[0] == "records" and (len(parts) == 1 or (len(parts) == 2 and parts[1].startswith("track_"))))


def _is_train(name: str) -> bool:
    return name.startswith("train") and name.endswith(".py")


def choose_folder(changed: list[Entry]) -> tuple[str | None, list[str], str]:
    """(folder, other candidate folders, note) from the PR's changed files at head."""
    by_folder: dict[str, list[str]] = {}
    for e in changed:
        c = _candidate(e.path)
        if c is not None:
            by_folder.setdefault(c, []).append(e.path[len(c) + 1:])

    def rank(item: tuple[str, list[str]]) -> tuple:
        _folder, rels = item
        top_train = any("/" not in r and _is_train(r) for r in rels)
        any_train = any(_is_train(PurePosixPath(r).name) for r in rels)
        any_py = any(r.endswith(".py") for r in rels)
        return (top_train, any_train, any_py, "submission.json" in rels, len(rels))

    ranked = sorted(by_folder.items(), key=rank, reverse=True)
    if ranked and rank(ranked[0])[2]:  # a record folder with Python code
        return ranked[0][0], [f for f, _ in ranked[1:]], ""
    # the script is outside records/: the folder of the changed Python files
    py_dirs: dict[str, list[str]] = {}
    for e in changed:
        if e.path.endswith(".py") and _candidate(e.path) is None:
            d = str(PurePosixPath(e.path).parent)
            py_dirs.setdefault("" if d == "." else d, []).append(PurePosixPath(e.path).name)
    if py_dirs:
        best = max(py_dirs.items(), key=lambda kv: (any(_is_train(n) for n in kv[1]), len(kv[1]), kv[0] != ""))[0]
        others = [d or "." for d in py_dirs if d != best] + [f for f, _ in ranked]
        where = best or "the repository root"
        note = f"the PR's Python code is not in a record folder (it is in {where})"
        if ranked:
            note += f"; record folder(s) without Python code: {', '.join(f for f, _ in ranked)}"
        return best, others, note
    if ranked:
        return None, [f for f, _ in ranked], ""
    return None, [], ""


def discover(repo: str, numbers: list[int] | None = None, main: str = "HEAD", cat: CatFile | None = None) -> list[PRSource]:
    """The submission folder of each PR (all PRs with a head ref when `numbers` is None)."""
    heads = pull_heads(repo)
    try:
        main_commit = git(repo, "rev-parse", "--verify", f"{main}^{{commit}}").decode().strip()
    except GitError:
        raise GitError(f"unknown revision {main!r} (the challenge's main)") from None
    on_main, merges = main_history(repo, main_commit)
    wanted = sorted(heads) if numbers is None else list(numbers)
    sources = [PRSource(number=n, head=heads.get(n, "")) for n in wanted]
    open_prs = []
    for s in sources:
        if not s.head:
            s.reason = f"no refs/pull/{s.number}/head in the clone"
        elif s.head in on_main:
            if s.number in merges:
                s.commit, s.base = merges[s.number]
                s.how = f"merged ({s.commit[:12]})"
            else:
                # rebased or fast-forwarded onto main: the head commit's own change picks the
                # folder (the folder itself is read whole at the head)
                parents = git(repo, "rev-list", "--parents", "-n", "1", s.head).decode().split()[1:]
                if parents:
                    s.commit, s.base = s.head, parents[0]
                    s.how = "on main"
                    s.note = ("merged without a merge commit: the folder is the one the head commit "
                              "itself changes")
                else:
                    s.reason = "the PR's head is main's root commit"
        else:
            open_prs.append(s)
    bases = merge_bases(repo, main_commit, [s.head for s in open_prs])
    for s in open_prs:
        b = bases.get(s.head)
        if b is None:
            s.reason = "the PR's head shares no history with main"
        else:
            s.commit, s.base, s.how = s.head, b, "open"
    todo = [s for s in sources if s.commit and not s.reason]
    diffs = diff_many(repo, [(s.base, s.commit) for s in todo])
    own_cat = cat is None
    cat = cat or CatFile(repo)
    try:
        for s, (changed, deleted) in zip(todo, diffs):
            s.changed = len(changed) + len(deleted)
            _locate(s, changed, deleted, cat)
    finally:
        if own_cat:
            cat.close()
    return sources


def _locate(s: PRSource, changed: list[Entry], deleted: list[str], cat: CatFile) -> None:
    if not changed:
        s.reason = "no submission folder: the PR adds or changes no file" + (
            f" (it deletes {len(deleted)})" if deleted else "")
        return
    folder, others, note = choose_folder(changed)
    s.other_folders = others
    s.note = "; ".join(x for x in (s.note, note) if x)
    if folder is None:
        where = f" (record folder(s) without code: {', '.join(others)})" if others else ""
        s.reason = f"no submission folder: the PR changes no Python file{where}"
        return
    s.folder = folder
    if _container(folder):
        # the root script edited in place, or files loose in records/ or a track folder: only
        # the files the PR changed there are its submission (not the challenge's, not others')
        entries = [e for e in changed if str(PurePosixPath(e.path).parent) == (folder or ".")]
    else:
        entries = cat.tree_files(s.commit, folder) or []
    for e in entries:
        if e.mode in (SYMLINK_MODE, SUBMODULE_MODE) or not e.mode.startswith("100"):
            s.skipped.append(e.path)
        else:
            s.files.append(e)
    if not s.files:
        s.reason = f"no readable file in {folder or 'the repository root'} at {s.commit[:12]}"
