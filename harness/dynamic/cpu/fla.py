"""A torch emulation of the parts of flash-linear-attention (`fla`) that contest scripts import, for
toy runs on a CPU.

`fla`'s kernels are Triton GPU kernels, so a script that imports it cannot start on a CPU. This
emulation computes what those kernels define, written by golf-audit from the published recurrences
(no code from the package): the delta rule and the gated delta rule (`chunk_delta_rule`,
`chunk_gated_delta_rule`, their fused-recurrent and naive forms), the short causal convolution
(`ShortConvolution`, `causal_conv1d`), the gated RMSNorm, and the `GatedDeltaNet` and `DeltaNet`
layers built on them (same constructor arguments, attribute and parameter names as the package's).

Per head, with S the (K x V) state:  S_t = exp(g_t) S_{t-1};  S_t += beta_t k_t (v_t - S_t^T k_t)^T;
o_t = S_t^T (scale q_t). It is solved a chunk of positions at a time (a unit lower-triangular
system per chunk, see `_chunked`) and is exactly causal: o_t reads inputs at positions <= t only,
no term is added and then cancelled. Packed sequences (`cu_seqlens`) each start from their own state. What
is not emulated (decode caches, padding masks, GatedDeltaProduct, fla's Mamba2 and RWKV7 layers)
fails with an error that names it. Installed into `sys.modules` by `install()` from the shims.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.dynamic.cpu.fake_packages import NotEmulated, register, used
from harness.dynamic.cpu.mamba import RMSNormGated, causal_conv1d_fn

EMULATED = "delta rule and gated delta rule (chunk / fused_recurrent / naive), ShortConvolution, " \
           "causal_conv1d, FusedRMSNormGated, RMSNorm, layers GatedDeltaNet and DeltaNet"


# ---------------------------------------------------------------- the recurrence
CHUNK = 64  # positions solved together; the result does not depend on it (tests: 1 to 64)


def _chunked(q, k, v, beta, g, scale, state, chunk: int = CHUNK):
    """The gated delta rule for one batch of sequences, float32, a chunk of positions at a time.

    q, k (b, t, h, K); v (b, t, h, V); beta, g (b, t, h) (g: log-decay, or None); state (b, h, K, V).
    With u_t = beta_t (v_t - exp(g_t) S_{t-1}^T k_t), the step is S_t = exp(g_t) S_{t-1} + k_t u_t^T.
    Inside a chunk entered with S_0 and cumulative log-decay c_t: S_t = e^{c_t} S_0 + sum_{s<=t}
    e^{c_t-c_s} k_s u_s^T, so (I + A) U = beta (V - e^{c} K S_0) with A[t, s] = beta_t e^{c_t-c_s} k_t.k_s
    for s < t (unit lower triangular: forward substitution reads rows <= t only), and
    o_t = scale (e^{c_t} q_t^T S_0 + sum_{s<=t} e^{c_t-c_s} (q_t.k_s) u_s). Entries for s > t are
    exact zeros, never computed from later positions, so o_t depends on positions <= t only.
    Returns o (b, t, h, V) and the state after the last position."""
    outs = []
    length = q.shape[1]
    for c0 in range(0, length, chunk):
        c1 = min(c0 + chunk, length)
        n = c1 - c0
        qc, kc, vc = (x[:, c0:c1].transpose(1, 2) for x in (q, k, v))  # (b, h, n, d)
        bc = beta[:, c0:c1].transpose(1, 2)  # (b, h, n)
        cum = torch.cumsum(g[:, c0:c1].transpose(1, 2), dim=-1) if g is not None else bc.new_zeros(bc.shape)
        lower = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        strict = lower.tril(-1)
        decay = torch.exp(torch.where(lower, cum[..., :, None] - cum[..., None, :], -math.inf))  # (b, h, t, s)
        a = torch.where(strict, decay * (kc @ kc.transpose(-1, -2)), 0.0) * bc[..., None]
        rhs = bc[..., None] * (vc - torch.exp(cum)[..., None] * (kc @ state))
        eye = torch.eye(n, dtype=a.dtype, device=a.device)
        u = torch.linalg.solve_triangular(eye + a, rhs, upper=False, unitriangular=True)
        inner = torch.where(lower, decay * (qc @ kc.transpose(-1, -2)), 0.0)
        o = scale * (torch.exp(cum)[..., None] * (qc @ state) + inner @ u)
        outs.append(o.transpose(1, 2))
        to_end = torch.exp(cum[..., -1:] - cum)[..., None]  # decay from s to the chunk's last position
        state = torch.exp(cum[..., -1])[..., None, None] * state + (kc * to_end).transpose(-1, -2) @ u
    return torch.cat(outs, dim=1), state


def _delta_rule(name, q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False,
                cu_seqlens=None, head_first=False, use_qk_l2norm_in_kernel=False, **_: Any):
    used(f"fla {name} -> torch emulation")
    if head_first:  # (b, h, t, d) -> (b, t, h, d)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        beta = beta.transpose(1, 2)
        g = g.transpose(1, 2) if g is not None else None
    if beta.dim() == 4:
        raise NotEmulated(f"{name} with a per-channel beta is not emulated by golf-audit")
    dtype = v.dtype
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    g = g.float() if g is not None else None
    if use_qk_l2norm_in_kernel:
        q, k = F.normalize(q, p=2, dim=-1, eps=1e-6), F.normalize(k, p=2, dim=-1, eps=1e-6)
    if v.shape[2] != q.shape[2]:  # more value heads than query/key heads: each q/k head serves a group
        q, k = (x.repeat_interleave(v.shape[2] // x.shape[2], dim=2) for x in (q, k))
    b, length, h, dk = q.shape
    scale = dk ** -0.5 if scale is None else scale
    bounds = [int(x) for x in cu_seqlens.tolist()] if cu_seqlens is not None else None
    n_seq = len(bounds) - 1 if bounds is not None else b
    if cu_seqlens is not None and b != 1:
        raise ValueError(f"cu_seqlens needs a batch of 1 (packed sequences), got batch {b}")
    if initial_state is None:
        initial_state = q.new_zeros(n_seq, h, dk, v.shape[-1])
    initial_state = initial_state.float()
    if bounds is None:
        o, last = _chunked(q, k, v, beta, g, scale, initial_state, CHUNK)
    else:
        parts, finals = [], []
        for i, (s, e) in enumerate(zip(bounds, bounds[1:])):
            o_i, last_i = _chunked(q[:, s:e], k[:, s:e], v[:, s:e], beta[:, s:e],
                                      g[:, s:e] if g is not None else None, scale, initial_state[i:i + 1], CHUNK)
            parts.append(o_i)
            finals.append(last_i)
        o, last = torch.cat(parts, dim=1), torch.cat(finals, dim=0)
    o = o.to(dtype)
    if head_first:
        o = o.transpose(1, 2)
    return o, (last if output_final_state else None)


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, **kw: Any):
    return _delta_rule("chunk_gated_delta_rule", q, k, v, beta, g, scale, initial_state, output_final_state, **kw)


def fused_recurrent_gated_delta_rule(q, k, v, g, beta=None, scale=None, initial_state=None,
                                     output_final_state=False, **kw: Any):
    beta = torch.ones_like(q[..., 0]) if beta is None else beta
    return _delta_rule("fused_recurrent_gated_delta_rule", q, k, v, beta, g, scale, initial_state,
                       output_final_state, **kw)


def naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, scale=None, initial_state=None,
                                 output_final_state=False, **kw: Any):
    """fla's reference implementation (naive.py): the same recurrence; the chunk size does not change it."""
    return _delta_rule("naive_chunk_gated_delta_rule", q, k, v, beta, g, scale, initial_state,
                       output_final_state, **kw)


def naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=None, initial_state=None, output_final_state=False,
                                     **kw: Any):
    return _delta_rule("naive_recurrent_gated_delta_rule", q, k, v, beta, g, scale, initial_state,
                       output_final_state, **kw)


def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, **kw: Any):
    return _delta_rule("chunk_delta_rule", q, k, v, beta, None, scale, initial_state, output_final_state, **kw)


def fused_recurrent_delta_rule(q, k, v, beta=None, scale=None, initial_state=None, output_final_state=False,
                               **kw: Any):
    beta = torch.ones_like(q[..., 0]) if beta is None else beta
    return _delta_rule("fused_recurrent_delta_rule", q, k, v, beta, None, scale, initial_state,
                       output_final_state, **kw)


# ---------------------------------------------------------------- convolution and norms
def causal_conv1d(x, weight=None, bias=None, residual=None, initial_state=None, output_final_state=False,
                  activation=None, cu_seqlens=None, **_: Any):
    """fla's short causal conv: x (b, t, d), weight (d, w); returns (y (b, t, d), final state or None).
    Packed sequences (`cu_seqlens`) are convolved each on its own, with zeros before its start."""
    used("fla causal_conv1d -> torch emulation")
    xt = x.transpose(1, 2)
    if cu_seqlens is None:
        r = causal_conv1d_fn(xt, weight, bias, initial_states=initial_state, return_final_states=True,
                             activation=activation)
        y, last = r[0].transpose(1, 2), r[1]
    else:
        bounds = [int(b) for b in cu_seqlens.tolist()]
        parts = [causal_conv1d_fn(xt[..., s:e], weight, bias, return_final_states=True, activation=activation)
                 for s, e in zip(bounds, bounds[1:])]
        y, last = torch.cat([p[0] for p in parts], dim=-1).transpose(1, 2), torch.cat([p[1] for p in parts])
    if residual is not None:
        y = y + residual
    return y, (last if output_final_state else None)


class ShortConvolution(nn.Conv1d):
    """A depthwise causal conv over (b, t, d) with an optional SiLU; the weight is (d, 1, w), as in fla."""

    def __init__(self, hidden_size, kernel_size, bias=False, activation="silu", use_fast_conv1d=True,
                 backend=None, device=None, dtype=None, **_: Any):
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, padding=kernel_size - 1,
                         bias=bias, device=device, dtype=dtype)
        self.hidden_size = hidden_size
        self.activation = activation if activation in ("silu", "swish") else None

    def forward(self, x, residual=None, mask=None, cache=None, output_final_state=False, cu_seqlens=None,
                **_: Any):
        if cache is not None:
            raise NotEmulated("ShortConvolution with a decode cache is not emulated by golf-audit")
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        return causal_conv1d(x, self.weight.squeeze(1), self.bias, residual=residual,
                             output_final_state=output_final_state, activation=self.activation,
                             cu_seqlens=cu_seqlens)


class FusedRMSNormGated(RMSNormGated):
    """rmsnorm(x) * weight * silu(g), as fla's FusedRMSNormGated computes it."""

    def __init__(self, hidden_size, elementwise_affine=True, eps=1e-5, activation="swish", device=None,
                 dtype=None, **_: Any):
        if activation not in ("swish", "silu"):
            raise NotEmulated(f"FusedRMSNormGated(activation={activation!r}) is not emulated by golf-audit")
        super().__init__(hidden_size, eps=eps, norm_before_gate=True, device=device, dtype=dtype)

    def forward(self, x, g, residual=None, prenorm=False, **_: Any):
        if residual is not None or prenorm:
            raise NotEmulated("FusedRMSNormGated with a residual is not emulated by golf-audit")
        return super().forward(x, g)


class RMSNorm(RMSNormGated):
    """fla's RMSNorm: the gated norm without a gate (and without a weight when not affine)."""

    def __init__(self, hidden_size, elementwise_affine=True, bias=False, eps=1e-5, device=None, dtype=None,
                 **_: Any):
        super().__init__(hidden_size, eps=eps, device=device, dtype=dtype)
        self.hidden_size = hidden_size
        if not elementwise_affine:
            self.weight = None

    def forward(self, x, residual=None, prenorm=False, **_: Any):
        if residual is not None or prenorm:
            raise NotEmulated("fla RMSNorm with a residual is not emulated by golf-audit")
        return super().forward(x)


# ---------------------------------------------------------------- layers
def _whole_sequences(layer: str, attention_mask, past_key_values, use_cache) -> None:
    if attention_mask is not None and not bool(attention_mask.all()):
        raise NotEmulated(f"{layer} with a padding attention_mask is not emulated by golf-audit")
    if past_key_values is not None or use_cache:
        raise NotEmulated(f"{layer} with a decode cache (past_key_values / use_cache) is not emulated by golf-audit")


def _heads(x, d):
    return x.unflatten(-1, (-1, d))


class _DeltaLayer(nn.Module):
    """What GatedDeltaNet and DeltaNet share: q/k/v projections, their short convs, the output
    norm (gated by g_proj, or plain) and o_proj, built in the package's parameter order."""

    def _projections(self, hidden_size: int) -> None:
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)

    def _convs_and_output(self, hidden_size: int, conv_size: int, conv_bias: bool, qk_act: str | None,
                          norm_eps: float) -> None:
        if self.use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation=qk_act)
            self.k_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation=qk_act)
            self.v_conv1d = ShortConvolution(self.value_dim, conv_size, bias=conv_bias, activation="silu")
        if self.use_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
            self.o_norm = FusedRMSNormGated(self.head_v_dim, eps=norm_eps)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def _qkv(self, x, cu_seqlens, qk_act: str | None):
        """q, k (b, t, h, K) and v (b, t, h, V): through the convs, or the activations alone."""
        if self.use_short_conv:
            q = self.q_conv1d(self.q_proj(x), cu_seqlens=cu_seqlens)[0]
            k = self.k_conv1d(self.k_proj(x), cu_seqlens=cu_seqlens)[0]
            v = self.v_conv1d(self.v_proj(x), cu_seqlens=cu_seqlens)[0]
        else:
            act = F.silu if qk_act == "silu" else (lambda t: t)
            q, k, v = act(self.q_proj(x)), act(self.k_proj(x)), F.silu(self.v_proj(x))
        return _heads(q, self.head_k_dim), _heads(k, self.head_k_dim), _heads(v, self.head_v_dim)

    def _output(self, o, x):
        o = self.o_norm(o, _heads(self.g_proj(x), self.head_v_dim)) if self.use_gate else self.o_norm(o)
        return self.o_proj(o.flatten(-2))


class GatedDeltaNet(_DeltaLayer):
    """fla's GatedDeltaNet layer: q/k/v projections through short convs (SiLU), beta = sigmoid(b_proj),
    g = -exp(A_log) * softplus(a_proj + dt_bias), the gated delta rule with l2-normalised q and k,
    a gated RMSNorm (g_proj) or a plain one, o_proj. Returns (o, None, past_key_values)."""

    def __init__(self, hidden_size=2048, expand_v=2, head_dim=256, num_heads=6, num_v_heads=None, mode="chunk",
                 use_gate=True, use_short_conv=True, allow_neg_eigval=False, conv_size=4, conv_bias=False,
                 layer_idx=None, norm_eps=1e-5, **_: Any):
        super().__init__()
        self.mode, self.hidden_size, self.expand_v = mode, hidden_size, expand_v
        self.use_gate, self.use_short_conv, self.allow_neg_eigval = use_gate, use_short_conv, allow_neg_eigval
        self.conv_size, self.conv_bias, self.layer_idx = conv_size, conv_bias, layer_idx
        self.head_dim, self.num_heads = head_dim, num_heads
        self.num_v_heads = num_v_heads if num_v_heads is not None else num_heads
        self.head_k_dim, self.head_v_dim = head_dim, int(head_dim * expand_v)
        self.key_dim = num_heads * head_dim
        self.value_dim = int(self.num_v_heads * self.head_v_dim)
        self._projections(hidden_size)
        self.a_proj = nn.Linear(hidden_size, self.num_v_heads, bias=False)
        self.b_proj = nn.Linear(hidden_size, self.num_v_heads, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(self.num_v_heads).uniform_(0, 16)))
        self.A_log._no_weight_decay = True
        dt = torch.exp(torch.rand(self.num_v_heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        dt = dt.clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.dt_bias._no_weight_decay = True
        self._convs_and_output(hidden_size, conv_size, conv_bias, "silu", norm_eps)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, cu_seqlens=None, **_: Any):
        _whole_sequences("GatedDeltaNet", attention_mask, past_key_values, use_cache)
        x = hidden_states
        q, k, v = self._qkv(x, cu_seqlens, "silu")
        beta = self.b_proj(x).sigmoid()
        if self.allow_neg_eigval:
            beta = beta * 2.0
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)
        # looked up at call time: a script may patch the layer module's kernel (the naive one)
        rule = getattr(sys.modules.get("fla.layers.gated_deltanet"), "chunk_gated_delta_rule", chunk_gated_delta_rule)
        o, _state = rule(q=q, k=k, v=v, g=g, beta=beta, initial_state=None, output_final_state=False,
                         cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=True)
        return self._output(o, x), None, past_key_values


class DeltaNet(_DeltaLayer):
    """fla's DeltaNet layer: q/k/v projections through short convs, beta = sigmoid(b_proj) (or 1),
    the delta rule with l2-normalised q and k, a gated or plain RMSNorm, o_proj."""

    def __init__(self, mode="chunk", d_model=None, hidden_size=1024, expand_k=1.0, expand_v=1.0, num_heads=4,
                 use_beta=True, use_gate=False, use_short_conv=True, conv_size=4, conv_bias=False,
                 allow_neg_eigval=False, layer_idx=None, qk_activation="silu", qk_norm="l2", norm_eps=1e-5,
                 **_: Any):
        super().__init__()
        if qk_activation not in ("silu", "relu", "elu", "identity") or qk_norm not in ("l2", "sum"):
            raise NotEmulated(f"DeltaNet(qk_activation={qk_activation!r}, qk_norm={qk_norm!r}) is not emulated")
        hidden_size = d_model if d_model is not None else hidden_size
        self.mode, self.hidden_size, self.num_heads, self.layer_idx = mode, hidden_size, num_heads, layer_idx
        self.use_beta, self.use_gate, self.use_short_conv = use_beta, use_gate, use_short_conv
        self.allow_neg_eigval, self.qk_activation, self.qk_norm = allow_neg_eigval, qk_activation, qk_norm
        self.key_dim, self.value_dim = int(hidden_size * expand_k), int(hidden_size * expand_v)
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self._projections(hidden_size)
        if use_beta:
            self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self._qk_act = "silu" if qk_activation == "silu" else None
        self._convs_and_output(hidden_size, conv_size, conv_bias, self._qk_act, norm_eps)

    def _qk(self, x):
        if self.qk_activation == "relu":
            return F.relu(x)
        if self.qk_activation == "elu":
            return F.elu(x) + 1.0
        return x

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, cu_seqlens=None, **_: Any):
        _whole_sequences("DeltaNet", attention_mask, past_key_values, use_cache)
        x = hidden_states
        q, k, v = self._qkv(x, cu_seqlens, self._qk_act)
        q, k = self._qk(q), self._qk(k)
        if self.qk_norm == "sum":
            q, k = q / q.sum(-1, keepdim=True), k / k.sum(-1, keepdim=True)
        beta = self.b_proj(x).sigmoid() if self.use_beta else torch.ones_like(q[..., 0])
        if self.allow_neg_eigval:
            beta = beta * 2.0
        o, _state = chunk_delta_rule(q=q, k=k, v=v, beta=beta, cu_seqlens=cu_seqlens,
                                     use_qk_l2norm_in_kernel=self.qk_norm == "l2")
        return self._output(o, x), None, past_key_values


def _not_emulated(what: str):
    """A class that imports but fails when built: the script's config decides whether it is used."""

    class Missing(nn.Module):
        def __init__(self, *args: Any, **kwargs: Any):
            raise NotEmulated(f"fla {what} is not emulated by golf-audit")

    Missing.__name__ = Missing.__qualname__ = what.rsplit(".", 1)[-1]
    return Missing


def _missing_fn(what: str) -> Callable:
    def missing(*args: Any, **kwargs: Any):
        raise NotEmulated(f"fla {what} is not emulated by golf-audit")
    missing.__name__ = what.rsplit(".", 1)[-1]
    return missing


# ---------------------------------------------------------------- sys.modules
_GDR = {"chunk_gated_delta_rule": chunk_gated_delta_rule,
        "fused_recurrent_gated_delta_rule": fused_recurrent_gated_delta_rule}
_DR = {"chunk_delta_rule": chunk_delta_rule, "fused_recurrent_delta_rule": fused_recurrent_delta_rule}
_LAYERS = {"GatedDeltaNet": GatedDeltaNet, "DeltaNet": DeltaNet,
           "GatedDeltaProduct": _not_emulated("layers.GatedDeltaProduct"),
           "Mamba2": _not_emulated("layers.Mamba2"), "RWKV7Attention": _not_emulated("layers.RWKV7Attention")}
_NORMS = {"FusedRMSNormGated": FusedRMSNormGated, "RMSNorm": RMSNorm}
_MODULES = {
    "fla": dict(_LAYERS),
    "fla.layers": dict(_LAYERS),
    "fla.layers.gated_deltanet": {"GatedDeltaNet": GatedDeltaNet, **_GDR},
    "fla.layers.delta_net": {"DeltaNet": DeltaNet, **_DR},
    "fla.layers.gated_deltaproduct": {
        "GatedDeltaProduct": _LAYERS["GatedDeltaProduct"],
        "chunk_gated_delta_product": _missing_fn("ops.gated_delta_product.chunk_gated_delta_product")},
    "fla.ops": {**_GDR, **_DR},
    "fla.ops.delta_rule": dict(_DR),
    "fla.ops.gated_delta_rule": dict(_GDR),
    "fla.ops.gated_delta_rule.chunk": {"chunk_gated_delta_rule": chunk_gated_delta_rule},
    "fla.ops.gated_delta_rule.fused_recurrent": {
        "fused_recurrent_gated_delta_rule": fused_recurrent_gated_delta_rule},
    "fla.ops.gated_delta_rule.naive": {"naive_chunk_gated_delta_rule": naive_chunk_gated_delta_rule,
                                       "naive_recurrent_gated_delta_rule": naive_recurrent_gated_delta_rule},
    "fla.modules": {"ShortConvolution": ShortConvolution, **_NORMS},
    "fla.modules.convolution": {"ShortConvolution": ShortConvolution, "causal_conv1d": causal_conv1d},
    "fla.modules.fused_norm_gate": {"FusedRMSNormGated": FusedRMSNormGated},
    "fla.modules.layernorm": {"RMSNorm": RMSNorm},
}


def install(note: Callable[[str], None] | None = None) -> bool:
    """Put the emulated `fla` modules in sys.modules. False when a real `fla` is already imported."""
    return register(_MODULES, note)
