"""The challenge baseline's model: a decoder-only GPT with GQA attention, RoPE, RMSNorm, a
ReLU^2 MLP, tied embeddings, a tanh logit softcap and U-Net style skips between the first and
second half of the blocks. Optional pieces: per-document batched LoRA adapters (used by the
LoRA TTT eval) and a BigramHash embedding (only the `hash-key-reads-target` broken variant
builds one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class GPTConfig:
    """The model's shape, filled by train.model_config from the Hyperparameters, which hold the
    defaults (the challenge's baseline) and their environment variables."""

    vocab_size: int
    num_layers: int
    model_dim: int
    num_heads: int
    num_kv_heads: int
    mlp_mult: int
    rope_base: float
    logit_softcap: float
    qk_gain_init: float
    tied_embed_init_std: float
    # BigramHash (broken variant only): 0 = none; key "target" hashes (t[i], t[i+1]).
    bigram_buckets: int = 0
    bigram_key: str = "target"


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float, device) -> tuple[Tensor, Tensor]:
    # Built on every call (cheap): a cached table made under inference_mode during scoring
    # could not be saved for the backward of a later TTT step.
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return freqs.cos()[None, None], freqs.sin()[None, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.model_dim % cfg.num_heads or cfg.num_heads % cfg.num_kv_heads:
            raise ValueError("model_dim must divide by num_heads, num_heads by num_kv_heads")
        self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.head_dim = cfg.model_dim // cfg.num_heads
        self.rope_base = cfg.rope_base
        kv_dim = self.num_kv_heads * self.head_dim
        self.c_q = nn.Linear(cfg.model_dim, cfg.model_dim, bias=False)
        self.c_k = nn.Linear(cfg.model_dim, kv_dim, bias=False)
        self.c_v = nn.Linear(cfg.model_dim, kv_dim, bias=False)
        self.proj = nn.Linear(cfg.model_dim, cfg.model_dim, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))

    def forward(self, x: Tensor, q_lora=None, v_lora=None) -> Tensor:
        B, T, D = x.shape
        q, v = self.c_q(x), self.c_v(x)
        if q_lora is not None:
            q = q + q_lora(x)
        if v_lora is not None:
            v = v + v_lora(x)
        q = q.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).reshape(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = rotary_tables(T, self.head_dim, self.rope_base, x.device)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=self.num_kv_heads != self.num_heads)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.model_dim, cfg.mlp_mult * cfg.model_dim, bias=False)
        self.proj = nn.Linear(cfg.mlp_mult * cfg.model_dim, cfg.model_dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        dim = cfg.model_dim
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        # Mix of the running residual and the embedding output x0 (baseline's resid_mix).
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))

    def forward(self, x: Tensor, x0: Tensor, q_lora=None, v_lora=None) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x), q_lora, v_lora)
        x = x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))
        return x


class BigramHash(nn.Module):
    """Hashed embedding of a token pair. The broken variant keys position i on (t[i], t[i+1]):
    t[i+1] is the target, so the input carries the answer."""

    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, dim)
        nn.init.zeros_(self.embed.weight)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        key = (first * 1_000_003 + second * 7_919) % self.buckets
        return self.embed(key)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        self.bigram = BigramHash(cfg.bigram_buckets, cfg.model_dim) if cfg.bigram_buckets > 0 else None
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])

    def logits(self, input_ids: Tensor, target_ids: Tensor | None = None, lora=None) -> Tensor:
        x = self.tok_emb(input_ids)
        if self.bigram is not None:
            if self.cfg.bigram_key != "target":
                raise ValueError(f"unknown bigram_key {self.cfg.bigram_key!r}")
            x = x + self.bigram(input_ids, target_ids)  # broken: reads the target
        x = rms_norm(x)
        x0 = x
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= self.num_encoder_layers and skips:
                j = i - self.num_encoder_layers
                x = x + self.skip_weights[j].to(x.dtype) * skips.pop()
            q_lora = lora.q[i] if lora is not None else None
            v_lora = lora.v[i] if lora is not None else None
            x = block(x, x0, q_lora, v_lora)
            if i < self.num_encoder_layers:
                skips.append(x)
        x = rms_norm(x)
        logits = F.linear(x, self.tok_emb.weight.to(x.dtype))
        if lora is not None:
            logits = logits + lora.head(x)
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits.float() / cap)

    def forward(self, input_ids: Tensor, target_ids: Tensor, lora=None, reduction: str = "mean") -> Tensor:
        """Cross-entropy (nats) of target_ids; reduction "none" gives one loss per position."""
        logits = self.logits(input_ids, target_ids, lora)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction=reduction)
        return loss if reduction != "none" else loss.reshape(target_ids.shape)


class BatchedLoRA(nn.Module):
    """A low-rank delta B @ A for one linear layer, with separate weights for each row of the
    batch: each document in a batch adapts its own copy."""

    def __init__(self, batch_size: int, in_features: int, out_features: int, rank: int, generator=None):
        super().__init__()
        self.A = nn.Parameter(torch.empty(batch_size, rank, in_features))
        self.B = nn.Parameter(torch.empty(batch_size, out_features, rank))
        self.reset(generator)

    def reset(self, generator=None) -> None:
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.A.size(-1))
            self.A.uniform_(-bound, bound, generator=generator)
            self.B.zero_()  # the delta starts at zero: an unadapted LoRA is the base model

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.A.transpose(1, 2).to(x.dtype)) @ self.B.transpose(1, 2).to(x.dtype)


class DocumentLoRA(nn.Module):
    """LoRA adapters on every block's c_q and c_v and on the output head. `seed` fixes their
    random init, so a batch of documents starts the same whichever rank runs it."""

    def __init__(self, model: GPT, batch_size: int, rank: int, seed: int = 0):
        super().__init__()
        cfg = model.cfg
        kv_dim = cfg.num_kv_heads * (cfg.model_dim // cfg.num_heads)
        g = torch.Generator().manual_seed(seed)
        self.q = nn.ModuleList([BatchedLoRA(batch_size, cfg.model_dim, cfg.model_dim, rank, g) for _ in model.blocks])
        self.v = nn.ModuleList([BatchedLoRA(batch_size, cfg.model_dim, kv_dim, rank, g) for _ in model.blocks])
        self.head = BatchedLoRA(batch_size, cfg.model_dim, cfg.vocab_size, rank, g)
