"""Scoring the validation stream, and bits per byte computed the challenge's way.

Positions: target position p (1 <= p < N) is token p of the stream, predicted from tokens
0..p-1. Every eval here scores each target position exactly once.

bpb = (sum of NLL in nats / ln 2) / bytes. Bytes come from the tokenizer's byte tables (the
challenge's way: a token's own UTF-8 bytes, plus one for its leading space unless the previous
token is a boundary such as BOS), and `decoded_bytes` counts the UTF-8 bytes of the decoded
text as a cross-check.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from harness.challenge.token_bytes import byte_tables

from .data import BOS_ID


# ---------------------------------------------------------------- bytes
@dataclass
class ByteLUTs:
    base_bytes: Tensor  # UTF-8 bytes of the piece without its leading "▁"
    has_leading_space: Tensor  # piece starts with "▁"
    is_boundary: Tensor  # control/unknown/unused tokens: no text, no space after them

    def to(self, device) -> "ByteLUTs":
        return ByteLUTs(self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device))


def build_byte_luts(sp, vocab_size: int) -> ByteLUTs:
    """The challenge's byte tables (harness/challenge/token_bytes.py) as tensors, at least
    `vocab_size` entries."""
    base, space, boundary = byte_tables(sp, vocab_size)
    return ByteLUTs(torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary))


def target_bytes(tokens: Tensor, positions: Tensor, luts: ByteLUTs) -> Tensor:
    """Bytes of each target position, from the tables (float64)."""
    tgt, prev = tokens[positions], tokens[positions - 1]
    b = luts.base_bytes[tgt] + (luts.has_leading_space[tgt] & ~luts.is_boundary[prev]).long()
    return b.to(torch.float64)


def decoded_bytes(sp, tokens) -> int:
    """UTF-8 bytes of the text the tokens decode to, one BOS-delimited document at a time."""
    total, doc = 0, []
    for t in list(np.asarray(tokens).tolist()) + [BOS_ID]:
        if t == BOS_ID:
            if doc:
                total += len(sp.decode(doc).encode("utf-8"))
            doc = []
        else:
            doc.append(t)
    return total


# ---------------------------------------------------------------- sums
# Each eval keeps `totals` = [sum of NLL (nats), targets, bytes] in float64 on the CPU and adds
# to it in place where it scores, like the challenge's loss_sum / token_count / byte_count.

def new_totals() -> Tensor:
    return torch.zeros(3, dtype=torch.float64)


def score_totals(nll: Tensor, positions: Tensor, tokens: Tensor, luts: ByteLUTs) -> Tensor:
    """[sum of NLL, count, bytes] of the scored targets at `positions`."""
    count = torch.tensor(float(positions.numel()), dtype=torch.float64)
    return torch.stack([nll.to(torch.float64).sum(), count, target_bytes(tokens, positions, luts).sum()])


def all_reduce_totals(totals: Tensor, device) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        t = totals.to(device)  # NCCL reduces only CUDA tensors
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()
    return totals


def loss_and_bpb(totals: Tensor) -> tuple[float, float]:
    loss, count, nbytes = totals.tolist()
    return loss / count, loss / math.log(2.0) / nbytes


# ---------------------------------------------------------------- windows
# A window is (start, end, score_from): input tokens[start:end], targets at positions
# start+1..end, of which positions >= score_from are scored.

def standard_windows(n_tokens: int, seq_len: int) -> list[tuple[int, int, int]]:
    """Consecutive non-overlapping windows; the last one is shorter (nothing is dropped)."""
    return [(s, min(s + seq_len, n_tokens - 1), s + 1) for s in range(0, n_tokens - 1, seq_len)]


def sliding_windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """The first window scores its seq_len targets; each later one scores the next `stride`
    targets with seq_len - stride tokens of context before them."""
    last = n_tokens - 1  # the last target position
    windows = [(0, min(seq_len, last), 1)]
    lo = windows[0][1] + 1
    while lo <= last:
        hi = min(lo + stride - 1, last)
        windows.append((max(0, hi - seq_len), hi, lo))
        lo = hi + 1
    return windows


def rank_slice(items: list, rank: int, world_size: int) -> list:
    return items[len(items) * rank // world_size: len(items) * (rank + 1) // world_size]


def autocast(device: torch.device):
    # bf16 autocast only on CUDA; on CPU the model runs in float32.
    if torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def score_windows(model, tokens: Tensor, windows, device, batch_seqs: int) -> tuple[Tensor, Tensor]:
    """Per-position NLL of the scored part of each window: (positions, nll), in window order.
    The caller decides the grad mode (inference_mode for scoring)."""
    positions, nlls = [], []
    i = 0
    while i < len(windows):
        length = windows[i][1] - windows[i][0]
        batch = [windows[i]]
        while i + len(batch) < len(windows) and len(batch) < batch_seqs and \
                windows[i + len(batch)][1] - windows[i + len(batch)][0] == length:
            batch.append(windows[i + len(batch)])
        x = torch.stack([tokens[s:e] for s, e, _ in batch]).to(device)
        y = torch.stack([tokens[s + 1:e + 1] for s, e, _ in batch]).to(device)
        with autocast(device):
            nll = model(x, y, reduction="none")
        for row, (s, e, score_from) in enumerate(batch):
            offset = score_from - (s + 1)
            nlls.append(nll[row, offset:].float())
            positions.append(torch.arange(score_from, e + 1))
        i += len(batch)
    if not nlls:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(positions), torch.cat(nlls).cpu()


def eval_windows(model, tokens: Tensor, windows, luts: ByteLUTs, device, batch_seqs: int,
                 rank: int = 0, world_size: int = 1, nll_transform=None) -> tuple[float, float]:
    """Score this rank's share of the windows under inference_mode; (val_loss, val_bpb) over all
    ranks. `nll_transform(positions, nll)` is the hook the improper-distribution variant uses."""
    model.eval()
    totals = new_totals()
    with torch.inference_mode():
        positions, nll = score_windows(model, tokens, rank_slice(windows, rank, world_size), device, batch_seqs)
    if nll_transform is not None:
        nll = nll_transform(positions, nll)
    totals += score_totals(nll, positions, tokens, luts)
    model.train()
    return loss_and_bpb(all_reduce_totals(totals, device))


def eval_standard(model, tokens, luts, device, seq_len, batch_seqs, rank=0, world_size=1):
    return eval_windows(model, tokens, standard_windows(tokens.numel(), seq_len), luts, device,
                        batch_seqs, rank, world_size)


def eval_sliding(model, tokens, luts, device, seq_len, stride, batch_seqs, rank=0, world_size=1,
                 nll_transform=None):
    return eval_windows(model, tokens, sliding_windows(tokens.numel(), seq_len, stride), luts, device,
                        batch_seqs, rank, world_size, nll_transform)
