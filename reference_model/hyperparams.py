"""Every knob of the reference model, read from environment variables like the challenge's
`Hyperparameters`. A preset ("baseline": the challenge's 8xH100 configuration; "toy": a model
that trains in about a minute on a CPU) gives the defaults; an environment variable overrides
its value. The CLI's flags are written into the environment before `from_env` is called."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

BROKEN_NAMES = (
    "train-before-score",
    "train-before-score-multi-epoch",
    "val-data-in-training",
    "val-data-in-training-calibration",
    "rescored-tokens",
    "hash-key-reads-target",
    "improper-distribution",
)
EVAL_MODES = ("standard", "sliding", "ttt-sgd", "ttt-lora")


@dataclass
class Hyperparameters:
    preset: str = "baseline"
    data_path: str = "./data/datasets/fineweb10B_sp1024"
    tokenizer_path: str = "./data/tokenizers/fineweb_1024_bpe.model"
    out_dir: str = "."
    run_id: str = "reference"
    seed: int = 1337
    # model
    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: int = 2
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    qk_gain_init: float = 1.5
    tied_embed_init_std: float = 0.005
    # training
    iterations: int = 20000
    warmup_steps: int = 20
    warmdown_iters: int = 1200
    train_batch_tokens: int = 524_288
    train_seq_len: int = 1024
    max_wallclock_seconds: float = 600.0
    train_log_every: int = 200
    val_loss_every: int = 1000
    val_batch_size: int = 524_288
    tied_embed_lr: float = 0.05
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_backend_steps: int = 5
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0
    compile: bool = True  # torch.compile, on CUDA only
    # artifact
    quant_bits: int = 8  # 8 or 6
    quant_calibration: str = "none"  # none | train (val: only the broken variant)
    calibration_seqs: int = 16
    # eval
    eval_mode: str = "all"  # all, or a comma list of standard,sliding,ttt-sgd,ttt-lora
    eval_stride: int = 64
    eval_batch_seqs: int = 32
    ttt_enabled: bool = True
    # TTT (a): chunked full-model SGD, score-first (PR #461/#549)
    ttt_lr: float = 0.002
    ttt_epochs: int = 3
    ttt_chunk_tokens: int = 32768
    ttt_freeze_blocks: int = 2
    ttt_momentum: float = 0.9
    ttt_batch_seqs: int = 32
    ttt_grad_clip: float = 1.0
    # TTT (b): per-document batched LoRA, score-first (PR #77)
    ttt_lora_rank: int = 8
    ttt_lora_lr: float = 0.01
    ttt_chunk_size: int = 256
    ttt_eval_seq_len: int = 1024
    ttt_batch_size: int = 64
    # broken variants (one at a time; "" = legal)
    broken: str = ""
    bigram_buckets: int = 4096  # used only by hash-key-reads-target
    ngram_mix: float = 0.3  # used only by improper-distribution
    val_train_epochs: int = 2  # used only by val-data-in-training
    val_train_lr: float = 0.01  # used only by val-data-in-training

    def eval_modes(self) -> list[str]:
        modes = list(EVAL_MODES) if self.eval_mode in ("all", "") else [m.strip() for m in self.eval_mode.split(",")]
        for m in modes:
            if m not in EVAL_MODES:
                raise ValueError(f"EVAL_MODE: unknown mode {m!r}; known: {', '.join(EVAL_MODES)}")
        if not self.ttt_enabled:
            modes = [m for m in modes if not m.startswith("ttt")]
        return modes


PRESETS = {
    "baseline": {},
    "toy": dict(
        num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2,
        iterations=300, warmup_steps=0, warmdown_iters=100, train_batch_tokens=2048, train_seq_len=128,
        train_log_every=25, val_loss_every=0, val_batch_size=16384, max_wallclock_seconds=600.0,
        tied_embed_lr=0.05, matrix_lr=0.04, scalar_lr=0.04, muon_momentum_warmup_steps=50,
        eval_stride=64, eval_batch_seqs=32,
        ttt_lr=0.01, ttt_epochs=2, ttt_chunk_tokens=2048, ttt_freeze_blocks=0, ttt_batch_seqs=8,
        ttt_lora_rank=4, ttt_lora_lr=0.01, ttt_chunk_size=64, ttt_eval_seq_len=128, ttt_batch_size=16,
        bigram_buckets=4096,
    ),
}


def _bool(text: str) -> bool:
    return text.strip().lower() not in ("0", "false", "no", "off", "")


def from_env(preset: str | None = None) -> Hyperparameters:
    """Preset defaults, then environment variables. Names are the challenge's where it has one."""
    preset = preset or os.environ.get("PRESET", "baseline")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    h = Hyperparameters(preset=preset, **PRESETS[preset])
    h.data_path = os.environ.get("DATA_PATH", h.data_path)
    h.tokenizer_path = os.environ.get("TOKENIZER_PATH", h.tokenizer_path)
    h.out_dir = os.environ.get("OUT_DIR", h.out_dir)
    h.run_id = os.environ.get("RUN_ID", h.run_id)
    h.seed = int(os.environ.get("SEED", h.seed))
    h.vocab_size = int(os.environ.get("VOCAB_SIZE", h.vocab_size))
    h.num_layers = int(os.environ.get("NUM_LAYERS", h.num_layers))
    h.model_dim = int(os.environ.get("MODEL_DIM", h.model_dim))
    h.num_heads = int(os.environ.get("NUM_HEADS", h.num_heads))
    h.num_kv_heads = int(os.environ.get("NUM_KV_HEADS", h.num_kv_heads))
    h.mlp_mult = int(os.environ.get("MLP_MULT", h.mlp_mult))
    h.rope_base = float(os.environ.get("ROPE_BASE", h.rope_base))
    h.logit_softcap = float(os.environ.get("LOGIT_SOFTCAP", h.logit_softcap))
    h.qk_gain_init = float(os.environ.get("QK_GAIN_INIT", h.qk_gain_init))
    h.tied_embed_init_std = float(os.environ.get("TIED_EMBED_INIT_STD", h.tied_embed_init_std))
    h.iterations = int(os.environ.get("ITERATIONS", h.iterations))
    h.warmup_steps = int(os.environ.get("WARMUP_STEPS", h.warmup_steps))
    h.warmdown_iters = int(os.environ.get("WARMDOWN_ITERS", h.warmdown_iters))
    h.train_batch_tokens = int(os.environ.get("TRAIN_BATCH_TOKENS", h.train_batch_tokens))
    h.train_seq_len = int(os.environ.get("TRAIN_SEQ_LEN", h.train_seq_len))
    h.max_wallclock_seconds = float(os.environ.get("MAX_WALLCLOCK_SECONDS", h.max_wallclock_seconds))
    h.train_log_every = int(os.environ.get("TRAIN_LOG_EVERY", h.train_log_every))
    h.val_loss_every = int(os.environ.get("VAL_LOSS_EVERY", h.val_loss_every))
    h.val_batch_size = int(os.environ.get("VAL_BATCH_SIZE", h.val_batch_size))
    h.tied_embed_lr = float(os.environ.get("TIED_EMBED_LR", h.tied_embed_lr))
    h.matrix_lr = float(os.environ.get("MATRIX_LR", h.matrix_lr))
    h.scalar_lr = float(os.environ.get("SCALAR_LR", h.scalar_lr))
    h.muon_momentum = float(os.environ.get("MUON_MOMENTUM", h.muon_momentum))
    h.muon_momentum_warmup_start = float(os.environ.get("MUON_MOMENTUM_WARMUP_START", h.muon_momentum_warmup_start))
    h.muon_momentum_warmup_steps = int(os.environ.get("MUON_MOMENTUM_WARMUP_STEPS", h.muon_momentum_warmup_steps))
    h.muon_backend_steps = int(os.environ.get("MUON_BACKEND_STEPS", h.muon_backend_steps))
    h.beta1 = float(os.environ.get("BETA1", h.beta1))
    h.beta2 = float(os.environ.get("BETA2", h.beta2))
    h.adam_eps = float(os.environ.get("ADAM_EPS", h.adam_eps))
    h.grad_clip_norm = float(os.environ.get("GRAD_CLIP_NORM", h.grad_clip_norm))
    h.compile = _bool(os.environ.get("COMPILE", "1" if h.compile else "0"))
    h.quant_bits = int(os.environ.get("QUANT_BITS", h.quant_bits))
    h.quant_calibration = os.environ.get("QUANT_CALIBRATION", h.quant_calibration)
    h.calibration_seqs = int(os.environ.get("CALIBRATION_SEQS", h.calibration_seqs))
    h.eval_mode = os.environ.get("EVAL_MODE", h.eval_mode)
    h.eval_stride = int(os.environ.get("EVAL_STRIDE", h.eval_stride))
    h.eval_batch_seqs = int(os.environ.get("EVAL_BATCH_SEQS", h.eval_batch_seqs))
    h.ttt_enabled = _bool(os.environ.get("TTT_ENABLED", "1" if h.ttt_enabled else "0"))
    h.ttt_lr = float(os.environ.get("TTT_LR", h.ttt_lr))
    h.ttt_epochs = int(os.environ.get("TTT_EPOCHS", h.ttt_epochs))
    h.ttt_chunk_tokens = int(os.environ.get("TTT_CHUNK_TOKENS", h.ttt_chunk_tokens))
    h.ttt_freeze_blocks = int(os.environ.get("TTT_FREEZE_BLOCKS", h.ttt_freeze_blocks))
    h.ttt_momentum = float(os.environ.get("TTT_MOMENTUM", h.ttt_momentum))
    h.ttt_batch_seqs = int(os.environ.get("TTT_BATCH_SEQS", h.ttt_batch_seqs))
    h.ttt_grad_clip = float(os.environ.get("TTT_GRAD_CLIP", h.ttt_grad_clip))
    h.ttt_lora_rank = int(os.environ.get("TTT_LORA_RANK", h.ttt_lora_rank))
    h.ttt_lora_lr = float(os.environ.get("TTT_LORA_LR", h.ttt_lora_lr))
    h.ttt_chunk_size = int(os.environ.get("TTT_CHUNK_SIZE", h.ttt_chunk_size))
    h.ttt_eval_seq_len = int(os.environ.get("TTT_EVAL_SEQ_LEN", h.ttt_eval_seq_len))
    h.ttt_batch_size = int(os.environ.get("TTT_BATCH_SIZE", h.ttt_batch_size))
    h.broken = os.environ.get("BROKEN", h.broken)
    h.bigram_buckets = int(os.environ.get("BIGRAM_BUCKETS", h.bigram_buckets))
    h.ngram_mix = float(os.environ.get("NGRAM_MIX", h.ngram_mix))
    h.val_train_epochs = int(os.environ.get("VAL_TRAIN_EPOCHS", h.val_train_epochs))
    h.val_train_lr = float(os.environ.get("VAL_TRAIN_LR", h.val_train_lr))
    if h.broken and h.broken not in BROKEN_NAMES:
        raise ValueError(f"BROKEN: unknown variant {h.broken!r}; known: {', '.join(BROKEN_NAMES)}")
    if h.quant_bits not in (6, 8):
        raise ValueError(f"QUANT_BITS must be 8 or 6, got {h.quant_bits}")
    if h.quant_calibration not in ("none", "train"):
        raise ValueError("QUANT_CALIBRATION must be none or train (val calibration is the broken "
                         "variant val-data-in-training-calibration)")
    h.eval_modes()  # validate
    return h


def apply_env_overrides(h: Hyperparameters) -> Hyperparameters:
    """Environment variables over a saved configuration (the `eval` command): NAME for field name."""
    for f in fields(h):
        text = os.environ.get(f.name.upper())
        if text is None or f.name in ("preset", "out_dir"):
            continue
        current = getattr(h, f.name)
        value = _bool(text) if isinstance(current, bool) else type(current)(text)
        setattr(h, f.name, value)
    return h


def describe(h: Hyperparameters) -> str:
    return " ".join(f"{f.name}:{getattr(h, f.name)}" for f in fields(h) )
