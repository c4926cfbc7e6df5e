"""Broken variants: each breaks one rule on purpose and is switched on by one flag
(BROKEN=<name> / --broken NAME). They exist so the auditor has known-bad runs to catch; the
names are the rules they break. None of them is used unless asked for.

  train-before-score               adapt-then-score: train on chunk k, then score it
                                   (ttt-sgd and ttt-lora evals)
  train-before-score-multi-epoch   several epochs over all chunks, only the last epoch
                                   scores (PR #713 shape; ttt-sgd)
  rescored-tokens                  every epoch scores every chunk; each position keeps its
                                   minimum NLL over epochs (ttt-sgd)
  val-data-in-training             full-model training over the whole validation stream after
                                   training, before quantization ("pre-quant TTT")
  val-data-in-training-calibration validation tokens as quantization calibration data
  hash-key-reads-target            a BigramHash embedding keyed on (t[i], t[i+1]): the target
                                   (built by model.py when this flag is set)
  improper-distribution            an eval-time bigram cache updated with the token before the
                                   token is scored, mixed into the prediction (sliding eval)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .eval import all_reduce_totals, autocast, loss_and_bpb, new_totals, score_totals
from .ttt import (add_lora_scores, chunk_windows, cosine_lr, document_batches, document_lora, lora_batch, score_chunk,
                  score_document_starts, train_chunk, ttt_parameters)


# ---------------------------------------------------------------- TTT orderings (SGD)
def _sgd_setup(model, tokens, h, log, label):
    chunks = chunk_windows(tokens.numel(), h.train_seq_len, h.eval_stride, h.ttt_chunk_tokens)
    params = ttt_parameters(model, h.ttt_freeze_blocks)
    optimizer = torch.optim.SGD(params, lr=h.ttt_lr, momentum=h.ttt_momentum)
    log(f"ttt_sgd:start BROKEN={label} chunks:{len(chunks)} epochs:{h.ttt_epochs}")
    return chunks, params, optimizer


def _train_chunk_k(model, optimizer, params, tokens, k, n_chunks, h, device, rank, world_size, epochs):
    for group in optimizer.param_groups:
        group["lr"] = cosine_lr(h.ttt_lr, k, n_chunks)
    first, last = k * h.ttt_chunk_tokens + 1, min((k + 1) * h.ttt_chunk_tokens, tokens.numel() - 1)
    train_chunk(model, optimizer, params, tokens, first, last, h, device, rank, world_size, epochs)


def _finish(model, totals, device):
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return loss_and_bpb(all_reduce_totals(totals, device))


def ttt_sgd_train_before_score(model, tokens, luts, device, h, rank=0, world_size=1, log=print):
    chunks, params, optimizer = _sgd_setup(model, tokens, h, log, "train-before-score")
    totals = new_totals()
    for k, windows in enumerate(chunks):
        _train_chunk_k(model, optimizer, params, tokens, k, len(chunks), h, device, rank, world_size, h.ttt_epochs)
        # BROKEN: chunk k is scored after the model trained on it
        score_chunk(model, tokens, windows, totals, luts, device, h.eval_batch_seqs, rank, world_size)
    return _finish(model, totals, device)


def ttt_sgd_multi_epoch(model, tokens, luts, device, h, rank=0, world_size=1, log=print):
    """Epochs over all chunks; only the last epoch scores (score chunk k, train on it). Every
    chunk was trained on in the earlier epochs before the last epoch scores it."""
    chunks, params, optimizer = _sgd_setup(model, tokens, h, log, "train-before-score-multi-epoch")
    epochs = max(h.ttt_epochs, 2)
    totals = new_totals()
    for epoch in range(epochs):
        for k, windows in enumerate(chunks):
            if epoch == epochs - 1:  # BROKEN: scored on the last epoch, after earlier epochs trained on it
                score_chunk(model, tokens, windows, totals, luts, device, h.eval_batch_seqs, rank, world_size)
            _train_chunk_k(model, optimizer, params, tokens, k, len(chunks), h, device, rank, world_size, 1)
        log(f"ttt_sgd:epoch {epoch + 1}/{epochs} done")
    return _finish(model, totals, device)


def ttt_sgd_rescored(model, tokens, luts, device, h, rank=0, world_size=1, log=print):
    """Every epoch scores every chunk (score, then train); each position keeps its lowest NLL."""
    chunks, params, optimizer = _sgd_setup(model, tokens, h, log, "rescored-tokens")
    epochs = max(h.ttt_epochs, 2)
    best: dict[int, float] = {}  # position -> lowest NLL over epochs
    for epoch in range(epochs):
        epoch_totals = new_totals()
        for k, windows in enumerate(chunks):
            positions, nll = score_chunk(model, tokens, windows, epoch_totals, luts, device,
                                         h.eval_batch_seqs, rank, world_size)
            for p, v in zip(positions.tolist(), nll.tolist()):
                best[p] = min(v, best.get(p, math.inf))  # BROKEN: min-NLL selection over epochs
            _train_chunk_k(model, optimizer, params, tokens, k, len(chunks), h, device, rank, world_size, 1)
        log(f"ttt_sgd:epoch {epoch + 1}/{epochs} val_loss:{epoch_totals[0].item() / max(epoch_totals[1].item(), 1):.6f}")
    positions = torch.tensor(sorted(best), dtype=torch.long)
    totals = new_totals()
    totals += score_totals(torch.tensor([best[p] for p in positions.tolist()], dtype=torch.float64),
                           positions, tokens, luts)
    return _finish(model, totals, device)


# ---------------------------------------------------------------- TTT ordering (LoRA)
def ttt_lora_train_before_score(model, tokens, luts, device, h, rank=0, world_size=1, log=print):
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    totals = new_totals()
    log("ttt_lora:start BROKEN=train-before-score")
    score_document_starts(model, tokens, totals, luts, device, h, rank, world_size)
    for index, docs in document_batches(tokens, h, rank, world_size):
        lora, optimizer, n_chunks = document_lora(model, docs, index, h, device)
        for ci in range(n_chunks):
            x, y, spans = lora_batch(tokens, docs, ci, h, device)
            with autocast(device):
                nll = model(x, y, lora=lora, reduction="none")
            loss = sum(nll[i, off:off + n].mean() for i, (off, n, _) in enumerate(spans) if n)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()  # BROKEN: a step on chunk ci before chunk ci is scored
            with torch.no_grad(), autocast(device):
                nll = model(x, y, lora=lora, reduction="none")
            add_lora_scores(totals, nll, spans, tokens, luts)
    for p in model.parameters():
        p.requires_grad_(True)
    return loss_and_bpb(all_reduce_totals(totals, device))


# ---------------------------------------------------------------- val data in training
def train_on_val(model, tokens, h, device, rank=0, world_size=1, log=print) -> None:
    """BROKEN (val-data-in-training): full-model training over the whole validation stream
    before any final eval -- the "pre-quant TTT" of PR #713."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=h.val_train_lr)
    last = tokens.numel() - 1
    for epoch in range(h.val_train_epochs):
        train_chunk(model, optimizer, params, tokens, 1, last, h, device, rank, world_size, 1)
        log(f"pre_quant_ttt:epoch {epoch + 1}/{h.val_train_epochs} done")


def val_calibration_batches(val_tokens, h, device) -> list:
    """BROKEN (val-data-in-training-calibration): quantization calibration from val tokens."""
    L = h.train_seq_len
    n = min(h.calibration_seqs, (val_tokens.numel() - 1) // L)
    x = torch.stack([val_tokens[i * L:(i + 1) * L] for i in range(n)]).to(device)
    y = torch.stack([val_tokens[i * L + 1:(i + 1) * L + 1] for i in range(n)]).to(device)
    return [(x, y)]


# ---------------------------------------------------------------- improper n-gram cache
def ngram_cache_transform(tokens, vocab_size: int, mix: float):
    """BROKEN (improper-distribution): a bigram cache over the stream, mixed into the model's
    probability of the realised token -- but each position's count is added *before* that
    position is scored, so the cache always "hits" and the implied distribution over the
    vocabulary sums to more than one. The counts live in numpy; the blend is done in torch, as
    contest n-gram caches do it for speed."""
    def transform(positions, nll):
        counts = np.zeros((vocab_size, vocab_size), dtype=np.int64)
        row_totals = np.zeros(vocab_size, dtype=np.int64)
        tok = tokens.numpy()
        p_cache = np.empty(len(positions), dtype=np.float64)
        for i, p in enumerate(positions.tolist()):
            prev, target = tok[p - 1], tok[p]
            counts[prev, target] += 1  # BROKEN: updated with the target before it is scored
            row_totals[prev] += 1
            p_cache[i] = counts[prev, target] / row_totals[prev]
        p_model = torch.exp(-nll.double())
        return -torch.log((1 - mix) * p_model + mix * torch.from_numpy(p_cache))
    return transform
