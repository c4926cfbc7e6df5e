"""The artifact: weight matrices quantized per row to int8 (or int6 values stored in int8),
everything else kept in float32, serialized with torch.save and compressed with zstd level 22.

Artifact bytes = code bytes (the files that define and run the model, CODE_FILES) + compressed
model bytes, checked against the challenge's decimal cap of 16,000,000 bytes.

Calibration (optional): with per-input-channel statistics H = X^T X of each linear layer's
inputs, each row's clipping range is chosen to minimise the layer's output error on those
inputs. Legal calibration data is training tokens; the broken variant
`val-data-in-training-calibration` passes validation tokens instead.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
import zstandard
from torch import Tensor, nn

ARTIFACT_CAP_BYTES = 16_000_000
PACKAGE_DIR = Path(__file__).resolve().parent
# The files a submission of this model would ship (toy_data, the CLI and the harness glue are
# tools around it, not part of it).
CODE_FILES = ("train_gpt.py", "__init__.py", "hyperparams.py", "model.py", "data.py", "train.py",
              "quantize.py", "eval.py", "ttt.py", "broken.py")
CLIP_QUANTILE = 0.9999984  # the baseline's per-row clip (99.99984th percentile of |w|)
CLIP_CANDIDATES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6)


def code_bytes(files=CODE_FILES) -> int:
    return sum((PACKAGE_DIR / name).stat().st_size for name in files)


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1  # 127 for int8, 31 for int6


def _quantize_rows(w: Tensor, clip: Tensor, qmax: int) -> tuple[Tensor, Tensor]:
    # Round with the fp16 scale that is stored, so dequantization undoes exactly this rounding.
    scale = (clip / qmax).clamp_min(1e-6).to(torch.float16)
    q = torch.clamp(torch.round(w / scale.float()[:, None]), -qmax, qmax).to(torch.int8)
    return q, scale


def _dequantize_rows(q: Tensor, scale: Tensor) -> Tensor:
    return q.float() * scale.float()[:, None]


def quantize_matrix(w: Tensor, bits: int = 8, hessian: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(int8 values, fp16 per-row scales). Without statistics: the baseline's percentile clip.
    With H: per row, the clip (a fraction of the row's max |w|) with the least output error
    sum over calibration inputs of ((w_q - w) . x)^2 = (w_q - w) H (w_q - w)^T."""
    w = w.detach().float().cpu()
    qmax = _qmax(bits)
    if hessian is None:
        clip = torch.quantile(w.abs(), CLIP_QUANTILE, dim=1)
        return _quantize_rows(w, clip, qmax)
    row_max = w.abs().amax(dim=1)
    best_q, best_s, best_err = None, None, None
    for frac in CLIP_CANDIDATES:
        q, s = _quantize_rows(w, row_max * frac, qmax)
        d = _dequantize_rows(q, s) - w
        err = ((d @ hessian) * d).sum(dim=1)
        if best_err is None:
            best_q, best_s, best_err = q, s, err
        else:
            better = err < best_err
            best_q = torch.where(better[:, None], q, best_q)
            best_s = torch.where(better, s, best_s)
            best_err = torch.minimum(err, best_err)
    return best_q, best_s


def quantize_state_dict(state: dict[str, Tensor], bits: int = 8,
                        hessians: dict[str, Tensor] | None = None) -> dict:
    quantized, scales, kept = {}, {}, {}
    for name, t in state.items():
        t = t.detach().cpu()
        if t.is_floating_point() and t.ndim == 2:
            h = (hessians or {}).get(name)
            quantized[name], scales[name] = quantize_matrix(t, bits, h)
        else:
            kept[name] = t.float() if t.is_floating_point() else t
    return {"format": f"int{bits}_per_row_v1", "quantized": quantized, "scales": scales, "kept": kept}


def dequantize_state_dict(obj: dict) -> dict[str, Tensor]:
    out = {name: _dequantize_rows(q, obj["scales"][name]) for name, q in obj["quantized"].items()}
    out.update(obj["kept"])
    return out


def compress(obj: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return zstandard.ZstdCompressor(level=22).compress(buf.getvalue())


def decompress(blob: bytes) -> dict:
    raw = zstandard.ZstdDecompressor().decompress(blob)
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def raw_bytes(state: dict[str, Tensor]) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return len(buf.getvalue())


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """H = X^T X of the inputs of every nn.Linear, keyed by its weight's state-dict name, from
    forward passes over `batches` of (x, y)."""
    hessians: dict[str, Tensor] = {}
    hooks = []
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            key = f"{mod_name}.weight"

            def hook(_module, inputs, _output, key=key):
                x = inputs[0].detach().float().reshape(-1, inputs[0].size(-1)).cpu()
                hessians[key] = hessians.get(key, 0) + x.T @ x

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            model(x, y)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return hessians
