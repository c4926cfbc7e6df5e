"""TracerConfig: what a Tracer is told (the validation stream or where to find it, rank,
thresholds). A plain dataclass so bootstrap can build it from JSON options."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class TracerConfig:
    val_stream: Optional[np.ndarray] = None  # the full val token stream as the submission loads it
    val_files: list[str] = field(default_factory=list)  # challenge shards (read when val_stream is None)
    submission_dir: str = ""  # frames are reported relative to this folder
    rank: Optional[int] = None  # default: $RANK or 0
    world_size: Optional[int] = None  # default: $WORLD_SIZE or 1
    min_match: int = 64  # shortest integer tensor recognised as validation tokens
    capture_scores_only: bool = False  # only LossComputed / Scored (per-position NLL); no updates
    val_tokens_path: Optional[str] = None  # .npy of the stream (JSON-friendly alternative)
    val_glob: Optional[str] = None  # glob of shards, when neither of the above is given
    max_update_events: int = 200_000  # guard against runaway event counts
    notes: list[str] = field(default_factory=list)
    # torch.compile is shimmed to eager (toy runs): the dispatch mode may drop torch's per-op
    # dynamo guard (mode.EagerTracerMode). Off wherever a real torch.compile may run.
    eager_only: bool = False
