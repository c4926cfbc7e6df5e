"""Token shards in the challenge's format.

A shard is 256 little-endian int32 header words (magic 20240520, version 1, token count, zeros)
followed by the tokens as little-endian uint16.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
BOS_ID = 1


def write_shard(path: str | Path, tokens) -> None:
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError("shard tokens must fit in uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def read_shard(path: str | Path) -> np.ndarray:
    path = Path(path)
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header.size != HEADER_INTS or int(header[0]) != SHARD_MAGIC or int(header[1]) != SHARD_VERSION:
        raise ValueError(f"not a challenge shard (bad header): {path}")
    n = int(header[2])
    expected = HEADER_INTS * 4 + 2 * n
    if path.stat().st_size != expected:
        raise ValueError(f"shard size mismatch for {path}: expected {expected} bytes")
    return np.fromfile(path, dtype="<u2", count=n, offset=HEADER_INTS * 4)


def read_tokens(path: str | Path) -> np.ndarray:
    """A challenge shard's tokens as int64; a file without the shard header as raw uint16 (what a
    submission may have written itself)."""
    try:
        return read_shard(path).astype(np.int64)
    except ValueError:
        return np.fromfile(path, dtype="<u2").astype(np.int64)
