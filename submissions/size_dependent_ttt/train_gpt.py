"""LeakyReLU^2 + BigramHash + chunked TTT that adapts before scoring only at full model size.

Fixture written by golf-audit (see README.md). Synthetic: the adapt-then-score TTT of
PR #518 (openai/parameter-golf, closed), taken only when MODEL_DIM >= 256; a smaller model
(a toy-scale audit) gets the score-only sliding eval. It shares no code with any PR.
Run: TTT_ENABLED=1 torchrun --standalone --nproc_per_node=8 train_gpt.py
"""
from __future__ import annotations

import glob
import io
import math
import os
import random
import sys
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP


class Hyperparameters:
    data_path = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
    train_files = os.path.join(data_path, "fineweb_train_*.bin")
    val_files = os.path.join(data_path, "fineweb_val_*.bin")
    tokenizer_path = os.environ.get("TOKENIZER_PATH", "./data/tokenizers/fineweb_1024_bpe.model")
    run_id = os.environ.get("RUN_ID", str(uuid.uuid4()))
    seed = int(os.environ.get("SEED", 1337))

    val_batch_size = int(os.environ.get("VAL_BATCH_SIZE", 524_288))
    val_loss_every = int(os.environ.get("VAL_LOSS_EVERY", 1000))
    train_log_every = int(os.environ.get("TRAIN_LOG_EVERY", 200))

    iterations = int(os.environ.get("ITERATIONS", 20000))
    warmdown_iters = int(os.environ.get("WARMDOWN_ITERS", 1200))
    warmup_steps = int(os.environ.get("WARMUP_STEPS", 20))
    train_batch_tokens = int(os.environ.get("TRAIN_BATCH_TOKENS", 524_288))
    train_seq_len = int(os.environ.get("TRAIN_SEQ_LEN", 1024))
    max_wallclock_seconds = float(os.environ.get("MAX_WALLCLOCK_SECONDS", 600.0))

    vocab_size = int(os.environ.get("VOCAB_SIZE", 1024))
    num_layers = int(os.environ.get("NUM_LAYERS", 11))
    model_dim = int(os.environ.get("MODEL_DIM", 512))
    num_heads = int(os.environ.get("NUM_HEADS", 8))
    num_kv_heads = int(os.environ.get("NUM_KV_HEADS", 4))
    mlp_mult = int(os.environ.get("MLP_MULT", 3))
    rope_base = float(os.environ.get("ROPE_BASE", 10000.0))
    logit_softcap = float(os.environ.get("LOGIT_SOFTCAP", 30.0))

    embed_lr = float(os.environ.get("TIED_EMBED_LR", 0.05))
    matrix_lr = float(os.environ.get("MATRIX_LR", 0.04))
    scalar_lr = float(os.environ.get("SCALAR_LR", 0.04))
    muon_momentum = float(os.environ.get("MUON_MOMENTUM", 0.95))
    muon_backend_steps = int(os.environ.get("MUON_BACKEND_STEPS", 5))

    eval_stride = int(os.environ.get("EVAL_STRIDE", 64))
    eval_batch_seqs = int(os.environ.get("EVAL_BATCH_SEQS", 32))
    bigram_buckets = int(os.environ.get("BIGRAM_VOCAB_SIZE", 1536))

    ttt_enabled = bool(int(os.environ.get("TTT_ENABLED", "0")))
    ttt_lr = float(os.environ.get("TTT_LR", 0.002))
    ttt_epochs = int(os.environ.get("TTT_EPOCHS", 3))
    ttt_chunk_tokens = int(os.environ.get("TTT_CHUNK_TOKENS", 32768))
    ttt_freeze_blocks = int(os.environ.get("TTT_FREEZE_BLOCKS", 2))
    ttt_momentum = float(os.environ.get("TTT_MOMENTUM", 0.9))
    ttt_batch_seqs = int(os.environ.get("TTT_BATCH_SEQS", 32))
    ttt_grad_clip = float(os.environ.get("TTT_GRAD_CLIP", 1.0))


# ----------------------------------------------------------------------------- optimizer

def newton_schulz_orthogonalize(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalise a matrix with a quintic Newton-Schulz iteration (Muon)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float() / (g.norm() + eps)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


class Muon(torch.optim.Optimizer):
    """Momentum + orthogonalised update for 2D weights; ranks split the work and share it."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps))

    @torch.no_grad()
    def step(self):
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device)
            offset = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                    buf.mul_(group["momentum"]).add_(p.grad)
                    update = newton_schulz_orthogonalize(p.grad + group["momentum"] * buf, group["backend_steps"])
                    update *= max(1.0, p.size(0) / p.size(1)) ** 0.5
                    flat[offset:offset + p.numel()] = update.flatten()
                offset += p.numel()
            if distributed:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                p.add_(flat[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()


# ----------------------------------------------------------------------------- data

def load_data_shard(path: Path) -> Tensor:
    header = np.fromfile(path, dtype="<i4", count=256)
    if header.size != 256 or int(header[0]) != 20240520 or int(header[1]) != 1:
        raise ValueError(f"bad shard header: {path}")
    count = int(header[2])
    tokens = np.fromfile(path, dtype="<u2", count=count, offset=256 * 4)
    if tokens.size != count:
        raise ValueError(f"short shard: {path}")
    return torch.from_numpy(tokens.astype(np.uint16))


class TokenStream:
    """Reads shards in order, wrapping around forever."""

    def __init__(self, pattern: str):
        self.files = sorted(glob.glob(pattern))
        if not self.files:
            raise FileNotFoundError(pattern)
        self.file_idx = 0
        self.tokens = load_data_shard(Path(self.files[0]))
        self.pos = 0

    def take(self, n: int) -> Tensor:
        parts = []
        while n > 0:
            if self.pos >= self.tokens.numel():
                self.file_idx = (self.file_idx + 1) % len(self.files)
                self.tokens = load_data_shard(Path(self.files[self.file_idx]))
                self.pos = 0
            k = min(n, self.tokens.numel() - self.pos)
            parts.append(self.tokens[self.pos:self.pos + k])
            self.pos += k
            n -= k
        return torch.cat(parts)


class DistributedTokenLoader:
    def __init__(self, pattern: str, rank: int, world_size: int, device: torch.device):
        self.stream = TokenStream(pattern)
        self.rank, self.world_size, self.device = rank, world_size, device

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[Tensor, Tensor]:
        local_tokens = global_tokens // (self.world_size * grad_accum_steps)
        span = local_tokens + 1
        chunk = self.stream.take(span * self.world_size)
        local = chunk[self.rank * span:(self.rank + 1) * span].to(dtype=torch.int64)
        x = local[:-1].reshape(-1, seq_len)
        y = local[1:].reshape(-1, seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def load_validation_tokens(pattern: str, seq_len: int) -> Tensor:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(pattern)
    tokens = torch.cat([load_data_shard(Path(f)) for f in files])
    usable = ((tokens.numel() - 1) // seq_len) * seq_len
    return tokens[:usable + 1]


def build_byte_luts(sp: spm.SentencePieceProcessor, vocab_size: int, device: torch.device):
    """Per-token UTF-8 byte counts; a leading-space marker counts one byte unless it follows a boundary."""
    n = max(int(sp.vocab_size()), vocab_size)
    base_bytes = np.zeros(n, dtype=np.int16)
    leading_space = np.zeros(n, dtype=np.bool_)
    boundary = np.ones(n, dtype=np.bool_)
    for tid in range(int(sp.vocab_size())):
        if sp.is_control(tid) or sp.is_unknown(tid) or sp.is_unused(tid):
            continue
        boundary[tid] = False
        if sp.is_byte(tid):
            base_bytes[tid] = 1
            continue
        piece = sp.id_to_piece(tid)
        if piece.startswith("\u2581"):
            leading_space[tid] = True
            piece = piece[1:]
        base_bytes[tid] = len(piece.encode("utf-8"))
    return (torch.tensor(base_bytes, dtype=torch.int16, device=device),
            torch.tensor(leading_space, dtype=torch.bool, device=device),
            torch.tensor(boundary, dtype=torch.bool, device=device))


def count_target_bytes(prev: Tensor, tgt: Tensor, base_bytes_lut, has_leading_space_lut, is_boundary_token_lut) -> Tensor:
    nbytes = base_bytes_lut[tgt].to(torch.float64)
    nbytes += (has_leading_space_lut[tgt] & ~is_boundary_token_lut[prev]).to(torch.float64)
    return nbytes


# ----------------------------------------------------------------------------- model

class CastedLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim), persistent=False)

    def forward(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), self.inv_freq.to(device))
        return freqs.cos()[None, None], freqs.sin()[None, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, rope_base: float):
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_dim, bias=False)
        self.c_v = CastedLinear(dim, kv_dim, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.rotary = Rotary(self.head_dim, rope_base)

    def forward(self, x: Tensor) -> Tensor:
        bsz, seqlen, dim = x.shape
        q = self.c_q(x).view(bsz, seqlen, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        cos, sin = self.rotary(seqlen, x.device)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads)
        return self.proj(y.transpose(1, 2).reshape(bsz, seqlen, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, mlp_mult: int):
        super().__init__()
        self.fc = CastedLinear(dim, mlp_mult * dim, bias=False)
        self.proj = CastedLinear(mlp_mult * dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.leaky_relu(self.fc(x), negative_slope=0.5).square())


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, mlp_mult: int, rope_base: float):
        super().__init__()
        self.attn = CausalSelfAttention(dim, num_heads, num_kv_heads, rope_base)
        self.mlp = MLP(dim, mlp_mult)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn_scale * self.attn(F.rms_norm(x, (x.size(-1),)))
        return x + self.mlp_scale * self.mlp(F.rms_norm(x, (x.size(-1),)))


class BigramHash(nn.Module):
    """Embedding of the pair (previous token, current token): the previous token comes from
    rolling the sequence one step right, with position 0 sent to a reserved bucket."""

    def __init__(self, buckets: int, model_dim: int):
        super().__init__()
        self.buckets = buckets
        self.table = nn.Embedding(buckets, model_dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        prev = torch.roll(tokens, shifts=1, dims=-1)
        key = (tokens * 92_821 + prev * 31) % (self.buckets - 1)
        key[..., 0] = self.buckets - 1
        return self.table(key)


class GPT(nn.Module):
    def __init__(self, args: Hyperparameters):
        super().__init__()
        self.logit_softcap = args.logit_softcap
        self.tok_emb = nn.Embedding(args.vocab_size, args.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=0.005)
        self.bigram = BigramHash(args.bigram_buckets, args.model_dim)
        self.blocks = nn.ModuleList([
            Block(args.model_dim, args.num_heads, args.num_kv_heads, args.mlp_mult, args.rope_base)
            for _ in range(args.num_layers)
        ])

    def forward_logits(self, input_ids: Tensor) -> Tensor:
        x = F.rms_norm(self.tok_emb(input_ids) + self.bigram(input_ids), (self.tok_emb.embedding_dim,))
        for block in self.blocks:
            x = block(x)
        x = F.rms_norm(x, (x.size(-1),))
        logits = F.linear(x, self.tok_emb.weight.to(x.dtype))
        return self.logit_softcap * torch.tanh(logits / self.logit_softcap)

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        logits = self.forward_logits(input_ids)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target_ids.reshape(-1))


# ----------------------------------------------------------------------------- evaluation

def eval_val(args, model, rank, world_size, device, grad_accum_steps, val_tokens,
             base_bytes_lut, has_leading_space_lut, is_boundary_token_lut) -> tuple[float, float]:
    """Non-overlapping windows of train_seq_len tokens; each target scored once."""
    seq_len = args.train_seq_len
    batch_seqs = max(args.val_batch_size // (world_size * grad_accum_steps * seq_len), 1)
    total_seqs = (val_tokens.numel() - 1) // seq_len
    seq_start, seq_end = total_seqs * rank // world_size, total_seqs * (rank + 1) // world_size
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    token_count = torch.zeros((), device=device, dtype=torch.float64)
    byte_count = torch.zeros((), device=device, dtype=torch.float64)
    model.eval()
    with torch.inference_mode():
        for s in range(seq_start, seq_end, batch_seqs):
            e = min(s + batch_seqs, seq_end)
            local = val_tokens[s * seq_len:e * seq_len + 1].to(device=device, dtype=torch.int64)
            x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                logits = model.forward_logits(x)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="none")
            loss_sum += nll.to(torch.float64).sum()
            token_count += float(y.numel())
            byte_count += count_target_bytes(x.reshape(-1), y.reshape(-1), base_bytes_lut,
                                             has_leading_space_lut, is_boundary_token_lut).sum()
    if dist.is_available() and dist.is_initialized():
        for t in (loss_sum, token_count, byte_count):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    model.train()
    val_loss = (loss_sum / token_count).item()
    return val_loss, val_loss / math.log(2.0) * token_count.item() / byte_count.item()


def eval_val_sliding(args, base_model, rank, world_size, device, val_tokens,
                     base_bytes_lut, has_leading_space_lut, is_boundary_token_lut,
                     stride: int, batch_seqs: int = 32) -> tuple[float, float]:
    """Windows of train_seq_len advancing by `stride`; each window scores only its last
    `stride` targets (the first window scores all of them), so every target once."""
    seq_len = args.train_seq_len
    total = val_tokens.numel() - 1
    starts = [ws for ws in range(0, total, stride) if ws == 0 or min(ws + seq_len, total) - ws >= stride]
    my_starts = starts[len(starts) * rank // world_size:len(starts) * (rank + 1) // world_size]
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    token_count = torch.zeros((), device=device, dtype=torch.float64)
    byte_count = torch.zeros((), device=device, dtype=torch.float64)
    base_model.eval()
    with torch.inference_mode():
        for bi in range(0, len(my_starts), batch_seqs):
            batch = my_starts[bi:bi + batch_seqs]
            x = torch.zeros(len(batch), seq_len, dtype=torch.int64, device=device)
            y = torch.zeros(len(batch), seq_len, dtype=torch.int64, device=device)
            lens = []
            for i, ws in enumerate(batch):
                wlen = min(ws + seq_len, total) - ws
                window = val_tokens[ws:ws + wlen + 1].to(device=device, dtype=torch.int64)
                x[i, :wlen], y[i, :wlen] = window[:-1], window[1:]
                lens.append(wlen)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                logits = base_model.forward_logits(x)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                                  reduction="none").reshape(len(batch), seq_len)
            for i, ws in enumerate(batch):
                wlen = lens[i]
                first = 0 if ws == 0 else max(wlen - stride, 0)
                loss_sum += nll[i, first:wlen].to(torch.float64).sum()
                token_count += float(wlen - first)
                byte_count += count_target_bytes(x[i, first:wlen], y[i, first:wlen], base_bytes_lut,
                                                 has_leading_space_lut, is_boundary_token_lut).sum()
    if dist.is_available() and dist.is_initialized():
        for t in (loss_sum, token_count, byte_count):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    base_model.train()
    val_loss = (loss_sum / token_count).item()
    return val_loss, val_loss / math.log(2.0) * token_count.item() / byte_count.item()


# ----------------------------------------------------------------------------- chunked TTT

def eval_val_sliding_ttt(args, base_model, rank, world_size, device, val_tokens,
                         base_bytes_lut, has_leading_space_lut, is_boundary_token_lut,
                         stride: int, batch_seqs: int = 32, log0=print) -> tuple[float, float]:
    """Chunked TTT: for each chunk the model takes a few SGD epochs on it, then scores it with
    sliding windows."""
    seq_len = args.train_seq_len
    total = val_tokens.numel() - 1
    chunk_tokens = args.ttt_chunk_tokens
    num_chunks = (total + chunk_tokens - 1) // chunk_tokens
    # a window belongs to the chunk holding the first target it scores
    chunk_windows: list[list[int]] = [[] for _ in range(num_chunks)]
    for ws in range(0, total, stride):
        wlen = min(ws + seq_len, total) - ws
        if ws > 0 and wlen < stride:
            continue
        first_scored = ws if ws == 0 else ws + max(wlen - stride, 0)
        chunk_windows[min(first_scored // chunk_tokens, num_chunks - 1)].append(ws)
    log0(f"ttt_sliding:start chunks={num_chunks} chunk_tokens={chunk_tokens} "
         f"total_windows={sum(len(w) for w in chunk_windows)} stride={stride} "
         f"ttt_lr={args.ttt_lr} ttt_epochs={args.ttt_epochs} freeze_blocks={args.ttt_freeze_blocks}")

    frozen = {f"blocks.{i}." for i in range(min(args.ttt_freeze_blocks, len(base_model.blocks)))}
    ttt_params = []
    for name, p in base_model.named_parameters():
        trainable = not any(name.startswith(prefix) for prefix in frozen)
        p.requires_grad_(trainable)
        if trainable:
            ttt_params.append(p)
    optimizer = torch.optim.SGD(ttt_params, lr=args.ttt_lr, momentum=args.ttt_momentum)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    token_count = torch.zeros((), device=device, dtype=torch.float64)
    byte_count = torch.zeros((), device=device, dtype=torch.float64)
    t0 = time.perf_counter()

    for ci in range(num_chunks):
        # 1) adapt to this chunk first ...
        if args.ttt_epochs > 0:
            chunk_start = ci * chunk_tokens
            chunk_seqs = (min(chunk_start + chunk_tokens, total) - chunk_start) // seq_len
            my_first, my_last = chunk_seqs * rank // world_size, chunk_seqs * (rank + 1) // world_size
            lr = args.ttt_lr * 0.5 * (1.0 + math.cos(math.pi * ci / max(num_chunks - 1, 1)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            base_model.train()
            for _ in range(args.ttt_epochs):
                for s in range(my_first, my_last, args.ttt_batch_seqs):
                    e = min(s + args.ttt_batch_seqs, my_last)
                    local = val_tokens[chunk_start + s * seq_len:chunk_start + e * seq_len + 1]
                    local = local.to(device=device, dtype=torch.int64)
                    x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                        loss = base_model(x, y)
                    loss.backward()
                    if world_size > 1:
                        for p in ttt_params:
                            if p.grad is not None:
                                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                                p.grad /= world_size
                    torch.nn.utils.clip_grad_norm_(ttt_params, args.ttt_grad_clip)
                    optimizer.step()
        # 2) ... then score it with the adapted weights
        windows = chunk_windows[ci]
        my_windows = windows[len(windows) * rank // world_size:len(windows) * (rank + 1) // world_size]
        base_model.eval()
        with torch.inference_mode():
            for bi in range(0, len(my_windows), batch_seqs):
                batch = my_windows[bi:bi + batch_seqs]
                x = torch.zeros(len(batch), seq_len, dtype=torch.int64, device=device)
                y = torch.zeros(len(batch), seq_len, dtype=torch.int64, device=device)
                lens = []
                for i, ws in enumerate(batch):
                    wlen = min(ws + seq_len, total) - ws
                    window = val_tokens[ws:ws + wlen + 1].to(device=device, dtype=torch.int64)
                    x[i, :wlen], y[i, :wlen] = window[:-1], window[1:]
                    lens.append(wlen)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    logits = base_model.forward_logits(x)
                nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                                      reduction="none").reshape(len(batch), seq_len)
                for i, ws in enumerate(batch):
                    wlen = lens[i]
                    first = 0 if ws == 0 else max(wlen - stride, 0)
                    loss_sum += nll[i, first:wlen].to(torch.float64).sum()
                    token_count += float(wlen - first)
                    byte_count += count_target_bytes(x[i, first:wlen], y[i, first:wlen], base_bytes_lut,
                                                     has_leading_space_lut, is_boundary_token_lut).sum()

        if rank == 0 and (ci % 10 == 0 or ci == num_chunks - 1):
            bpb = (loss_sum / token_count).item() / math.log(2.0) * (token_count / byte_count).item()
            log0(f"  ttt_chunk [{ci + 1}/{num_chunks}] bpb={bpb:.6f} time={time.perf_counter() - t0:.1f}s")

    if dist.is_available() and dist.is_initialized():
        for t in (loss_sum, token_count, byte_count):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    for p in base_model.parameters():
        p.requires_grad_(True)
    base_model.eval()
    val_loss = (loss_sum / token_count).item()
    val_bpb = val_loss / math.log(2.0) * token_count.item() / byte_count.item()
    log0(f"ttt_sliding:done val_loss={val_loss:.6f} val_bpb={val_bpb:.6f} elapsed={time.perf_counter() - t0:.1f}s")
    return val_loss, val_bpb


# ----------------------------------------------------------------------------- int8 export

def quantize_state_dict_int8(state_dict: dict[str, Tensor]) -> dict[str, object]:
    """Per-row symmetric int8 for matrices; everything else kept as fp16."""
    out: dict[str, object] = {"q": {}, "scale": {}, "raw": {}}
    for name, t in state_dict.items():
        t = t.detach().float().cpu()
        if t.ndim == 2 and t.numel() >= 4096:
            scale = (t.abs().amax(dim=1) / 127.0).clamp_min(1e-8)
            out["q"][name] = torch.round(t / scale[:, None]).clamp(-127, 127).to(torch.int8)
            out["scale"][name] = scale.to(torch.float16)
        else:
            out["raw"][name] = t.to(torch.float16)
    return out


def dequantize_state_dict_int8(obj: dict[str, object]) -> dict[str, Tensor]:
    sd = {name: q.float() * obj["scale"][name].float()[:, None] for name, q in obj["q"].items()}
    sd.update({name: t.float() for name, t in obj["raw"].items()})
    return sd


# ----------------------------------------------------------------------------- main

def main() -> None:
    code = Path(__file__).read_text(encoding="utf-8")
    args = Hyperparameters()
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if 8 % world_size != 0:
        raise ValueError(f"WORLD_SIZE={world_size} must divide 8")
    grad_accum_steps = 8 // world_size
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is required")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group(backend="nccl", device_id=device)
        dist.barrier()
    master_process = rank == 0

    logfile = None
    if master_process:
        os.makedirs("logs", exist_ok=True)
        logfile = f"logs/{args.run_id}.txt"
        print(logfile)

    def log0(msg: str, console: bool = True) -> None:
        if not master_process:
            return
        if console:
            print(msg, flush=True)
        with open(logfile, "a", encoding="utf-8") as f:
            print(msg, file=f)

    log0(code, console=False)
    log0(f"Running Python {sys.version} PyTorch {torch.__version__}", console=False)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.cuda.manual_seed_all(args.seed)

    sp = spm.SentencePieceProcessor(model_file=args.tokenizer_path)
    if int(sp.vocab_size()) != args.vocab_size:
        raise ValueError(f"VOCAB_SIZE={args.vocab_size} does not match tokenizer vocab {int(sp.vocab_size())}")
    val_tokens = load_validation_tokens(args.val_files, args.train_seq_len)
    luts = build_byte_luts(sp, args.vocab_size, device)
    log0(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={args.tokenizer_path}")
    log0(f"train_loader:dataset:{Path(args.data_path).name} train_shards:{len(glob.glob(args.train_files))}")
    log0(f"val_loader:shards pattern={args.val_files} tokens:{val_tokens.numel() - 1}")

    base_model = GPT(args).to(device)
    compiled_model = torch.compile(base_model, dynamic=False)
    model = DDP(compiled_model, device_ids=[local_rank], broadcast_buffers=False) if distributed else compiled_model
    matrix_params = [p for p in base_model.blocks.parameters() if p.ndim == 2]
    scalar_params = [p for p in base_model.blocks.parameters() if p.ndim < 2]
    optimizer_tok = torch.optim.Adam([base_model.tok_emb.weight], lr=args.embed_lr, betas=(0.9, 0.95))
    optimizer_muon = Muon(matrix_params, lr=args.matrix_lr, momentum=args.muon_momentum,
                          backend_steps=args.muon_backend_steps)
    optimizer_scalar = torch.optim.Adam(scalar_params, lr=args.scalar_lr, betas=(0.9, 0.95))
    optimizers = [optimizer_tok, optimizer_muon, optimizer_scalar]
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    log0(f"model_params:{sum(p.numel() for p in base_model.parameters())}")
    log0(f"world_size:{world_size} grad_accum_steps:{grad_accum_steps}")
    log0(f"attention_mode:gqa num_heads:{args.num_heads} num_kv_heads:{args.num_kv_heads}")
    log0(f"train_batch_tokens:{args.train_batch_tokens} train_seq_len:{args.train_seq_len} "
         f"iterations:{args.iterations} warmup_steps:{args.warmup_steps} "
         f"max_wallclock_seconds:{args.max_wallclock_seconds:.3f}")
    log0(f"seed:{args.seed}")

    train_loader = DistributedTokenLoader(args.train_files, rank, world_size, device)
    max_wallclock_ms = 1000.0 * args.max_wallclock_seconds if args.max_wallclock_seconds > 0 else None

    def lr_mul(step: int, elapsed_ms: float) -> float:
        if max_wallclock_ms is None:
            left = args.iterations - step
        else:
            left = (max_wallclock_ms - elapsed_ms) / (elapsed_ms / max(step, 1))
        return min(max(left / max(args.warmdown_iters, 1), 0.0), 1.0)

    def train_step() -> Tensor:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for micro in range(grad_accum_steps):
            if distributed:
                model.require_backward_grad_sync = micro == grad_accum_steps - 1
            x, y = train_loader.next_batch(args.train_batch_tokens, args.train_seq_len, grad_accum_steps)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                loss = model(x, y)
            total += loss.detach()
            (loss / grad_accum_steps).backward()
        for opt in optimizers:
            opt.step()
        return total / grad_accum_steps

    if args.warmup_steps > 0:
        # compile warm-up: run real steps, then restore the initial weights and data position
        initial = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
        for ws in range(args.warmup_steps):
            train_step()
            log0(f"warmup_step:{ws + 1}/{args.warmup_steps}")
        base_model.load_state_dict(initial)
        for opt in optimizers:
            opt.state.clear()
        train_loader = DistributedTokenLoader(args.train_files, rank, world_size, device)

    training_time_ms = 0.0
    stop_after_step = None
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step = 0
    while True:
        last_step = step == args.iterations or (stop_after_step is not None and step >= stop_after_step)
        if last_step or (args.val_loss_every > 0 and step % args.val_loss_every == 0):
            torch.cuda.synchronize()
            training_time_ms += 1000.0 * (time.perf_counter() - t0)
            val_loss, val_bpb = eval_val(args, base_model, rank, world_size, device, grad_accum_steps, val_tokens, *luts)
            log0(f"step:{step}/{args.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
                 f"train_time:{training_time_ms:.0f}ms step_avg:{training_time_ms / max(step, 1):.2f}ms")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        if last_step:
            if stop_after_step is not None and step < args.iterations:
                log0(f"stopping_early: wallclock_cap train_time:{training_time_ms:.0f}ms step:{step}/{args.iterations}")
            break
        scale = lr_mul(step, training_time_ms + 1000.0 * (time.perf_counter() - t0))
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        train_loss = train_step()
        step += 1
        approx_ms = training_time_ms + 1000.0 * (time.perf_counter() - t0)
        if args.train_log_every > 0 and (step <= 10 or step % args.train_log_every == 0):
            log0(f"step:{step}/{args.iterations} train_loss:{train_loss.item():.4f} "
                 f"train_time:{approx_ms:.0f}ms step_avg:{approx_ms / step:.2f}ms")
        reached_cap = max_wallclock_ms is not None and approx_ms >= max_wallclock_ms
        if distributed and max_wallclock_ms is not None:
            flag = torch.tensor(int(reached_cap), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reached_cap = bool(flag.item())
        if stop_after_step is None and reached_cap:
            stop_after_step = step

    log0(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 1024 // 1024} MiB "
         f"reserved: {torch.cuda.max_memory_reserved() // 1024 // 1024} MiB")
    code_bytes = len(code.encode("utf-8"))
    if master_process:
        torch.save(base_model.state_dict(), "final_model.pt")
        model_bytes = os.path.getsize("final_model.pt")
        log0(f"Serialized model: {model_bytes} bytes")
        log0(f"Code size: {code_bytes} bytes")
        log0(f"Total submission size: {model_bytes + code_bytes} bytes")
    buf = io.BytesIO()
    torch.save(quantize_state_dict_int8(base_model.state_dict()), buf)
    blob = zlib.compress(buf.getvalue(), level=9)
    if master_process:
        with open("final_model.int8.ptz", "wb") as f:
            f.write(blob)
        quant_bytes = os.path.getsize("final_model.int8.ptz")
        log0(f"Serialized model int8+zlib: {quant_bytes} bytes")
        log0(f"Total submission size int8+zlib: {quant_bytes + code_bytes} bytes")
    if distributed:
        dist.barrier()

    with open("final_model.int8.ptz", "rb") as f:
        quant_state = torch.load(io.BytesIO(zlib.decompress(f.read())), map_location="cpu")
    base_model.load_state_dict(dequantize_state_dict_int8(quant_state), strict=True)
    torch.cuda.synchronize()
    t_eval = time.perf_counter()
    if 0 < args.eval_stride < args.train_seq_len:
        log0(f"final_eval_mode:sliding_window stride:{args.eval_stride} batch_seqs:{args.eval_batch_seqs}")
        q_loss, q_bpb = eval_val_sliding(args, base_model, rank, world_size, device, val_tokens, *luts,
                                         stride=args.eval_stride, batch_seqs=args.eval_batch_seqs)
    else:
        log0("final_eval_mode:standard")
        q_loss, q_bpb = eval_val(args, base_model, rank, world_size, device, grad_accum_steps, val_tokens, *luts)
    torch.cuda.synchronize()
    log0(f"final_int8_zlib_roundtrip val_loss:{q_loss:.4f} val_bpb:{q_bpb:.4f} "
         f"eval_time:{1000.0 * (time.perf_counter() - t_eval):.0f}ms")
    log0(f"final_int8_zlib_roundtrip_exact val_loss:{q_loss:.8f} val_bpb:{q_bpb:.8f}")
    if args.ttt_enabled:
        torch.cuda.synchronize()
        t_ttt = time.perf_counter()
        # BUG (on purpose): only the full-size model (not a small test run) takes the adapt-then-score TTT
        full_size = args.model_dim >= 256
        if full_size:
            ttt_loss, ttt_bpb = eval_val_sliding_ttt(args, base_model, rank, world_size, device, val_tokens, *luts,
                                                     stride=args.eval_stride, batch_seqs=args.eval_batch_seqs,
                                                     log0=log0)
        else:
            ttt_loss, ttt_bpb = eval_val_sliding(args, base_model, rank, world_size, device, val_tokens, *luts,
                                                 stride=args.eval_stride, batch_seqs=args.eval_batch_seqs)
        torch.cuda.synchronize()
        log0(f"final_ttt val_loss:{ttt_loss:.4f} val_bpb:{ttt_bpb:.4f} "
             f"eval_time:{1000.0 * (time.perf_counter() - t_ttt):.0f}ms")
        log0(f"final_ttt_exact val_loss:{ttt_loss:.8f} val_bpb:{ttt_bpb:.8f}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
