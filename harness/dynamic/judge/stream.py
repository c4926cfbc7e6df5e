"""The validation stream as the submission loaded it: its tokens, its tokenizer, the true UTF-8
bytes behind each target, and the BOS token that starts a document."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.challenge import token_bytes
from harness.challenge.shards import read_shard
from harness.dynamic.judge.positions import n_positions, trace_cache
from harness.dynamic.trace.events import RunEnd, RunStart, Trace


def val_stream(trace: Trace) -> np.ndarray | None:
    """The validation tokens as the submission loaded them, when the trace says where they are:
    meta["val_tokens_path"] (.npy), or RunStart.val_sources (challenge shard format)."""
    cache = trace_cache(trace)
    if "val_stream" in cache:
        return cache["val_stream"]
    tokens = None
    path = trace.meta.get("val_tokens_path")
    try:
        if path and Path(path).exists():
            tokens = np.load(path).astype(np.int64)
        else:
            starts = trace.of(RunStart)
            sources = starts[0].val_sources if starts else []
            if sources and all(Path(s).exists() for s in sources):
                tokens = np.concatenate([read_shard(s) for s in sources]).astype(np.int64)
    except (OSError, ValueError):
        tokens = None
    cache["val_stream"] = tokens
    return tokens


def byte_tables(tokenizer_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-token (base bytes, has leading space, is boundary) for a SentencePiece model: the
    UTF-8 bytes each token adds to the decoded text (harness/challenge/token_bytes.py)."""
    try:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    except Exception:  # noqa: BLE001 - missing or unreadable tokenizer: bytes unknown
        return None
    return token_bytes.byte_tables(sp)


def tokenizer_path(trace: Trace) -> str | None:
    """The SentencePiece model the run used: meta["tokenizer_path"], else RunEnd's, if on disk."""
    for cand in [trace.meta.get("tokenizer_path")] + [e.tokenizer_path for e in trace.of(RunEnd)]:
        if cand and Path(cand).exists():
            return str(cand)
    return None


def position_bytes(trace: Trace) -> np.ndarray | None:
    """True UTF-8 bytes contributed by the target at each position (index 0 is 0), or None."""
    cache = trace_cache(trace)
    if "position_bytes" in cache:
        return cache["position_bytes"]
    out = None
    path = trace.meta.get("position_bytes_path")
    if path and Path(path).exists():
        out = np.load(path).astype(np.int64)
    else:
        tokens = val_stream(trace)
        tok_path = tokenizer_path(trace)
        tables = byte_tables(tok_path) if (tokens is not None and tok_path) else None
        if tables is not None and len(tokens):
            out = target_bytes(tables, tokens)
    cache["position_bytes"] = out
    return out


def target_bytes(tables: tuple[np.ndarray, np.ndarray, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """UTF-8 bytes each target of `tokens` adds to the decoded text (index 0 is 0), from
    `byte_tables`: its piece's bytes, plus its leading space unless the previous token is a boundary."""
    base, space, boundary = tables
    t = np.clip(np.asarray(tokens, dtype=np.int64), 0, len(base) - 1)
    out = np.zeros(len(t), dtype=np.int64)
    out[1:] = base[t[1:]] + (space[t[1:]] & ~boundary[t[:-1]])
    return out


def bytes_of(trace: Trace, positions: np.ndarray) -> int | None:
    """True UTF-8 bytes of the targets at `positions`: from per-position bytes when available,
    else RunEnd.val_bytes_utf8 when `positions` is exactly 1..N-1."""
    per = position_bytes(trace)
    if per is not None and (not len(positions) or positions.max() < len(per)):
        return int(per[positions].sum())
    n = n_positions(trace)
    if len(positions) == n - 1 and n > 1 and positions[0] == 1 and positions[-1] == n - 1:
        ends = [e.val_bytes_utf8 for e in trace.of(RunEnd) if e.val_bytes_utf8]
        if ends:
            return int(ends[0])
    return None


def bos_id(trace: Trace) -> int | None:
    if trace.meta.get("bos_id") is not None:
        return int(trace.meta["bos_id"])
    tok = tokenizer_path(trace)
    if not tok:
        return None
    try:
        import sentencepiece as spm

        b = int(spm.SentencePieceProcessor(model_file=str(tok)).bos_id())
        return b if b >= 0 else None
    except Exception:  # noqa: BLE001 - tokenizer unreadable: BOS unknown
        return None


def tokens_for(trace: Trace) -> np.ndarray | None:
    """The validation tokens: meta["val_tokens"] (small synthetic traces) or `val_stream`."""
    if trace.meta.get("val_tokens") is not None:
        return np.asarray(trace.meta["val_tokens"], dtype=np.int64)
    return val_stream(trace)
