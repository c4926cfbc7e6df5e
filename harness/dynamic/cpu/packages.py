"""The third-party modules contest scripts import, and how a toy run on a CPU gets each.

Counted over the challenge's PR heads (2026-12: the .py files each PR adds, packed ones unpacked;
PRs importing the module). A run that fails on a missing import says which one and what this list
knows about it; nothing a submission names is ever installed at audit time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

INSTALLED, EMULATED, UNAVAILABLE = "installed", "emulated", "unavailable"


@dataclass(frozen=True)
class Package:
    module: str  # the top-level import name
    prs: int  # PR heads importing it
    how: str  # INSTALLED (install.sh / the runtime extra), EMULATED (a shim), UNAVAILABLE
    note: str


VETTED: tuple[Package, ...] = (
    Package("numpy", 1937, INSTALLED, "a dependency of golf-audit"),
    Package("sentencepiece", 1901, INSTALLED, "a dependency of golf-audit"),
    Package("zstandard", 950, INSTALLED, "a dependency of golf-audit"),
    Package("flash_attn_interface", 971, EMULATED, "over scaled_dot_product_attention (cpu/shims.py)"),
    Package("flash_attn", 260, EMULATED, "over scaled_dot_product_attention (cpu/shims.py)"),
    Package("brotli", 452, INSTALLED, "runtime extra"),
    Package("triton", 227, EMULATED, "a stub; the records' kernels run as torch emulations (cpu/kernels.py)"),
    Package("python_minifier", 9, INSTALLED, "runtime extra (python-minifier)"),
    Package("einops", 15, INSTALLED, "runtime extra"),
    Package("tqdm", 12, INSTALLED, "runtime extra"),
    Package("lz4", 6, INSTALLED, "runtime extra"),
    Package("mlx", 85, UNAVAILABLE, "Apple silicon only: the MLX scripts cannot run on this machine"),
    Package("fla", 45, EMULATED, "the delta-rule layers and ops in torch (cpu/fla.py); the rest is Triton-only"),
    Package("mamba_ssm", 37, EMULATED, "the Mamba-3 (SISO) and Mamba-2 modules and scans, Mamba-1's "
            "selective scan, gated RMSNorm, in torch "
            "(cpu/mamba.py); its other kernels are CUDA-only"),
    Package("causal_conv1d", 25, EMULATED, "causal_conv1d_fn / causal_conv1d_update in torch (cpu/mamba.py)"),
    Package("liger_kernel", 16, UNAVAILABLE, "Triton GPU kernels"),
    Package("cutlass_evt_fusion", 17, UNAVAILABLE, "a CUDA extension the PR builds itself"),
    Package("huggingface_hub", 40, UNAVAILABLE, "downloads from the hub: no network at audit time"),
    Package("modal", 30, UNAVAILABLE, "a cloud launcher, not part of the eval"),
    Package("wandb", 13, UNAVAILABLE, "experiment logging; needs the network"),
)

_BY_MODULE = {p.module: p for p in VETTED}
_MISSING = re.compile(r"No module named '([\w.]+)'|cannot import name '(\w+)' from '([\w.]+)'")


def explain_missing(message: str) -> str | None:
    """For an import error message, what the vetted list says about the module, else None."""
    m = _MISSING.search(message)
    if not m:
        return None
    name = m.group(1) or f"{m.group(3)}.{m.group(2)}"
    top = name.split(".")[0]
    p = _BY_MODULE.get(top)
    if p is None:
        return f"`{top}` is not in golf-audit's vetted package list (harness/dynamic/cpu/packages.py)"
    if p.how == UNAVAILABLE:
        return f"`{top}` cannot run here: {p.note} ({p.prs} PRs import it)"
    if p.how == EMULATED and name != top:
        return f"`{name}` is not emulated: golf-audit covers only part of `{top}`: {p.note}"
    return f"`{top}` should be {p.how} ({p.note}): reinstall with `bash install.sh`"
