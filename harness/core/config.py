"""`[tool.golf-audit]` configuration: read from the nearest pyproject.toml, overridden by the CLI."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

KNOWN_KEYS = {"select", "ignore", "fail-on", "env", "jobs", "format"}


class ConfigError(ValueError):
    """A bad configuration value: a usage error (exit 2)."""


@dataclass
class Config:
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    fail_on: str = "medium"
    env: dict[str, str] = field(default_factory=dict)
    jobs: int | None = None
    format: str = "text"
    source: str | None = None  # the pyproject.toml it came from


def find_pyproject(start: Path) -> Path | None:
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(start: Path | None = None) -> Config:
    path = find_pyproject((start or Path.cwd()).resolve())
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read [tool.golf-audit]: {exc}") from None
    section = data.get("tool", {}).get("golf-audit")
    if section is None:
        return Config()
    unknown = set(section) - KNOWN_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [tool.golf-audit]: {', '.join(sorted(unknown))}")
    cfg = Config(source=str(path))
    cfg.select = _str_list(section.get("select", []), "select", path)
    cfg.ignore = _str_list(section.get("ignore", []), "ignore", path)
    cfg.fail_on = str(section.get("fail-on", cfg.fail_on)).lower()
    if cfg.fail_on not in ("low", "medium", "high"):
        raise ConfigError(f"{path}: fail-on must be low, medium or high, not {cfg.fail_on!r}")
    env = section.get("env", {})
    if not isinstance(env, dict):
        raise ConfigError(f"{path}: env must be a table of KEY = \"value\"")
    cfg.env = {str(k): str(v) for k, v in env.items()}
    if "jobs" in section:
        if not isinstance(section["jobs"], int) or section["jobs"] < 1:
            raise ConfigError(f"{path}: jobs must be a positive integer")
        cfg.jobs = section["jobs"]
    cfg.format = str(section.get("format", cfg.format))
    return cfg


def _str_list(value, key: str, path: Path) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: {key} must be a list of rule names")
    return value
