"""Result cache keyed by content: the bytes of every file in the folder, golf-audit's version,
the rule set and the options. A hit gives back the identical AuditResult."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from harness import __version__
from harness.findings import AuditResult
from harness.serialize import result_from_dict, result_to_dict

SKIP_DIRS = {"__pycache__", ".git", ".golf-audit-cache"}


def default_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "golf-audit" if xdg else Path.home() / ".cache" / "golf-audit"


def content_key(target: Path, options: dict) -> str:
    h = hashlib.sha256()
    h.update(f"golf-audit {__version__}\n".encode())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    # the rules' own source is part of the key, so editing a rule invalidates old results
    import rules as rules_pkg
    for src in sorted(Path(rules_pkg.__path__[0]).glob("*.py")):
        h.update(src.read_bytes())
    files = [target] if target.is_file() else sorted(
        p for p in target.rglob("*") if p.is_file() and not (SKIP_DIRS & set(p.relative_to(target).parts)))
    for p in files:
        h.update(str(p.relative_to(target) if p != target else p.name).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
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
