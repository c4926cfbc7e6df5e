"""The two legal score-first test-time-training evals.

(a) `eval_ttt_sgd`, chunked full-model SGD (the PR #461/#549 recipe): the stream is cut into
    chunks of TTT_CHUNK_TOKENS target positions; for chunk k, its sliding windows are scored
    under inference_mode, then the model trains on chunk k's tokens (TTT_EPOCHS passes, SGD with
    momentum, cosine learning rate over chunks). The last chunk is never trained on: nothing is
    scored after it.
(b) `eval_ttt_lora`, per-document batched LoRA (the PR #77 recipe): documents (BOS-delimited)
    are batched, each with its own fresh LoRA adapters; each document is read in chunks of
    TTT_CHUNK_SIZE targets; each chunk is scored, then one Adam step is taken on that chunk's
    loss. Adapters are reset for every document, so nothing crosses documents. The targets that
    are a document's BOS are scored first, with the unadapted model (score_document_starts).

Every validation token is scored before any update it reaches, and that score is final.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .data import find_documents
from .eval import (all_reduce_totals, autocast, loss_and_bpb, new_totals, rank_slice, score_totals, score_windows,
                   sliding_windows)
from .model import DocumentLoRA


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


# ---------------------------------------------------------------- (a) chunked full-model SGD
def chunk_windows(n_tokens: int, seq_len: int, stride: int, chunk_tokens: int) -> list[list[tuple]]:
    """The sliding windows, grouped by the chunk of the first position each one scores."""
    n_chunks = math.ceil((n_tokens - 1) / chunk_tokens)
    chunks = [[] for _ in range(n_chunks)]
    for window in sliding_windows(n_tokens, seq_len, stride):
        chunks[(window[2] - 1) // chunk_tokens].append(window)
    return chunks


def ttt_parameters(model, freeze_blocks: int) -> list:
    params = []
    for name, p in model.named_parameters():
        frozen = any(name.startswith(f"blocks.{i}.") for i in range(freeze_blocks))
        p.requires_grad_(not frozen)
        if not frozen:
            params.append(p)
    return params


def score_chunk(model, tokens, windows, totals, luts, device, batch_seqs, rank, world_size):
    """Score this rank's share of the chunk's windows into `totals`; returns (positions, nll)."""
    model.eval()
    with torch.inference_mode():
        positions, nll = score_windows(model, tokens, rank_slice(windows, rank, world_size), device, batch_seqs)
    totals += score_totals(nll, positions, tokens, luts)
    return positions, nll


def train_chunk(model, optimizer, params, tokens, first_target: int, last_target: int, h, device,
                rank, world_size, epochs: int) -> None:
    """Train on target positions first_target..last_target (already scored) in sequences of
    train_seq_len. Each global batch of TTT_BATCH_SEQS sequences is split over the ranks and the
    gradients summed, so the update is the same for any number of ranks."""
    seq_len = h.train_seq_len
    starts = list(range(first_target - 1, last_target - seq_len + 1, seq_len))  # input start a: targets a+1..a+L
    if not starts:
        return
    model.train()
    for _ in range(epochs):
        for b in range(0, len(starts), h.ttt_batch_seqs):
            batch = starts[b:b + h.ttt_batch_seqs]
            mine = rank_slice(batch, rank, world_size)
            optimizer.zero_grad(set_to_none=True)
            if mine:
                x = torch.stack([tokens[a:a + seq_len] for a in mine]).to(device)
                y = torch.stack([tokens[a + 1:a + seq_len + 1] for a in mine]).to(device)
                with autocast(device):
                    loss = model(x, y, reduction="sum") / (len(batch) * seq_len)
                loss.backward()
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                if world_size > 1:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            if h.ttt_grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, h.ttt_grad_clip)
            optimizer.step()


def cosine_lr(base_lr: float, k: int, n_chunks: int) -> float:
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * k / max(n_chunks - 1, 1)))


def eval_ttt_sgd(model, tokens, luts, device, h, rank=0, world_size=1, log=print) -> tuple[float, float]:
    chunks = chunk_windows(tokens.numel(), h.train_seq_len, h.eval_stride, h.ttt_chunk_tokens)
    params = ttt_parameters(model, h.ttt_freeze_blocks)
    optimizer = torch.optim.SGD(params, lr=h.ttt_lr, momentum=h.ttt_momentum)
    totals = new_totals()
    n_chunks = len(chunks)
    log(f"ttt_sgd:start chunks:{n_chunks} chunk_tokens:{h.ttt_chunk_tokens} stride:{h.eval_stride} "
        f"lr:{h.ttt_lr} epochs:{h.ttt_epochs} freeze_blocks:{h.ttt_freeze_blocks}")
    for k, windows in enumerate(chunks):
        # 1. score chunk k with the weights trained on chunks 0..k-1 only
        score_chunk(model, tokens, windows, totals, luts, device, h.eval_batch_seqs, rank, world_size)
        if world_size > 1:
            dist.barrier()  # every rank has scored chunk k before any rank trains on it
        # 2. train on chunk k, now scored; never on the last chunk
        if k < n_chunks - 1 and h.ttt_epochs > 0:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(h.ttt_lr, k, n_chunks)
            first = k * h.ttt_chunk_tokens + 1
            last = min((k + 1) * h.ttt_chunk_tokens, tokens.numel() - 1)
            train_chunk(model, optimizer, params, tokens, first, last, h, device, rank, world_size, h.ttt_epochs)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return loss_and_bpb(all_reduce_totals(totals, device))


# ---------------------------------------------------------------- (b) per-document LoRA
def doc_chunk(doc_start: int, n_pred: int, ci: int, chunk_size: int, context: int):
    """For chunk ci of a document (predictions 0..n_pred-1, prediction j is target position
    doc_start+1+j): (input start, input end, first scored prediction, scored count)."""
    c0 = ci * chunk_size
    c1 = min(c0 + chunk_size, n_pred)
    w0 = max(0, c1 - context)
    return doc_start + w0, doc_start + c1, c0 - w0, c1 - c0


def lora_batch(tokens, docs, ci, h, device):
    """Inputs, targets and, per row, (scored offset, scored count, first target position) for
    chunk ci of each document in `docs` (count 0 when the document has no chunk ci)."""
    rows, spans = [], []
    for start, end in docs:
        n_pred = end - start - 1
        if ci * h.ttt_chunk_size >= n_pred:
            rows.append(None)
            spans.append((0, 0, 0))
            continue
        a, b, off, count = doc_chunk(start, n_pred, ci, h.ttt_chunk_size, h.ttt_eval_seq_len)
        rows.append((a, b))
        spans.append((off, count, a + 1 + off))
    width = max(b - a for a, b in (r for r in rows if r is not None))
    x = torch.zeros(len(docs), width, dtype=torch.long)
    y = torch.zeros(len(docs), width, dtype=torch.long)
    for i, r in enumerate(rows):
        if r is not None:  # right padding: causal attention keeps it out of the real positions
            a, b = r
            x[i, :b - a] = tokens[a:b]
            y[i, :b - a] = tokens[a + 1:b + 1]
    return x.to(device), y.to(device), spans


def lora_chunk_losses(nll, spans, docs, ci, h):
    """Per document, the mean NLL of its scored chunk, counted only for documents that have a
    later chunk (training on a document's last chunk helps nothing)."""
    terms = []
    for i, (off, count, _) in enumerate(spans):
        n_chunks = math.ceil((docs[i][1] - docs[i][0] - 1) / h.ttt_chunk_size)
        if count and ci < n_chunks - 1:
            terms.append(nll[i, off:off + count].mean())
    return torch.stack(terms).sum() if terms else None


def add_lora_scores(totals, nll, spans, tokens, luts) -> None:
    for i, (off, count, first) in enumerate(spans):
        if count:
            totals += score_totals(nll[i, off:off + count].detach().float().cpu(),
                                   torch.arange(first, first + count), tokens, luts)


def lora_documents(tokens) -> list[tuple[int, int]]:
    """(start, end) of each document without the next document's BOS: tokens[start:end] is the
    document, its targets are start+1..end-1."""
    docs = []
    for start, end in find_documents(tokens):
        if end < tokens.numel():
            end -= 1  # that BOS is scored by score_document_starts
        if end - start >= 2:
            docs.append((start, end))
    return docs


def score_document_starts(model, tokens, totals, luts, device, h, rank, world_size) -> None:
    """Score each target that is a document's BOS (predicted from the end of the previous
    document) with the unadapted model, before any adapter trains: that BOS is the first input
    of its own document's adapter, so it must be scored first."""
    starts = [start for start, _ in find_documents(tokens) if start > 0]
    windows = [(max(0, p - h.ttt_eval_seq_len), p, p) for p in starts]
    score_chunk(model, tokens, windows, totals, luts, device, h.eval_batch_seqs, rank, world_size)
    if world_size > 1:
        dist.barrier()  # every rank has scored them before any rank trains


def document_batches(tokens, h, rank, world_size):
    """This rank's batches of documents. Batches are formed over all documents (similar lengths
    together: fewer idle rows) and then shared out, so a document lands in the same batch for
    any number of ranks and the eval gives the same numbers.
    Returns (batch index, documents) pairs; the index seeds the batch's LoRA init."""
    docs = sorted(lora_documents(tokens), key=lambda d: (d[1] - d[0], d[0]))
    batches = [docs[i:i + h.ttt_batch_size] for i in range(0, len(docs), h.ttt_batch_size)]
    return rank_slice(list(enumerate(batches)), rank, world_size)


def document_lora(model, docs, index: int, h, device):
    """Fresh LoRA adapters for one batch of documents (seeded by the batch's index), their
    optimizer, and the number of chunks of the batch's longest document."""
    lora = DocumentLoRA(model, len(docs), h.ttt_lora_rank, seed=h.seed + index).to(device)  # fresh per document
    optimizer = torch.optim.Adam(lora.parameters(), lr=h.ttt_lora_lr, betas=(h.beta1, h.beta2), eps=1e-10)
    n_chunks = max(math.ceil((end - start - 1) / h.ttt_chunk_size) for start, end in docs)
    return lora, optimizer, n_chunks


def eval_ttt_lora(model, tokens, luts, device, h, rank=0, world_size=1, log=print) -> tuple[float, float]:
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    totals = new_totals()
    score_document_starts(model, tokens, totals, luts, device, h, rank, world_size)
    batches = document_batches(tokens, h, rank, world_size)
    log(f"ttt_lora:start docs_batches:{len(batches)} chunk_size:{h.ttt_chunk_size} "
        f"context:{h.ttt_eval_seq_len} rank:{h.ttt_lora_rank} lr:{h.ttt_lora_lr}")
    for index, docs in batches:
        lora, optimizer, n_chunks = document_lora(model, docs, index, h, device)
        for ci in range(n_chunks):
            x, y, spans = lora_batch(tokens, docs, ci, h, device)
            with autocast(device):
                nll = model(x, y, lora=lora, reduction="none")
            # 1. score chunk ci (the adapters have seen chunks 0..ci-1 of this document only)
            add_lora_scores(totals, nll, spans, tokens, luts)
            # 2. one step on chunk ci, now scored
            loss = lora_chunk_losses(nll, spans, docs, ci, h)
            if loss is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    for p in model.parameters():
        p.requires_grad_(True)
    return loss_and_bpb(all_reduce_totals(totals, device))
