"""The training-stream loader and the validation split, over shards in the challenge's format
(harness/challenge/shards.py). Documents in the stream start with BOS (id 1).
"""
from __future__ import annotations

import glob

import numpy as np
import torch

from harness.challenge.shards import BOS_ID, read_shard, write_shard  # noqa: F401 - the format lives there

def shard_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no shard matches {pattern}")
    return files


def load_val_tokens(pattern: str) -> torch.Tensor:
    """The whole validation split, every token (no truncation to a multiple of seq_len)."""
    tokens = np.concatenate([read_shard(f) for f in shard_files(pattern)])
    if tokens.size < 2:
        raise ValueError(f"validation split too short: {tokens.size} tokens")
    return torch.from_numpy(tokens.astype(np.int64))


def find_documents(tokens: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) spans of BOS-delimited documents; end includes the next document's BOS, so
    the targets of all documents together are exactly the targets 1..N-1 of the stream."""
    starts = (tokens == BOS_ID).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts  # a stream that does not open with BOS: its head is one document
    docs = []
    for i, start in enumerate(starts):
        end = starts[i + 1] + 1 if i + 1 < len(starts) else tokens.numel()
        if end - start >= 2:
            docs.append((start, end))
    return docs


class TrainStream:
    """Reads the train shards in order and wraps around forever. Every call takes one
    contiguous span for all ranks and hands each rank its own slice, so the tokens a step sees
    do not depend on how many processes share it."""

    def __init__(self, pattern: str, rank: int = 0, world_size: int = 1):
        self.files = shard_files(pattern)
        self.rank, self.world_size = rank, world_size
        self.file_index = 0
        self.tokens = read_shard(self.files[0])
        self.pos = 0

    def _take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.pos >= self.tokens.size:
                self.file_index = (self.file_index + 1) % len(self.files)
                self.tokens = read_shard(self.files[self.file_index])
                self.pos = 0
            k = min(n, self.tokens.size - self.pos)
            parts.append(self.tokens[self.pos:self.pos + k])
            self.pos += k
            n -= k
        return np.concatenate(parts)

    def next_batch(self, local_tokens: int, seq_len: int, device: torch.device):
        span = local_tokens + 1
        chunk = self._take(span * self.world_size)
        local = torch.from_numpy(chunk[self.rank * span:(self.rank + 1) * span].astype(np.int64))
        x = local[:-1].reshape(-1, seq_len)
        y = local[1:].reshape(-1, seq_len)
        return x.to(device), y.to(device)
