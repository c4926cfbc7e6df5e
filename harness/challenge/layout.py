"""Where a submission lives in the challenge repository, and what its folder holds."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

# What every record folder holds (challenge README, "Submission process").
REQUIRED = (
    ("submission.json", "submission.json"),
    ("README.md", "README.md"),
    ("train*.py", "training script (train_gpt.py or train*.py at the top of the folder)"),
)
LOG_PATTERNS = ("*.log", "*.txt")


def record_folder_of(path: str) -> str | None:
    """`records/<track_*>/<name>` for a path inside a record folder, else None."""
    parts = PurePosixPath(path).parts
    if len(parts) >= 4 and parts[0] == "records" and parts[1].startswith("track_"):
        return "/".join(parts[:3])
    return None


def read_text(path: Path, limit: int = 2_000_000) -> str:
    """A submission's text file, undecodable bytes replaced, at most `limit` characters; "" when
    it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")[:limit]
    except OSError:
        return ""


def run_instructions(base: Path, limit: int = 200_000) -> dict[str, str]:
    """The folder's README.md and shell scripts (top level): the commands that reproduce it."""
    return {path.name: read_text(path, limit) for path in sorted(base.iterdir())
            if path.is_file() and not path.is_symlink() and (path.name.lower() == "readme.md" or path.suffix == ".sh")}
