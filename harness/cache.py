"""Result cache keyed by content: the bytes of every file in the folder, golf-audit's version,
the rule set and the options. A hit gives back the identical AuditResult."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from harness import __version__
from harness.core.findings import AuditResult
from harness.core.serialize import result_from_dict, result_to_dict

SKIP_DIRS = {"__pycache__", ".git", ".golf-audit-cache"}


def default_dir(cwd: Path | None = None) -> Path:
    """`$XDG_CACHE_HOME/golf-audit` when XDG_CACHE_HOME is set, else `.golf-audit-cache` in the
    working directory (git-ignored in this repository)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "golf-audit" if xdg else (cwd or Path.cwd()) / ".golf-audit-cache"


def _code_digest() -> bytes:
    """The source of golf-audit itself (harness/ and rules/): editing the engine or a rule
    invalidates old results even when the version number stays the same."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        import harness
        import rules as rules_pkg

        h = hashlib.sha256()
        for pkg in (Path(harness.__file__).parent, Path(rules_pkg.__path__[0])):
            for src in sorted(pkg.rglob("*.py")):
                if "__pycache__" not in src.parts:
                    h.update(src.relative_to(pkg.parent).as_posix().encode() + b"\0" + src.read_bytes())
        _CODE_DIGEST = h.digest()
    return _CODE_DIGEST


_CODE_DIGEST: bytes | None = None


def content_key(target: Path, options: dict) -> str:
    """sha256 over golf-audit's version and code, the options (rule set, env, layers, ...) and
    every file in the folder (path and bytes). Every file, not only .py/.md/.json/.log/.txt:
    the dynamic layer runs the submission, which may read any of them."""
    files = [target] if target.is_file() else sorted(
        p for p in target.rglob("*") if p.is_file() and not (SKIP_DIRS & set(p.relative_to(target).parts)))
    return digest_key(((str(p.relative_to(target) if p != target else p.name),
                        hashlib.sha256(p.read_bytes()).digest()) for p in files), options)


def digest_key(files, options: dict) -> str:
    """The key of `content_key` from (relative path, digest of the file's bytes) pairs in path
    order: a caller that already has a content hash of each file (a git blob id, for
    `golf-audit triage`) keys a folder without reading it."""
    h = hashlib.sha256()
    h.update(f"golf-audit {__version__}\n".encode())
    h.update(_code_digest())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    for rel, digest in files:
        h.update(str(rel).encode() + b"\0")
        h.update(digest)
    return h.hexdigest()


def load(cache_dir: Path, key: str) -> AuditResult | None:
    path = cache_dir / f"{key}.json"
    try:
        return result_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(cache_dir: Path, key: str, result: AuditResult) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(result_to_dict(result)), encoding="utf-8")
        tmp.replace(cache_dir / f"{key}.json")
    except OSError:
        pass  # a cache that cannot be written only costs time
