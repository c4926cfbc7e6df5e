"""Train the reference model, write the artifact, and run the final evals.

    python -m reference_model train --preset toy --data DIR --out DIR     (the CLI)
    python reference_model/train_gpt.py                                   (contest-style, env vars)
    torchrun --standalone --nproc_per_node=8 reference_model/train_gpt.py (8xH100)

Muon for the block matrices and Adam for the embedding and the scalars, as in the challenge's
baseline; WARMUP_STEPS steps run first to prime torch.compile and are then undone; the learning
rate decays linearly over the last WARMDOWN_ITERS steps (or the time they would take before the
MAX_WALLCLOCK_SECONDS cap, whichever comes first); gradient accumulation over 8 // WORLD_SIZE
micro-steps; DDP over NCCL on GPU, gloo on CPU.
"""
from __future__ import annotations

import copy
import json
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from . import broken, quantize
from .data import TrainStream, load_val_tokens
from .eval import autocast, build_byte_luts, decoded_bytes, eval_sliding, eval_standard, target_bytes
from .hyperparams import Hyperparameters, from_env
from .model import GPT, GPTConfig
from .ttt import eval_ttt_lora, eval_ttt_sgd


# Numbered shards only: a sidecar such as fineweb_val_bytes_000000.bin is not token data.
TRAIN_SHARDS = "fineweb_train_[0-9]*.bin"
VAL_SHARDS = "fineweb_val_[0-9]*.bin"


# ---------------------------------------------------------------- Muon
def newton_schulz(G: Tensor, steps: int, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalise G (the quintic Newton-Schulz iteration of Muon)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()  # bf16 on GPU as in the baseline; fp32 on CPU
    X = X / (X.norm() + eps)
    transposed = X.size(0) > X.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalised per matrix. Gradients are
    already averaged over ranks by DDP, so every rank computes the same update."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
                update = newton_schulz(g, group["backend_steps"])
                update = update * max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.add_(update.to(p.dtype), alpha=-group["lr"])


# ---------------------------------------------------------------- setup
class Run:
    """Process-wide facts: ranks, device, logging."""

    def __init__(self, h: Hyperparameters):
        self.distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if 8 % self.world_size:
            raise ValueError(f"WORLD_SIZE={self.world_size} must divide 8 (gradient accumulation 8 // WORLD_SIZE)")
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.distributed:
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.master = self.rank == 0
        self.logfile = None
        if self.master:
            log_dir = Path(h.out_dir) / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            self.logfile = log_dir / f"{h.run_id}.txt"
            print(self.logfile)

    def log(self, msg: str) -> None:
        if not self.master:
            return
        print(msg, flush=True)
        with open(self.logfile, "a", encoding="utf-8") as f:
            print(msg, file=f)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def close(self) -> None:
        if self.distributed:
            # every rank's collectives done before the group goes: tearing gloo down with work
            # in flight aborted a rank ("terminate called without an active exception")
            dist.barrier()
            dist.destroy_process_group()


def model_config(h: Hyperparameters) -> GPTConfig:
    return GPTConfig(
        vocab_size=h.vocab_size, num_layers=h.num_layers, model_dim=h.model_dim, num_heads=h.num_heads,
        num_kv_heads=h.num_kv_heads, mlp_mult=h.mlp_mult, rope_base=h.rope_base,
        logit_softcap=h.logit_softcap, qk_gain_init=h.qk_gain_init, tied_embed_init_std=h.tied_embed_init_std,
        bigram_buckets=h.bigram_buckets if h.broken == "hash-key-reads-target" else 0,
    )


def make_optimizers(model: GPT, h: Hyperparameters) -> tuple[list, Muon]:
    """Muon: the weights of the Linear layers inside blocks. Adam: the embeddings (tied
    embedding lr) and every other block/skip parameter (scalar lr)."""
    matrix_params, scalar_params = [], []
    for module in model.blocks.modules():
        if isinstance(module, nn.Linear):
            matrix_params.append(module.weight)
    matrix_ids = {id(p) for p in matrix_params}
    scalar_params = [p for p in model.blocks.parameters() if id(p) not in matrix_ids] + [model.skip_weights]
    embed_params = [model.tok_emb.weight] + ([model.bigram.embed.weight] if model.bigram is not None else [])
    adam = dict(betas=(h.beta1, h.beta2), eps=h.adam_eps)
    opt_embed = torch.optim.Adam([{"params": embed_params, "lr": h.tied_embed_lr, "base_lr": h.tied_embed_lr}], **adam)
    opt_scalar = torch.optim.Adam([{"params": scalar_params, "lr": h.scalar_lr, "base_lr": h.scalar_lr}], **adam)
    muon = Muon(matrix_params, lr=h.matrix_lr, momentum=h.muon_momentum, backend_steps=h.muon_backend_steps)
    for group in muon.param_groups:
        group["base_lr"] = h.matrix_lr
    return [opt_embed, muon, opt_scalar], muon


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- training
def train(h: Hyperparameters, run: Run, model: GPT, val_tokens: Tensor, luts) -> None:
    ddp_model = DDP(model, broadcast_buffers=False) if run.distributed else model
    forward = torch.compile(ddp_model) if (h.compile and run.device.type == "cuda") else ddp_model
    optimizers, muon = make_optimizers(model, h)
    grad_accum_steps = 8 // run.world_size
    local_tokens = h.train_batch_tokens // (run.world_size * grad_accum_steps)
    if local_tokens % h.train_seq_len or local_tokens == 0:
        raise ValueError(f"TRAIN_BATCH_TOKENS={h.train_batch_tokens} must be a multiple of 8 x TRAIN_SEQ_LEN")
    train_files = os.path.join(h.data_path, TRAIN_SHARDS)
    stream = TrainStream(train_files, run.rank, run.world_size)
    cap_ms = 1000.0 * h.max_wallclock_seconds if h.max_wallclock_seconds > 0 else None

    def lr_scale(step: int, elapsed_ms: float) -> float:
        if h.warmdown_iters <= 0:
            return 1.0
        by_steps = min(1.0, max(h.iterations - step, 0) / h.warmdown_iters)
        if cap_ms is None or step == 0:
            return by_steps
        warmdown_ms = h.warmdown_iters * elapsed_ms / step
        by_time = min(1.0, max(cap_ms - elapsed_ms, 0.0) / max(warmdown_ms, 1e-9))
        return min(by_steps, by_time)

    def train_step(step: int, elapsed_ms: float) -> Tensor:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=run.device)
        for micro in range(grad_accum_steps):
            if run.distributed:
                ddp_model.require_backward_grad_sync = micro == grad_accum_steps - 1
            x, y = stream.next_batch(local_tokens, h.train_seq_len, run.device)
            with autocast(run.device):
                loss = forward(x, y)
            (loss / grad_accum_steps).backward()
            total += loss.detach()
        frac = min(step / h.muon_momentum_warmup_steps, 1.0) if h.muon_momentum_warmup_steps > 0 else 1.0
        for group in muon.param_groups:
            group["momentum"] = (1 - frac) * h.muon_momentum_warmup_start + frac * h.muon_momentum
        scale = lr_scale(step, elapsed_ms)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        if h.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), h.grad_clip_norm)
        for opt in optimizers:
            opt.step()
        return total / grad_accum_steps

    # Warmup: prime compilation, then restore the initial weights, optimizer state and data.
    if h.warmup_steps > 0:
        initial_model = copy.deepcopy(model.state_dict())
        initial_opts = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
        for i in range(h.warmup_steps):
            train_step(0, 0.0)
            run.log(f"warmup_step:{i + 1}/{h.warmup_steps}")
        model.load_state_dict(initial_model)
        for opt, state in zip(optimizers, initial_opts):
            opt.load_state_dict(state)
        stream = TrainStream(train_files, run.rank, run.world_size)

    train_ms, stop_after = 0.0, None
    run.sync()
    t0 = time.perf_counter()
    step = 0
    while True:
        last_step = step == h.iterations or (stop_after is not None and step >= stop_after)
        if last_step or (h.val_loss_every > 0 and step % h.val_loss_every == 0):
            run.sync()
            train_ms += 1000.0 * (time.perf_counter() - t0)
            val_loss, val_bpb = eval_standard(model, val_tokens, luts, run.device, h.train_seq_len,
                                              eval_batch_seqs(h), run.rank, run.world_size)
            run.log(f"step:{step}/{h.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
                    f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms")
            run.sync()
            t0 = time.perf_counter()
        if last_step:
            if stop_after is not None and step < h.iterations:
                run.log(f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:{step}/{h.iterations}")
            break
        loss = train_step(step, train_ms + 1000.0 * (time.perf_counter() - t0))
        step += 1
        elapsed = train_ms + 1000.0 * (time.perf_counter() - t0)
        if h.train_log_every > 0 and (step <= 10 or step % h.train_log_every == 0 or stop_after is not None):
            run.log(f"step:{step}/{h.iterations} train_loss:{loss.item():.4f} "
                    f"train_time:{elapsed:.0f}ms step_avg:{elapsed / step:.2f}ms")
        reached_cap = cap_ms is not None and elapsed >= cap_ms
        if run.distributed and cap_ms is not None:
            flag = torch.tensor(int(reached_cap), device=run.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reached_cap = bool(flag.item())
        if stop_after is None and reached_cap:
            stop_after = step
    if run.device.type == "cuda":
        run.log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB "
                f"reserved: {torch.cuda.max_memory_reserved() // 2**20} MiB")


def eval_batch_seqs(h: Hyperparameters) -> int:
    return max(1, min(h.eval_batch_seqs, h.val_batch_size // h.train_seq_len))


# ---------------------------------------------------------------- artifact
def artifact_path(h: Hyperparameters) -> Path:
    return Path(h.out_dir) / f"final_model.int{h.quant_bits}.ptz"


def calibration_batches(h: Hyperparameters, run: Run) -> list:
    """Legal calibration data: the first CALIBRATION_SEQS sequences of the train stream."""
    stream = TrainStream(os.path.join(h.data_path, TRAIN_SHARDS))
    x, y = stream.next_batch(h.calibration_seqs * h.train_seq_len, h.train_seq_len, run.device)
    return [(x, y)]


def write_artifact(h: Hyperparameters, run: Run, model: GPT, val_tokens: Tensor) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    code = quantize.code_bytes()
    raw = quantize.raw_bytes(state)
    run.log(f"Serialized model: {raw} bytes")
    run.log(f"Code size: {code} bytes")
    run.log(f"Total submission size: {raw + code} bytes")
    hessians = None
    if h.broken == "val-data-in-training-calibration":
        hessians = quantize.collect_hessians(model, broken.val_calibration_batches(val_tokens, h, run.device))
        run.log("quant_calibration:val (BROKEN=val-data-in-training-calibration)")
    elif h.quant_calibration == "train":
        hessians = quantize.collect_hessians(model, calibration_batches(h, run))
        run.log("quant_calibration:train")
    blob = quantize.compress(quantize.quantize_state_dict(state, h.quant_bits, hessians))
    label = f"int{h.quant_bits}+zstd"
    if run.master:
        artifact_path(h).write_bytes(blob)
        total = len(blob) + code
        run.log(f"Serialized model {label}: {len(blob)} bytes (code:{code} level:22)")
        run.log(f"Total submission size {label}: {total} bytes")
        verdict = "under" if total <= quantize.ARTIFACT_CAP_BYTES else "OVER"
        run.log(f"artifact_cap: {total} bytes {verdict} the {quantize.ARTIFACT_CAP_BYTES} byte cap")
    if run.distributed:
        dist.barrier()


def load_artifact(h: Hyperparameters, model: GPT) -> None:
    obj = quantize.decompress(artifact_path(h).read_bytes())
    model.load_state_dict(quantize.dequantize_state_dict(obj), strict=True)


# ---------------------------------------------------------------- final evals
RESULT_LABELS = {"standard": "final_int8_zlib_roundtrip", "sliding": "final_sliding_window",
                 "ttt-sgd": "legal_ttt", "ttt-lora": "lora_ttt"}


def run_final_evals(h: Hyperparameters, run: Run, model: GPT, val_tokens: Tensor, luts) -> dict:
    """Each mode starts from the dequantized artifact (TTT changes the weights)."""
    results = {}
    for mode in h.eval_modes():
        load_artifact(h, model)
        model.to(run.device)
        run.sync()
        t0 = time.perf_counter()
        args = (model, val_tokens, luts, run.device)
        ranks = dict(rank=run.rank, world_size=run.world_size)
        if mode == "standard":
            loss, bpb = eval_standard(*args, h.train_seq_len, eval_batch_seqs(h), **ranks)
        elif mode == "sliding":
            transform = None
            if h.broken == "improper-distribution":
                transform = broken.ngram_cache_transform(val_tokens, h.vocab_size, h.ngram_mix)
            loss, bpb = eval_sliding(*args, h.train_seq_len, h.eval_stride, eval_batch_seqs(h),
                                     nll_transform=transform, **ranks)
        elif mode == "ttt-sgd":
            ttt = {"train-before-score": broken.ttt_sgd_train_before_score,
                   "train-before-score-multi-epoch": broken.ttt_sgd_multi_epoch,
                   "rescored-tokens": broken.ttt_sgd_rescored}.get(h.broken, eval_ttt_sgd)
            loss, bpb = ttt(*args, h, log=run.log, **ranks)
        else:
            ttt = broken.ttt_lora_train_before_score if h.broken == "train-before-score" else eval_ttt_lora
            loss, bpb = ttt(*args, h, log=run.log, **ranks)
        run.sync()
        label = RESULT_LABELS[mode]
        extra = f" stride:{h.eval_stride}" if mode == "sliding" else ""
        run.log(f"{label} val_loss:{loss:.4f} val_bpb:{bpb:.4f}{extra} "
                f"eval_time:{1000.0 * (time.perf_counter() - t0):.0f}ms")
        run.log(f"{label}_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}")
        results[mode] = {"val_loss": loss, "val_bpb": bpb}
    return results


def load_eval_data(h: Hyperparameters, run: Run):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=h.tokenizer_path)
    if int(sp.vocab_size()) != h.vocab_size:
        raise ValueError(f"VOCAB_SIZE={h.vocab_size} does not match the tokenizer's {int(sp.vocab_size())}")
    val_tokens = load_val_tokens(os.path.join(h.data_path, VAL_SHARDS))
    luts = build_byte_luts(sp, h.vocab_size)
    # Cross-check the tables against the decoded text: every eval scores targets 1..N-1.
    lut_bytes = int(target_bytes(val_tokens, torch.arange(1, val_tokens.numel()), luts).sum().item())
    utf8 = decoded_bytes(sp, val_tokens)
    run.log(f"val_tokens:{val_tokens.numel()} val_bytes_lut:{lut_bytes} val_bytes_utf8:{utf8} "
            f"{'match' if lut_bytes == utf8 else 'MISMATCH'}")
    return val_tokens, luts


def main(h: Hyperparameters | None = None, *, evaluate_only: bool = False) -> dict:
    h = h or from_env()
    run = Run(h)
    try:
        set_seed(h.seed)
        Path(h.out_dir).mkdir(parents=True, exist_ok=True)
        run.log(f"Running Python {sys.version.split()[0]}, PyTorch {torch.__version__}, device {run.device}, "
                f"world_size:{run.world_size}")
        run.log(f"preset:{h.preset} broken:{h.broken or 'none'} eval_modes:{','.join(h.eval_modes())}")
        val_tokens, luts = load_eval_data(h, run)
        model = GPT(model_config(h)).to(run.device)
        run.log(f"model_params:{sum(p.numel() for p in model.parameters())} layers:{h.num_layers} "
                f"dim:{h.model_dim} heads:{h.num_heads} kv_heads:{h.num_kv_heads}")
        if not evaluate_only:
            run.log(f"train_batch_tokens:{h.train_batch_tokens} train_seq_len:{h.train_seq_len} "
                    f"iterations:{h.iterations} warmup_steps:{h.warmup_steps} "
                    f"max_wallclock_seconds:{h.max_wallclock_seconds:.3f} seed:{h.seed}")
            train(h, run, model, val_tokens, luts)
            if h.broken == "val-data-in-training":
                broken.train_on_val(model, val_tokens, h, run.device, run.rank, run.world_size, log=run.log)
            write_artifact(h, run, model, val_tokens)
            if run.master:
                (Path(h.out_dir) / "run_config.json").write_text(json.dumps(asdict(h), indent=1))
        return run_final_evals(h, run, model, val_tokens, luts)
    finally:
        run.close()
