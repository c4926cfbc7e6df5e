"""A torch emulation of the parts of `mamba_ssm` (and `causal_conv1d`) that contest scripts import,
for toy runs on a CPU.

Both packages are CUDA-only (Triton and nvcc kernels), so a script that imports them cannot start
on a CPU. These emulations compute what the kernels define, written from their recurrences by
golf-audit (no code from the packages): the Mamba-3 SISO scan (`mamba3_siso_combined`: trapezoidal
update, data-dependent rotary angles, B/C biases) and its module `Mamba3`; the Mamba-2 SSD scan
(`mamba_chunk_scan_combined`) and its module `Mamba2`; Mamba-1's `selective_scan_fn`; the gated
RMSNorm; `causal_conv1d_fn` / `causal_conv1d_update`. Each is exactly causal: the output at
position t is computed from inputs at positions <= t only (no term is added and then cancelled),
so the audit's causality probes judge the submission, not our rounding. What is not emulated
(MIMO, decode caches, varlen `seq_idx`, the `Mamba` module) fails with an error that names it.
Installed into `sys.modules` by `install()` from the shims, inside the sandbox only.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.dynamic.cpu.fake_packages import NotEmulated, register, used  # noqa: F401 - NotEmulated: the error

EMULATED = "Mamba-3 SISO (modules.mamba3.Mamba3, ops.triton.mamba3.mamba3_siso_combined), " \
           "Mamba-2 (modules.mamba2.Mamba2, ops.triton.ssd_combined.mamba_chunk_scan_combined), " \
           "Mamba-1 selective_scan_fn, gated RMSNorm; causal_conv1d_fn / causal_conv1d_update"



# ---------------------------------------------------------------- the scan
def _scan(q, k, v, adt, gamma, carry, state, chunk: int):
    """The linear recurrence behind both scans, chunk by chunk, in float32.

    q, k: (b, l, h, n); v: (b, l, h, p); adt, gamma, carry: (b, h, l).
    h_t = exp(adt_t) * (h_{t-1} + carry_t * v_{t-1} k_{t-1}^T) + gamma_t * v_t k_t^T and y_t = h_t q_t,
    with carry = 0 for Mamba-2 and (1 - trap) * dt for Mamba-3's trapezoid.
    state: (h0 (b, h, p, n), k_prev (b, h, n), v_prev (b, h, p)). Returns y (b, l, h, p) and the
    state after the last position.
    """
    h0, k_prev, v_prev = state
    ys = []
    length = q.shape[1]
    for c0 in range(0, length, chunk):
        c1 = min(c0 + chunk, length)
        qc, kc, vc = q[:, c0:c1], k[:, c0:c1], v[:, c0:c1]
        a, g, cr = adt[..., c0:c1], gamma[..., c0:c1], carry[..., c0:c1]
        # the previous position's value enters at this chunk's first step (carry), then decays
        h_eff = h0 + cr[..., 0, None, None] * torch.einsum("bhp,bhn->bhpn", v_prev, k_prev)
        cum = torch.cumsum(a, dim=-1)  # (b, h, L): log-decay from the chunk start through t
        # weight of source s in h_t, s < t: its gamma plus the carry it gets at s+1 (s+1 <= t: causal)
        scale = g + F.pad(cr[..., 1:], (0, 1))
        diff = cum[..., :, None] - cum[..., None, :]  # (b, h, t, s)
        n = c1 - c0
        strict = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)
        decay = torch.exp(torch.where(strict, diff, torch.full_like(diff, -math.inf)))
        w = decay * scale[..., None, :] + torch.diag_embed(g)  # the diagonal: gamma_t only
        qk = torch.einsum("bthn,bshn->bhts", qc, kc)
        y = torch.einsum("bhts,bshp->bthp", qk * w, vc)
        y = y + torch.exp(cum).transpose(1, 2)[..., None] * torch.einsum("bhpn,bthn->bthp", h_eff, qc)
        ys.append(y)
        last = torch.exp(cum[..., -1:] - cum)  # decay from s to the chunk's last position
        coef = last * torch.cat([scale[..., :-1], g[..., -1:]], dim=-1)  # the last s gets its carry later
        h0 = torch.exp(cum[..., -1])[..., None, None] * h_eff + torch.einsum("bhs,bshp,bshn->bhpn", coef, vc, kc)
        k_prev, v_prev = kc[:, -1], vc[:, -1]
    return torch.cat(ys, dim=1), (h0, k_prev, v_prev)


def _chunk(chunk_size) -> int:
    """The block the scan works in. The result does not depend on it (tests: 1 to 64); the
    quadratic block's memory grows with its square, so a script's chunk_size=256 is capped at 64
    (measured: PR #2070's toy run asked for 64 MiB blocks and ran out of memory)."""
    return max(1, min(int(chunk_size), 64))


def _heads(x: torch.Tensor, nheads: int) -> torch.Tensor:
    """(b, l, g, n) -> (b, l, h, n): each of the g groups serves h/g consecutive heads."""
    return x if x.shape[2] == nheads else x.repeat_interleave(nheads // x.shape[2], dim=2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[2i], x[2i+1]) for i < cos.shape[-1]; the other pairs stay as they are."""
    pairs = x.unflatten(-1, (-1, 2))
    a = cos.shape[-1]
    x0, x1 = pairs[..., :a, 0], pairs[..., :a, 1]
    turned = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return torch.cat([turned, pairs[..., a:, :]], dim=-2).flatten(-2)


def mamba3_siso_combined(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D=None, Z=None, chunk_size=64,
                         Input_States=None, return_final_states=False, cu_seqlens=None, **_: Any):
    """Mamba-3 SISO: Q, K (b, l, g, n); V, Z (b, l, h, p); ADT, DT, Trap (b, h, l); Angles (b, l, h, a);
    Q_bias, K_bias (h, n); D (h,). Input_States / final states: (angle (b, h, a), ssm (b, h, p, n),
    k (b, h, n), v (b, h, p)). Returns y, or (y, angle, ssm, k, v) with return_final_states."""
    if cu_seqlens is not None:
        return _per_sequence(mamba3_siso_combined, cu_seqlens, Input_States, return_final_states,
                             dict(Q=Q, K=K, V=V, Angles=Angles, Z=Z), dict(ADT=ADT, DT=DT, Trap=Trap),
                             dict(Q_bias=Q_bias, K_bias=K_bias, D=D, chunk_size=chunk_size))
    used("mamba_ssm mamba3_siso_combined -> torch emulation")
    b, _, h, p = V.shape
    n, a = Q.shape[-1], Angles.shape[-1]
    f32 = torch.float32
    dt, adt, lam = DT.to(f32), ADT.to(f32), torch.sigmoid(Trap.to(f32))
    if Input_States is None:
        theta0 = V.new_zeros(b, h, a, dtype=f32)
        state = (V.new_zeros(b, h, p, n, dtype=f32), V.new_zeros(b, h, n, dtype=f32), V.new_zeros(b, h, p, dtype=f32))
    else:
        theta0, ssm, k_prev, v_prev = Input_States
        state = (ssm.to(f32), k_prev.reshape(b, h, n).to(f32), v_prev.to(f32))
        theta0 = theta0.to(f32)
    # the rotary angle accumulates tanh(angle) * pi * dt, kept in [0, 2 pi)
    theta = torch.cumsum(torch.tanh(Angles.to(f32)) * math.pi * dt.transpose(1, 2)[..., None], dim=1)
    theta = theta + theta0[:, None]
    theta = theta - 2 * math.pi * torch.floor(theta / (2 * math.pi))
    cos, sin = torch.cos(theta), torch.sin(theta)
    q = _rotate(_heads(Q.to(f32), h) + Q_bias.to(f32), cos, sin)
    k = _rotate(_heads(K.to(f32), h) + K_bias.to(f32), cos, sin)
    v = V.to(f32)
    y, (ssm, k_last, v_last) = _scan(q, k, v, adt, lam * dt, (1 - lam) * dt, state, _chunk(chunk_size))
    if D is not None:
        y = y + D.to(f32)[:, None] * v
    if Z is not None:
        y = y * F.silu(Z.to(f32))
    y = y.to(V.dtype)
    if return_final_states:
        return y, theta[:, -1], ssm, k_last, v_last
    return y


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False, return_varlen_states=False, **_: Any):
    """Mamba-2 SSD: x, z (b, l, h, p); dt (b, l, h); A (h,); B, C (b, l, g, n); D (h,) or (h, p).
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D x_t, gated by silu(z)."""
    if seq_idx is not None or cu_seqlens is not None or return_varlen_states:
        raise NotEmulated("mamba_chunk_scan_combined with seq_idx / cu_seqlens is not emulated by golf-audit")
    used("mamba_ssm mamba_chunk_scan_combined -> torch emulation")
    b, _, h, p = x.shape
    f32 = torch.float32
    d = dt.to(f32) + (dt_bias.to(f32) if dt_bias is not None else 0.0)
    if dt_softplus:
        d = F.softplus(d)
    d = d.clamp(min=dt_limit[0], max=dt_limit[1]).transpose(1, 2)  # (b, h, l)
    adt = d * A.to(f32)[None, :, None]
    n = B.shape[-1]
    h0 = initial_states.to(f32) if initial_states is not None else x.new_zeros(b, h, p, n, dtype=f32)
    state = (h0, x.new_zeros(b, h, n, dtype=f32), x.new_zeros(b, h, p, dtype=f32))
    y, (last, _, _) = _scan(_heads(C.to(f32), h), _heads(B.to(f32), h), x.to(f32), adt, d, torch.zeros_like(d),
                            state, _chunk(chunk_size))
    if D is not None:
        Df = D.to(f32)
        y = y + (Df[:, None] if Df.dim() == 1 else Df) * x.to(f32)
    if z is not None:
        y = y * F.silu(z.to(f32))
    y = y.to(x.dtype)
    return (y, last) if return_final_states else y


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, **_: Any):
    """Mamba-1's selective scan: u, delta, z (b, d, l); A (d, n); B, C (b, n, l) or (b, g, n, l);
    h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t per channel, y_t = C_t . h_t + D u_t, gated by silu(z).
    One position at a time: the decay differs per (channel, state) pair, so a chunked block would
    be (b, d, n, T, T); at toy lengths the loop is the cheaper honest form."""
    used("mamba_ssm selective_scan_fn -> torch emulation")
    if A.is_complex():
        raise NotEmulated("selective_scan_fn with a complex A is not emulated by golf-audit")
    f32 = torch.float32
    b, d, length = u.shape
    dt = delta.to(f32) + (delta_bias.to(f32)[:, None] if delta_bias is not None else 0.0)
    if delta_softplus:
        dt = F.softplus(dt)

    def per_channel(m):  # (b, n, l) or (b, g, n, l) -> (b, d, n, l)
        m = m.to(f32)
        if m.dim() == 3:
            return m[:, None]
        return m.repeat_interleave(d // m.shape[1], dim=1)

    Bm, Cm, Af, uf = per_channel(B), per_channel(C), A.to(f32), u.to(f32)
    h = uf.new_zeros(b, d, A.shape[-1])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * Af) * h + (dt[:, :, t] * uf[:, :, t])[..., None] * Bm[..., t]
        ys.append((h * Cm[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(f32)[:, None] * uf
    if z is not None:
        y = y * F.silu(z.to(f32))
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None, **_: Any):
    """Depthwise causal conv: x (b, d, l), weight (d, w); output t reads inputs t-w+1..t (zeros, or
    `initial_states` (b, d, w-1), before the start); optional SiLU."""
    used("causal_conv1d causal_conv1d_fn -> torch emulation")
    if seq_idx is not None:
        raise NotEmulated("causal_conv1d_fn with seq_idx is not emulated by golf-audit")
    w = weight.shape[-1]
    before = initial_states if initial_states is not None else x.new_zeros(x.shape[0], x.shape[1], w - 1)
    xp = torch.cat([before.to(x.dtype), x], dim=-1)
    y = F.conv1d(xp, weight.to(x.dtype).unsqueeze(1), bias.to(x.dtype) if bias is not None else None,
                 groups=x.shape[1])
    if activation in ("silu", "swish"):
        y = F.silu(y)
    if not return_final_states:
        return y
    last = xp[..., -(w - 1):] if w > 1 else xp[..., :0]
    if final_states_out is not None:
        final_states_out.copy_(last)
        last = final_states_out
    return y, last


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, **_: Any):
    """One decode step (x (b, d) or (b, d, 1)): conv_state (b, d, w) shifts left by one in place,
    takes x last, and the output is its dot product with the weights."""
    used("causal_conv1d causal_conv1d_update -> torch emulation")
    squeeze = x.dim() == 2
    xs = x if squeeze else x[..., -1]
    conv_state.copy_(torch.cat([conv_state[..., 1:], xs.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
    y = (conv_state.to(weight.dtype) * weight).sum(-1)
    if bias is not None:
        y = y + bias
    if activation in ("silu", "swish"):
        y = F.silu(y)
    y = y.to(x.dtype)
    return y if squeeze else y.unsqueeze(-1)


def _per_sequence(fn, cu_seqlens, states, return_final_states, along_l, along_last, fixed):
    """Varlen (batch 1, sequences packed along l): each sequence scanned from its own state."""
    bounds = [int(x) for x in cu_seqlens.tolist()]
    outs, finals = [], []
    for i, (s, e) in enumerate(zip(bounds, bounds[1:])):
        part = {k: (t[:, s:e] if t is not None else None) for k, t in along_l.items()}
        part.update({k: t[..., s:e] for k, t in along_last.items()})
        init = tuple(t[i:i + 1] for t in states) if states is not None else None
        r = fn(**part, **fixed, Input_States=init, return_final_states=True)
        outs.append(r[0])
        finals.append(r[1:])
    y = torch.cat(outs, dim=1)
    if not return_final_states:
        return y
    return (y, *(torch.cat(parts, dim=0) for parts in zip(*finals)))


# ---------------------------------------------------------------- modules
def _dt_bias(nheads: int, dt_min: float, dt_max: float, floor: float, device) -> nn.Parameter:
    """softplus^-1 of a log-uniform dt in [dt_min, dt_max] per head (both mixers start this way)."""
    dt = torch.exp(torch.rand(nheads, device=device) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=floor)
    bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
    bias._no_weight_decay = True
    return bias


class RMSNormGated(nn.Module):
    """mamba_ssm's RMSNorm with an optional gate z: norm(x) * w * silu(z), or norm(x * silu(z)) * w
    when norm_before_gate is False; normalised per group of `group_size` features."""

    def __init__(self, hidden_size, eps=1e-5, norm_before_gate=True, group_size=None, device=None, dtype=None,
                 **_: Any):
        super().__init__()
        self.eps, self.norm_before_gate, self.group_size = eps, norm_before_gate, group_size
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x, z=None):
        dtype = x.dtype
        x = x.float()
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z.float())
        groups = x.unflatten(-1, (-1, self.group_size or x.shape[-1]))
        x = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        if self.weight is not None:
            x = x * self.weight.float()
        if z is not None and self.norm_before_gate:
            x = x * F.silu(z.float())
        return x.to(dtype)


class Mamba3(nn.Module):
    """The Mamba-3 mixer with the SISO scan: in_proj -> [z, x, B, C, dt, A, trap, angles], B/C RMSNorm
    and biases, the scan, out_proj. Same attributes and parameter shapes as the package's module."""

    def __init__(self, d_model, d_state=128, expand=2, headdim=64, ngroups=1, rope_fraction=0.5, dt_min=0.001,
                 dt_max=0.1, dt_init_floor=1e-4, A_floor=1e-4, is_outproj_norm=False, is_mimo=False, mimo_rank=4,
                 chunk_size=64, layer_idx=None, device=None, dtype=None, **_: Any):
        super().__init__()
        if is_mimo:
            raise NotEmulated("Mamba3(is_mimo=True) is not emulated by golf-audit (SISO only)")
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.expand, self.headdim = d_model, d_state, expand, headdim
        self.chunk_size, self.layer_idx, self.A_floor = chunk_size, layer_idx, A_floor
        self.is_outproj_norm, self.is_mimo, self.mimo_rank = is_outproj_norm, False, 1
        self.d_inner = int(expand * d_model)
        if self.d_inner % headdim:
            raise ValueError(f"Mamba3: d_inner {self.d_inner} is not a multiple of headdim {headdim}")
        self.nheads, self.num_bc_heads = self.d_inner // headdim, ngroups
        self.rotary_dim_divisor = int(2 / rope_fraction)
        self.split_tensor_size = int(d_state * rope_fraction) // 2 * 2
        self.num_rope_angles = self.split_tensor_size // 2
        bc = d_state * ngroups
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * bc + 3 * self.nheads + self.num_rope_angles,
                                 bias=False, **kw)
        self.dt_bias = _dt_bias(self.nheads, dt_min, dt_max, dt_init_floor, device)
        self.B_bias = nn.Parameter(torch.ones(self.nheads, 1, d_state, device=device))
        self.C_bias = nn.Parameter(torch.ones(self.nheads, 1, d_state, device=device))
        self.B_norm = RMSNormGated(d_state, eps=1e-5, **kw)
        self.C_norm = RMSNormGated(d_state, eps=1e-5, **kw)
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))
        self.D._no_weight_decay = True
        if is_outproj_norm:
            self.norm = RMSNormGated(self.d_inner, eps=1e-5, norm_before_gate=True, group_size=headdim, **kw)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **kw)

    def forward(self, u, seq_idx=None, cu_seqlens=None, inference_params=None):
        if inference_params is not None:
            raise NotEmulated("Mamba3 with inference_params (the decode cache) is not emulated by golf-audit")
        b, l, _ = u.shape
        bc = self.d_state * self.num_bc_heads
        z, x, B, C, dd_dt, dd_A, trap, angles = torch.split(
            self.in_proj(u), [self.d_inner, self.d_inner, bc, bc, self.nheads, self.nheads, self.nheads,
                              self.num_rope_angles], dim=-1)
        z = z.unflatten(-1, (self.nheads, self.headdim))
        x = x.unflatten(-1, (self.nheads, self.headdim))
        B = self.B_norm(B.unflatten(-1, (self.num_bc_heads, self.d_state)))
        C = self.C_norm(C.unflatten(-1, (self.num_bc_heads, self.d_state)))
        A = torch.clamp(-F.softplus(dd_A.float()), max=-self.A_floor)
        DT = F.softplus(dd_dt + self.dt_bias)
        y = mamba3_siso_combined(
            Q=C, K=B, V=x, ADT=(A * DT).transpose(1, 2), DT=DT.transpose(1, 2), Trap=trap.transpose(1, 2),
            Q_bias=self.C_bias.squeeze(1), K_bias=self.B_bias.squeeze(1),
            Angles=angles.unsqueeze(-2).expand(-1, -1, self.nheads, -1).float(), D=self.D,
            Z=None if self.is_outproj_norm else z, chunk_size=self.chunk_size, cu_seqlens=cu_seqlens)
        y = y.flatten(-2)
        if self.is_outproj_norm:
            y = self.norm(y, z.flatten(-2))
        return self.out_proj(y.to(x.dtype))


class Mamba2(nn.Module):
    """The Mamba-2 mixer: in_proj -> [z, x|B|C, dt] (plus a gated-MLP part when d_ssm < d_inner),
    a causal depthwise conv and SiLU over x|B|C, the SSD scan, the gated RMSNorm, out_proj. Same
    attributes and parameter shapes as the package's module; no tensor parallelism, no decode cache."""

    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, d_ssm=None, ngroups=1,
                 A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False, dt_min=0.001,
                 dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), bias=False, conv_bias=True,
                 chunk_size=256, use_mem_eff_path=True, layer_idx=None, process_group=None, device=None,
                 dtype=None, **_: Any):
        super().__init__()
        if process_group is not None:
            raise NotEmulated("Mamba2 with a process_group (tensor parallel) is not emulated by golf-audit")
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand, self.headdim = d_model, d_state, d_conv, expand, headdim
        self.d_inner = expand * d_model
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        if self.d_ssm % headdim:
            raise ValueError(f"Mamba2: d_ssm {self.d_ssm} is not a multiple of headdim {headdim}")
        self.ngroups, self.nheads = ngroups, self.d_ssm // headdim
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit, self.activation, self.chunk_size = dt_limit, "silu", chunk_size
        self.use_mem_eff_path, self.layer_idx, self.process_group = use_mem_eff_path, layer_idx, None
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=bias, **kw)
        conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=conv_bias, **kw)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.act = nn.SiLU()
        self.dt_bias = _dt_bias(self.nheads, dt_min, dt_max, dt_init_floor, device)
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        self.D._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **kw)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)

    def forward(self, u, seqlen=None, seq_idx=None, cu_seqlens=None, inference_params=None):
        if inference_params is not None:
            raise NotEmulated("Mamba2 with inference_params (the decode cache) is not emulated by golf-audit")
        flat = seqlen is not None
        if flat:  # (batch * seqlen, dim)
            u = u.reshape(-1, seqlen, u.shape[-1])
        length = u.shape[1]
        zxbcdt = self.in_proj(u)
        bc = self.ngroups * self.d_state
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * bc - self.nheads) // 2
        z0, x0, z, xBC, dt = torch.split(zxbcdt, [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * bc, self.nheads], dim=-1)
        # causal: the conv pads both sides by d_conv - 1; output t reads inputs t-d_conv+1..t
        xBC = self.act(self.conv1d(xBC.transpose(1, 2))[..., :length].transpose(1, 2))
        x, B, C = torch.split(xBC, [self.d_ssm, bc, bc], dim=-1)
        y = mamba_chunk_scan_combined(
            x.unflatten(-1, (self.nheads, self.headdim)), dt, -torch.exp(self.A_log.float()),
            B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state)),
            chunk_size=self.chunk_size,
            D=self.D.unflatten(0, (self.nheads, self.headdim)) if self.D_has_hdim else self.D,
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
            dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit, seq_idx=seq_idx, cu_seqlens=cu_seqlens)
        y = y.flatten(-2)
        if self.rmsnorm:
            y = self.norm(y, z)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        out = self.out_proj(y)
        return out.reshape(-1, out.shape[-1]) if flat else out


# ---------------------------------------------------------------- sys.modules
_MODULES = {
    "mamba_ssm": {"Mamba3": Mamba3, "Mamba2": Mamba2},
    "mamba_ssm.modules": {},
    "mamba_ssm.modules.mamba3": {"Mamba3": Mamba3},
    "mamba_ssm.modules.mamba2": {"Mamba2": Mamba2},
    "mamba_ssm.ops": {},
    "mamba_ssm.ops.triton": {},
    "mamba_ssm.ops.triton.mamba3": {},
    "mamba_ssm.ops.triton.mamba3.mamba3_siso_combined": {"mamba3_siso_combined": mamba3_siso_combined},
    "mamba_ssm.ops.triton.ssd_combined": {"mamba_chunk_scan_combined": mamba_chunk_scan_combined},
    "mamba_ssm.ops.triton.layernorm_gated": {"RMSNorm": RMSNormGated},
    "mamba_ssm.ops.selective_scan_interface": {"selective_scan_fn": selective_scan_fn},
    "causal_conv1d": {"causal_conv1d_fn": causal_conv1d_fn, "causal_conv1d_update": causal_conv1d_update},
}


def install(note: Callable[[str], None] | None = None) -> bool:
    """Put the emulated `mamba_ssm` and `causal_conv1d` modules in sys.modules. False when a real
    one is already imported."""
    return register(_MODULES, note)
