"""Tracer overhead on a toy eval: wall time traced / untraced, printed as `ratio: X`.

    OMP_NUM_THREADS=1 python benchmarks/trace_overhead.py [--tokens 16384] [--repeats 3] [--ttt]
        [--inner 3] [--no-malloc-pin] [--dynamo-guard]

The eval is a sliding-window score of a random validation stream with the reference model at
its toy preset (reference_model/; a small GPT defined here when it is missing). Each repeat
runs the same eval untraced and traced, --inner times each, interleaved, and keeps each side's
fastest run: on a shared 2-core machine the same untraced eval varies by up to 2x from run to
run, and that noise only ever adds time. The process runs with glibc's allocator thresholds
pinned (see _MALLOC_ENV), which removes a bimodal untraced time. The reported ratio is the median over repeats (with
--inner 1, one run of each: the old measurement). --ttt adds a score-first TTT loop (score
chunk, SGD on it) and prints `ratio_ttt: X` too: it measures the backward/optimizer path.

The tracer runs as in a toy run, where torch.compile is shimmed to eager (`eager_only`: no
per-op dynamo guard, see harness/dynamic/trace/tracer/mode.py). --dynamo-guard measures the
mode with the guard, as it runs wherever a real torch.compile may run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.dynamic.trace.tracer import Tracer, TracerConfig  # noqa: E402


def toy_model(vocab: int) -> tuple[nn.Module, int, int, int]:
    """(model returning logits, seq_len, stride, batch) of the reference toy preset."""
    try:
        from reference_model.hyperparams import PRESETS, Hyperparameters
        from reference_model.model import GPT
        from reference_model.train import model_config
    except ImportError:
        return _SmallGPT(vocab), 128, 64, 32
    h = Hyperparameters(preset="toy", **PRESETS["toy"])
    h.vocab_size = vocab
    model = GPT(model_config(h))

    class Logits(nn.Module):
        def __init__(self, gpt):
            super().__init__()
            self.gpt = gpt

        def forward(self, x):
            return self.gpt.logits(x)

    return Logits(model), h.train_seq_len, h.eval_stride, h.eval_batch_seqs


class _SmallGPT(nn.Module):
    def __init__(self, vocab: int, dim: int = 64, layers: int = 2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(dim, 4, 2 * dim, batch_first=True, dropout=0.0)
                                    for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, x):
        h = self.emb(x)
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        for b in self.blocks:
            h = b(h, src_mask=mask, is_causal=True)
        return self.head(h)


def sliding_eval(model, tokens: torch.Tensor, seq_len: int, stride: int, batch: int) -> float:
    total = tokens.numel() - 1
    starts = list(range(0, total - seq_len + 1, stride))
    loss_sum = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for bi in range(0, len(starts), batch):
            ws = starts[bi: bi + batch]
            x = torch.stack([tokens[s: s + seq_len] for s in ws])
            y = torch.stack([tokens[s + 1: s + seq_len + 1] for s in ws])
            nll = F.cross_entropy(model(x).reshape(-1, model_vocab(model)).float(), y.reshape(-1),
                                  reduction="none").reshape(len(ws), seq_len)
            for i, s in enumerate(ws):
                first = 0 if s == 0 else seq_len - stride
                loss_sum += nll[i, first:].double().sum()
    return loss_sum.item()


def ttt_eval(model, tokens: torch.Tensor, seq_len: int, chunk: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_sum = torch.zeros((), dtype=torch.float64)
    n_chunks = (tokens.numel() - 1) // chunk
    for c in range(n_chunks):
        local = tokens[c * chunk: (c + 1) * chunk + 1]
        x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
        with torch.no_grad():
            loss_sum += F.cross_entropy(model(x).reshape(-1, model_vocab(model)).float(), y.reshape(-1),
                                        reduction="sum")
        if c < n_chunks - 1:
            loss = F.cross_entropy(model(x).reshape(-1, model_vocab(model)).float(), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return loss_sum.item()


_VOCAB = 1024


def model_vocab(model) -> int:
    return _VOCAB


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# glibc's allocator moves its mmap threshold as large blocks are freed: the same untraced eval
# then runs in either of two speeds (0.21 s or 0.29 s here), and which one depends on what ran
# before it. Fixed thresholds keep every run of both sides in one allocator regime (glibc reads
# them at process start, hence the re-exec).
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def main() -> int:
    if any(k not in os.environ for k in _MALLOC_ENV) and "--no-malloc-pin" not in sys.argv:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC_ENV})
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-malloc-pin", action="store_true", help="keep glibc's adaptive allocator thresholds")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inner", type=int, default=3, help="runs of each side per repeat; the fastest counts")
    ap.add_argument("--ttt", action="store_true")
    ap.add_argument("--dynamo-guard", action="store_true", help="keep torch's dynamo guard on the mode")
    args = ap.parse_args()
    cfg = lambda: TracerConfig(val_stream=val, eager_only=not args.dynamo_guard)  # noqa: E731
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    val = np.random.default_rng(0).integers(0, _VOCAB, size=args.tokens + 1).astype(np.uint16)
    model, seq_len, stride, batch = toy_model(_VOCAB)

    def load():
        return torch.from_numpy(val.copy()).to(torch.int64)

    def run_eval():
        sliding_eval(model, load(), seq_len, stride, batch)

    def repeat(fn) -> tuple[float, float]:
        """(untraced, traced) seconds: the fastest of --inner interleaved runs of each, every
        traced run under a tracer of its own (as in an audit)."""
        base, traced = [], []
        for _ in range(args.inner):
            base.append(timed(fn))
            with Tracer(cfg()) as tr:
                traced.append(timed(fn))
            assert any(e.kind == "scored" for e in tr.events), "the tracer recorded no scores"
        return min(base), min(traced)

    run_eval()  # warm-up (allocator, kernels)
    ratios, base_s, traced_s = [], [], []
    for _ in range(args.repeats):
        b, t = repeat(run_eval)
        base_s.append(b)
        traced_s.append(t)
        ratios.append(t / b)
    print(f"eval: untraced {statistics.median(base_s):.3f}s traced {statistics.median(traced_s):.3f}s "
          f"({args.tokens} tokens, seq {seq_len}, stride {stride}, batch {batch})")
    print(f"mode: {'with' if args.dynamo_guard else 'without'} the dynamo guard")
    print(f"ratio: {statistics.median(ratios):.3f}")
    if args.ttt:
        chunk = seq_len * 8
        tr_ratios = []
        for _ in range(args.repeats):
            b, t = repeat(lambda: ttt_eval(model, load(), seq_len, chunk))
            tr_ratios.append(t / b)
        print(f"ratio_ttt: {statistics.median(tr_ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
