"""The flags a submission says it ran with: `KEY=VAL` prefixes of its command lines (README,
logs, shell scripts), the env blocks of its submission.json, and the switches its logs'
hyperparameter dumps show set otherwise than the script's default."""
from __future__ import annotations

import re
from pathlib import Path

from harness.challenge.layout import read_text

_FLAG = re.compile(r"(?:(?<=[\s;(])|^)([A-Z][A-Z0-9_]{1,40})=([^\s'\"`;)]+)")
# how scripts read a flag: os.environ.get("NAME", default) / os.getenv / environ["NAME"]
ENV_READ = re.compile(
    r"""(?:environ\.get|getenv|environ\.setdefault|environ\s*\[)\s*\(?\s*['"]([A-Z][A-Z0-9_]*)['"]"""
    r"""(?:\s*,\s*([^)\]\n]*))?""")
_IGNORED = {"CUDA_VISIBLE_DEVICES", "NCCL_DEBUG", "OMP_NUM_THREADS", "PYTHONPATH", "PATH", "RUN_ID", "SEED",
            "NCCL_IB_DISABLE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "PYTORCH_CUDA_ALLOC_CONF"}


def submission_flags(folder: str | Path) -> dict[str, str]:
    """Env flags the submission says it ran with: `KEY=VAL` prefixes of command lines
    (`TTT_ENABLED=1 torchrun ...`) in its README, logs and shell scripts."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    flags: dict[str, str] = {}
    texts: dict[Path, str] = {}
    for pattern in ("*.md", "*.log", "*.txt", "*.sh"):
        texts.update((p, read_text(p)) for p in sorted(folder.glob(pattern)))
    for text in texts.values():
        for line in text.replace("\\\n", " ").splitlines():
            m = re.search(r"\b(torchrun|python3?|uv run|bash)\b", line)
            if not m:
                continue
            for key, value in _FLAG.findall(line[:m.start()]):
                if key not in _IGNORED:
                    flags.setdefault(key, value)
    for key, value in _json_flags(folder / "submission.json").items():
        flags.setdefault(key, value)
    logs = [text for p, text in texts.items() if p.suffix in (".log", ".txt")]
    for key, value in dumped_switches(folder, logs).items():
        flags.setdefault(key, value)
    return flags


def env_defaults_raw(source: str) -> dict[str, str]:
    """Name -> the default as written, unquoted ('' for an empty-string default)."""
    out: dict[str, str] = {}
    for m in ENV_READ.finditer(source):
        text = (m.group(2) or "").strip()
        q = re.match(r"""^(['"])(.*?)\1""", text)
        out.setdefault(m.group(1), q.group(2) if q else text)
    return out


_DUMP_HEAD = re.compile(r"^\s*hyperparameters\s*:?\s*$", re.IGNORECASE)
_DUMP_SWITCH = re.compile(r"^\s+([a-z][a-z0-9_]{1,40})\s*[:=]\s*(True|False)\s*$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def dumped_switches(folder: Path, logs: list[str]) -> dict[str, str]:
    """On/off switches a log's `Hyperparameters:` dump shows set otherwise than the script's
    default: the run was launched by a wrapper the folder does not ship (PR #2140's
    `caseops_enabled: True` is in no command line, and without it the script's eval reads a
    byte sidecar it never loaded). Only `name: True/False` lines whose NAME the folder's Python
    reads from the environment, only where every dump agrees; "1"/"0", as scripts parse them."""
    seen: dict[str, set[str]] = {}
    for text in logs:
        inside = False
        for line in text.splitlines():
            if _DUMP_HEAD.match(line):
                inside = True
                continue
            m = _DUMP_SWITCH.match(line) if inside else None
            if m:
                seen.setdefault(m.group(1).upper(), set()).add("1" if m.group(2) == "True" else "0")
            elif inside and not line.startswith((" ", "\t")):
                inside = False
    if not seen:
        return {}
    defaults = env_defaults_raw("\n".join(read_text(p) for p in sorted(folder.glob("*.py"))))
    out: dict[str, str] = {}
    for name, values in seen.items():
        if len(values) != 1 or name in _IGNORED or name not in defaults:
            continue
        value = values.pop()
        default = defaults[name].strip().lower()
        if (default in _TRUE and value == "1") or (default in _FALSE and value == "0"):
            continue  # the script's own default: nothing to set
        out[name] = value
    return out


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
