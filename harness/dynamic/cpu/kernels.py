"""Torch emulations of the Triton kernels that contest scripts launch, by kernel name.

On the CPU there is no Triton backend, and Triton's interpreter computes the TMA-descriptor
kernels of the April records wrongly (NaN losses, measured). The triton stub of shims.py calls
the emulation registered under a launched kernel's name instead; each one computes what the
kernel's source computes, writing into the same output tensors. Running them as torch ops also
keeps provenance visible to the tracer. A kernel with no emulation still fails clearly.

Kernels emulated (the records that use them):
- linear_leaky_relu_square_kernel: fused MLP up-projection + LeakyReLU(0.5)^2 and its backward
  (11 records from 2026-04-10 on);
- _softcapped_ce_fwd_kernel / _softcapped_ce_bwd_kernel: cross-entropy on 2c*sigmoid(2x/c) logits
  (the shifted tanh softcap) and its gradient (the FusedCE records);
- _fused_leaky_relu_sq_tma_kernel: the same MLP activation, forward only, with its gradient
  factor stored beside it (PR #1479).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

EMULATIONS: dict[str, Callable[..., None]] = {}


def emulation(name: str):
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        EMULATIONS[name] = fn
        return fn
    return register


def launch(kernel_fn: Callable, name: str, args: tuple, kwargs: dict) -> bool:
    """Run the emulation of `name` with the launch's arguments bound to the kernel's own
    signature (launch-only options such as num_warps are dropped). False when none exists."""
    emulate = EMULATIONS.get(name)
    if emulate is None:
        return False
    params = inspect.signature(kernel_fn).parameters
    bound = dict(zip(params, args))
    bound.update({k: v for k, v in kwargs.items() if k in params})
    with torch.no_grad():
        emulate(**bound)
    return True


def _tensor(x: Any) -> torch.Tensor:
    """A kernel argument as a tensor: a tensor descriptor's base, or the tensor itself."""
    return getattr(x, "base", x)


@emulation("linear_leaky_relu_square_kernel")
def _linear_leaky_relu_square(a_desc, b_desc, c_desc, aux_desc, FORWARD, **_: Any) -> None:
    a, b, c, aux = (_tensor(d) for d in (a_desc, b_desc, c_desc, aux_desc))
    # fp32 accumulation of a @ b.T, rounded to the output dtype as the kernel stores it
    acc = (a.float() @ b.float().T).to(c.dtype)
    if FORWARD:
        c.copy_(acc)  # the pre-activation
        post = torch.where(acc > 0, acc, 0.5 * acc)
        aux.copy_(post * post)
    else:  # aux holds the pre-activation; c gets the gradient through LeakyReLU(0.5)^2
        c.copy_(acc * torch.where(aux > 0, 2.0 * aux, 0.5 * aux))


@emulation("_fused_leaky_relu_sq_tma_kernel")
def _fused_leaky_relu_sq_tma(a_desc, b_desc, c_desc, aux_desc, **_: Any) -> None:
    """Forward only: c gets the gradient factor of LeakyReLU(0.5)^2 at h = a @ b.T, aux the
    activation itself (0.5 * factor * h). The kernel writes each tile in two halves; together
    they are the plain row-major layout."""
    a, b, c, aux = (_tensor(d) for d in (a_desc, b_desc, c_desc, aux_desc))
    h = (a.float() @ b.float().T).to(c.dtype)
    factor = torch.where(h > 0, 2.0 * h, 0.5 * h)
    c.copy_(factor)
    aux.copy_(0.5 * factor * h)


@emulation("_softcapped_ce_fwd_kernel")
def _softcapped_ce_fwd(logits_ptr, losses_ptr, lse_ptr, targets_ptr, softcap, **_: Any) -> None:
    x = logits_ptr.float()
    z = 2.0 * softcap * torch.sigmoid(x * (2.0 / softcap))
    lse = torch.logsumexp(z, dim=-1)
    losses_ptr.copy_(lse - z.gather(1, targets_ptr.long().unsqueeze(1)).squeeze(1))
    lse_ptr.copy_(lse)


@emulation("_softcapped_ce_bwd_kernel")
def _softcapped_ce_bwd(grad_logits_ptr, grad_losses_ptr, lse_ptr, logits_ptr, targets_ptr, softcap,
                       **_: Any) -> None:
    a, inv_c = 2.0 * softcap, 2.0 / softcap
    s = torch.sigmoid(logits_ptr.float() * inv_c)
    probs = torch.exp(a * s - lse_ptr.float().unsqueeze(1))
    onehot = torch.zeros_like(probs).scatter_(1, targets_ptr.long().unsqueeze(1), 1.0)
    grad_z = grad_losses_ptr.float().unsqueeze(1) * (probs - onehot)
    grad_logits_ptr.copy_(grad_z * (a * inv_c * s * (1.0 - s)))
