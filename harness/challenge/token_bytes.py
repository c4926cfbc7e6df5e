"""How the challenge counts the bytes behind val_bpb: a token stands for the UTF-8 bytes of its
piece without the leading "▁", plus one byte for that space unless the previous token is a
boundary (a control, unknown or unused piece: BOS and the like); a byte-fallback token stands
for one byte. The harness counts the toy validation stream this way, and the reference model
builds its scoring tables from the same function."""
from __future__ import annotations

import numpy as np


def byte_tables(sp, size: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base bytes, has a leading space, is a boundary) per token id of the SentencePiece model
    `sp`, with max(size, vocabulary size) entries: ids past the vocabulary are boundaries with
    no bytes."""
    n_vocab = int(sp.vocab_size())
    size = max(n_vocab, size)
    base = np.zeros(size, dtype=np.int64)
    space = np.zeros(size, dtype=bool)
    boundary = np.ones(size, dtype=bool)
    for i in range(n_vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1  # a byte-fallback token stands for one raw byte
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return base, space, boundary


def per_token_bytes(tokens: np.ndarray, sp) -> np.ndarray:
    """The bytes of each position of `tokens` by the tables; position 0 counts as following a
    boundary."""
    base, space, boundary = byte_tables(sp)
    arr = np.asarray(tokens, dtype=np.int64)
    prev_boundary = np.concatenate([[True], boundary[arr[:-1]]]) if arr.size else np.zeros(0, bool)
    return base[arr] + (space[arr] & ~prev_boundary)
