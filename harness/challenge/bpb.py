"""The bits-per-byte identity the challenge scores by: val_bpb = (val_loss / ln 2) · tokens / bytes."""
from __future__ import annotations

import math

LN2 = math.log(2.0)


def implied_bytes(n_tokens: int, val_loss: float, val_bpb: float) -> float:
    """bpb = (loss / ln 2) * tokens / bytes, so bytes = tokens * loss / (bpb * ln 2)."""
    return n_tokens * val_loss / (val_bpb * LN2)
