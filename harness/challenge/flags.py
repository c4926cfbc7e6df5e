"""The flags a submission says it ran with: `KEY=VAL` prefixes of its command lines (README,
logs, shell scripts) and the env blocks of its submission.json."""
from __future__ import annotations

import re
from pathlib import Path

_FLAG = re.compile(r"(?:(?<=[\s;(])|^)([A-Z][A-Z0-9_]{1,40})=([^\s'\"`;)]+)")
_IGNORED = {"CUDA_VISIBLE_DEVICES", "NCCL_DEBUG", "OMP_NUM_THREADS", "PYTHONPATH", "PATH", "RUN_ID", "SEED",
            "NCCL_IB_DISABLE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "PYTORCH_CUDA_ALLOC_CONF"}


def submission_flags(folder: str | Path) -> dict[str, str]:
    """Env flags the submission says it ran with: `KEY=VAL` prefixes of command lines
    (`TTT_ENABLED=1 torchrun ...`) in its README, logs and shell scripts."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    flags: dict[str, str] = {}
    files = []
    for pattern in ("*.md", "*.log", "*.txt", "*.sh"):
        files += sorted(folder.glob(pattern))
    for p in files:
        try:
            text = p.read_text(encoding="utf-8", errors="replace")[:2_000_000]
        except OSError:
            continue
        for line in text.replace("\\\n", " ").splitlines():
            m = re.search(r"\b(torchrun|python3?|uv run|bash)\b", line)
            if not m:
                continue
            for key, value in _FLAG.findall(line[:m.start()]):
                if key not in _IGNORED:
                    flags.setdefault(key, value)
    for key, value in _json_flags(folder / "submission.json").items():
        flags.setdefault(key, value)
    return flags


def _json_flags(path: Path) -> dict[str, str]:
    """`"env": {"TTT_ENABLED": "1"}` (or `env_vars`, `environment`) and command-line strings
    (`"command": "TTT_ENABLED=1 torchrun ..."`) in submission.json."""
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8", errors="replace")[:1_000_000])
    except (OSError, ValueError):
        return {}
    out: dict[str, str] = {}
    if not isinstance(doc, dict):
        return out
    for key in ("env", "env_vars", "environment", "env_flags"):
        value = doc.get(key)
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and re.fullmatch(r"[A-Z][A-Z0-9_]{1,40}", k) and k not in _IGNORED:
                    out[k] = str(v)
    for key in ("command", "cmd", "run_command", "launch"):
        value = doc.get(key)
        if isinstance(value, str):
            m = re.search(r"\b(torchrun|python3?|uv run|bash)\b", value)
            for k, v in _FLAG.findall(value[:m.start()] if m else value):
                if k not in _IGNORED:
                    out.setdefault(k, v)
    return out
