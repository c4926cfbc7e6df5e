"""Coverage of a pass: which targets of the validation stream it scored, and what the missing
ones are (the tail a loader drops, document starts, the rest)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.dynamic.judge.passes import Pass
from harness.dynamic.judge.positions import n_positions
from harness.dynamic.judge.stream import bos_id, tokens_for
from harness.dynamic.trace.events import Trace


def seq_len_limit(trace: Trace) -> int:
    """The longest eval/train sequence length the run was configured with (env in meta), the
    most a baseline-style loader drops from the end of the stream. Default 2048."""
    env = trace.meta.get("env") or {}
    vals = []
    for key in ("EVAL_SEQ_LEN", "TRAIN_SEQ_LEN", "VAL_SEQ_LEN", "SEQ_LEN"):
        try:
            vals.append(int(env[key]))
        except (KeyError, TypeError, ValueError):
            pass
    return max(vals) if vals else 2048


@dataclass
class Coverage:
    pass_: Pass
    targets: int  # N - 1
    scored: int
    missing: np.ndarray  # unscored target positions
    tail: int  # length of the unscored run that ends at N-1 (0 if the last position is scored)
    tail_allowed: bool  # the tail is shorter than one sequence (the baseline's loader drops it)
    bos: np.ndarray  # missing positions whose token is a document start (BOS)
    other: np.ndarray  # the rest of the missing positions

    @property
    def percent(self) -> float:
        return 100.0 * self.scored / self.targets if self.targets else 100.0


def coverage(trace: Trace, p: Pass) -> Coverage:
    n = n_positions(trace)
    targets = np.arange(1, n, dtype=np.int64)
    missing = targets[p.times[1:n] == 0] if n > 1 else targets
    tail = 0
    if len(missing) and missing[-1] == n - 1:
        gaps = np.nonzero(np.diff(missing) != 1)[0]
        start = missing[gaps[-1] + 1] if len(gaps) else missing[0]
        tail = int(n - start)
    tail_allowed = 0 < tail < seq_len_limit(trace)
    rest = missing[: len(missing) - tail] if tail_allowed else missing
    toks = tokens_for(trace)
    b = bos_id(trace)
    if toks is not None and b is not None and len(toks) >= n and len(rest):
        is_bos = toks[rest] == b
        bos, other = rest[is_bos], rest[~is_bos]
    else:
        bos, other = rest[:0], rest
    return Coverage(pass_=p, targets=max(n - 1, 0), scored=int((p.times[1:n] > 0).sum()), missing=missing,
                    tail=tail, tail_allowed=tail_allowed, bos=bos, other=other)
