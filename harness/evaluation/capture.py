"""What one `golf-eval reproduce` run is asked to do, and what a process printed, with times.
Shared by the torchrun path (reproduce.py) and the toy path (toy.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.evaluation.verify_report import VerifyOptions


@dataclass
class ReproduceOptions:
    seeds: list[int] = field(default_factory=lambda: [42, 1337, 2024])
    nproc: int = 8
    data: Path | None = None
    tokenizer: Path | None = None
    toy: bool = False
    env: dict[str, str] = field(default_factory=dict)
    script: str | None = None
    timeout_s: float | None = None
    scratch: Path | None = None
    keep: bool = False
    live: bool = False
    verify: VerifyOptions = field(default_factory=VerifyOptions)
    allow_weak_sandbox: bool = False  # --toy without bubblewrap: run under `unshare` (writes not confined)
    torchrun: list[str] | None = None  # the launcher; default: torchrun on PATH, else python -m torch.distributed.run


@dataclass
class Capture:
    """One process's output, each line with the seconds since process start."""

    lines: list[tuple[float, str]]
    rc: int | None
    wall_s: float
    timed_out: bool = False
    error: str = ""
    line_times: bool = True  # False: lines came in one piece, only process start/end is known
