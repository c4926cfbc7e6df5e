"""The torch emulation of `mamba_ssm` (harness/dynamic/cpu/mamba.py): each scan against a plain
one-position-at-a-time recurrence written here, exact causality, state carry, the module, and the
modules it puts in sys.modules."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.dynamic.cpu import mamba
from harness.dynamic.cpu.packages import explain_missing
from tests.helpers import run_fresh

B, L, G, H, N, P, A = 2, 37, 2, 4, 8, 5, 2  # batch, length, B/C groups, heads, state, head dim, angles
LENGTH_ARGS, TIME_ARGS = ("Q", "K", "V", "Angles", "Z"), ("ADT", "DT", "Trap")


def _mamba3_inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    dt = F.softplus(r(B, H, L))
    return dict(Q=r(B, L, G, N), K=r(B, L, G, N), V=r(B, L, H, P), ADT=-torch.rand(B, H, L, generator=g) * dt,
                DT=dt, Trap=r(B, H, L), Q_bias=r(H, N), K_bias=r(H, N), Angles=r(B, L, H, A), D=r(H), Z=r(B, L, H, P))


def _mamba3_steps(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z):
    """Mamba-3 SISO one position at a time: rotate q, k by the accumulated angle; the state decays by
    exp(ADT), takes the previous (k, v) with weight (1 - sigmoid(Trap)) * DT * exp(ADT) and the current
    one with sigmoid(Trap) * DT (the trapezoid); y = state q + D v, gated by silu(Z)."""
    q_all, k_all = Q.repeat_interleave(H // G, 2) + Q_bias, K.repeat_interleave(H // G, 2) + K_bias
    theta, state = torch.zeros(B, H, A), torch.zeros(B, H, P, N)
    k_prev, v_prev, out = torch.zeros(B, H, N), torch.zeros(B, H, P), []
    for t in range(L):
        theta = torch.remainder(theta + torch.tanh(Angles[:, t]) * math.pi * DT[:, :, t, None], 2 * math.pi)
        q, k = _turn(q_all[:, t], theta), _turn(k_all[:, t], theta)
        lam, alpha = torch.sigmoid(Trap[:, :, t]), torch.exp(ADT[:, :, t])
        w = lambda x: x[..., None, None]  # noqa: E731
        state = w(alpha) * state + w((1 - lam) * DT[:, :, t] * alpha) * torch.einsum("bhp,bhn->bhpn", v_prev, k_prev) \
            + w(lam * DT[:, :, t]) * torch.einsum("bhp,bhn->bhpn", V[:, t], k)
        y = torch.einsum("bhpn,bhn->bhp", state, q) + D[:, None] * V[:, t]
        out.append(y * F.silu(Z[:, t]))
        k_prev, v_prev = k, V[:, t]
    return torch.stack(out, 1), (theta, state, k_prev, v_prev)


def _turn(x, theta):
    """Rotate the first theta.shape[-1] pairs (x[2i], x[2i+1]) of x by theta[i]."""
    x = x.clone()
    for i in range(theta.shape[-1]):
        a, b = x[..., 2 * i].clone(), x[..., 2 * i + 1].clone()
        c, s = torch.cos(theta[..., i]), torch.sin(theta[..., i])
        x[..., 2 * i], x[..., 2 * i + 1] = a * c - b * s, a * s + b * c
    return x


def _cut(args: dict, lo: int, hi: int) -> dict:
    return {k: v[:, lo:hi] if k in LENGTH_ARGS else v[..., lo:hi] if k in TIME_ARGS else v for k, v in args.items()}


@pytest.mark.parametrize("chunk", [1, 5, 16, 64, 256])
def test_mamba3_scan_matches_the_step_recurrence(chunk):
    args = _mamba3_inputs()
    want, want_states = _mamba3_steps(**args)
    got, *states = mamba.mamba3_siso_combined(**args, chunk_size=chunk, return_final_states=True)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    for s, w in zip(states, want_states):
        assert torch.allclose(s, w, atol=1e-4, rtol=1e-4)


def test_mamba3_scan_carries_its_state_across_calls():
    args = _mamba3_inputs(1)
    whole = mamba.mamba3_siso_combined(**args, chunk_size=8)
    first, *states = mamba.mamba3_siso_combined(**_cut(args, 0, 20), chunk_size=8, return_final_states=True)
    rest = mamba.mamba3_siso_combined(**_cut(args, 20, L), chunk_size=8, Input_States=tuple(states))
    assert torch.allclose(torch.cat([first, rest], 1), whole, atol=1e-5, rtol=1e-5)


def test_mamba3_scan_is_exactly_causal():
    # changing every input at position 25 leaves positions 0..24 bit-identical (the causality probes
    # must see the submission, not a rounding residue of the emulation)
    args = _mamba3_inputs(2)
    moved = {k: v.clone() for k, v in args.items()}
    for k in LENGTH_ARGS:
        moved[k][:, 25] += 1.0
    for k in TIME_ARGS:
        moved[k][..., 25] *= 0.5
    before, after = (mamba.mamba3_siso_combined(**a, chunk_size=16) for a in (args, moved))
    assert torch.equal(before[:, :25], after[:, :25])
    assert not torch.equal(before[:, 25], after[:, 25])


def test_mamba2_scan_matches_the_step_recurrence():
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(B, L, H, P, generator=g), torch.randn(B, L, H, P, generator=g)
    dt, A_ = torch.randn(B, L, H, generator=g), -torch.rand(H, generator=g)
    Bm, Cm, D = torch.randn(B, L, G, N, generator=g), torch.randn(B, L, G, N, generator=g), torch.randn(H, generator=g)
    got, last = mamba.mamba_chunk_scan_combined(x, dt, A_, Bm, Cm, chunk_size=8, D=D, z=z, dt_softplus=True,
                                                return_final_states=True)
    d, state, want = F.softplus(dt), torch.zeros(B, H, P, N), []
    bh, ch = Bm.repeat_interleave(H // G, 2), Cm.repeat_interleave(H // G, 2)
    for t in range(L):
        state = torch.exp(d[:, t] * A_)[..., None, None] * state \
            + d[:, t, :, None, None] * torch.einsum("bhp,bhn->bhpn", x[:, t], bh[:, t])
        want.append((torch.einsum("bhpn,bhn->bhp", state, ch[:, t]) + D[:, None] * x[:, t]) * F.silu(z[:, t]))
    assert torch.allclose(got, torch.stack(want, 1), atol=1e-4, rtol=1e-4)
    assert torch.allclose(last, state, atol=1e-4, rtol=1e-4)


def test_mamba3_module_trains_and_keeps_the_package_parameter_shapes():
    m = mamba.Mamba3(d_model=16, d_state=8, expand=2, headdim=8, chunk_size=8)
    assert m.in_proj.weight.shape == (2 * 32 + 2 * 8 + 3 * 4 + 2, 16)
    assert (m.B_bias.shape, m.D.shape, m.dt_bias.shape) == ((4, 1, 8), (4,), (4,))
    u = torch.randn(2, 19, 16, requires_grad=True)
    m(u).square().sum().backward()
    assert u.grad is not None and m.in_proj.weight.grad.abs().sum() > 0
    with pytest.raises(mamba.NotEmulated, match="SISO only"):
        mamba.Mamba3(d_model=16, is_mimo=True)


def test_selective_scan_equals_the_ssd_scan_when_the_decay_is_per_channel():
    # Mamba-1's scan with A[d, n] = a_d is Mamba-2's with one head per channel (head dim 1): two
    # different code paths (a loop over positions, chunked blocks) must agree
    g = torch.Generator().manual_seed(4)
    u, delta, z = (torch.randn(B, H, L, generator=g) for _ in range(3))
    a = -torch.rand(H, generator=g)
    Bm, Cm, D = torch.randn(B, N, L, generator=g), torch.randn(B, N, L, generator=g), torch.randn(H, generator=g)
    got, last = mamba.selective_scan_fn(u, delta, a[:, None].expand(H, N), Bm, Cm, D=D, z=z, delta_softplus=True,
                                        return_last_state=True)
    want, state = mamba.mamba_chunk_scan_combined(
        u.transpose(1, 2)[..., None], delta.transpose(1, 2), a, Bm.transpose(1, 2)[:, :, None],
        Cm.transpose(1, 2)[:, :, None], chunk_size=8, D=D, z=z.transpose(1, 2)[..., None], dt_softplus=True,
        return_final_states=True)
    assert torch.allclose(got, want[..., 0].transpose(1, 2), atol=1e-4, rtol=1e-4)
    assert torch.allclose(last, state[:, :, 0], atol=1e-4, rtol=1e-4)
    moved = u.clone()
    moved[..., 20] += 1.0
    assert torch.equal(mamba.selective_scan_fn(moved, delta, a[:, None].expand(H, N), Bm, Cm)[..., :20],
                       mamba.selective_scan_fn(u, delta, a[:, None].expand(H, N), Bm, Cm)[..., :20])


def test_causal_conv1d_matches_a_padded_conv_and_its_decode_steps():
    g = torch.Generator().manual_seed(5)
    x, w, bias = torch.randn(B, H, L, generator=g), torch.randn(H, 4, generator=g), torch.randn(H, generator=g)
    y, last = mamba.causal_conv1d_fn(x, w, bias, activation="silu", return_final_states=True)
    conv = torch.nn.functional.conv1d(x, w.unsqueeze(1), bias, padding=3, groups=H)[..., :L]
    assert torch.allclose(y, F.silu(conv), atol=1e-5)
    assert torch.equal(last, x[..., -3:])
    state = torch.zeros(B, H, 4)
    steps = torch.stack([mamba.causal_conv1d_update(x[..., t], state, w, bias, "silu") for t in range(L)], -1)
    assert torch.allclose(steps, y, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: mamba.Mamba3(d_model=16, d_state=8, expand=2, headdim=8, chunk_size=8),
    lambda: mamba.Mamba2(d_model=16, d_state=8, d_conv=4, expand=2, headdim=8, chunk_size=8),
], ids=["Mamba3", "Mamba2"])
def test_modules_are_causal_end_to_end(make):
    # in_proj, the conv (Mamba-2), the norms and the scan together: a change at position 11 moves
    # no output before it
    torch.manual_seed(0)
    m = make()
    u = torch.randn(2, 23, 16)
    moved = u.clone()
    moved[:, 11] += 3.0
    with torch.no_grad():
        a, b = m(u), m(moved)
    assert torch.equal(a[:, :11], b[:, :11]) and not torch.equal(a[:, 11], b[:, 11])


def test_install_provides_the_emulated_imports_and_names_the_others():
    # in a fresh interpreter: sys.modules here stays as it is
    code = (
        "from harness.dynamic.cpu import mamba; assert mamba.install()\n"
        "from mamba_ssm.modules.mamba3 import Mamba3\n"
        "from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined\n"
        "from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined\n"
        "from mamba_ssm import Mamba3 as M\n"
        "from mamba_ssm.modules.mamba2 import Mamba2\n"
        "from mamba_ssm.ops.selective_scan_interface import selective_scan_fn\n"
        "from causal_conv1d import causal_conv1d_fn, causal_conv1d_update\n"
        "try:\n    from mamba_ssm.ops.triton.selective_state_update import selective_state_update\n"
        "except ModuleNotFoundError as e:\n    print(e)\n"
    )
    (missing,) = run_fresh(code)
    assert missing == "No module named 'mamba_ssm.ops.triton.selective_state_update'"
    assert explain_missing(missing).startswith("`mamba_ssm.ops.triton.selective_state_update` is not emulated")
    assert "is not emulated" in explain_missing("cannot import name 'Mamba' from 'mamba_ssm' (unknown location)")
