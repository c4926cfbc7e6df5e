"""The torch emulation of flash-linear-attention (harness/dynamic/cpu/fla.py): the (gated) delta rule
against a per-head matrix recurrence written here, exact causality, packed sequences, state carry,
the short conv, the GatedDeltaNet / DeltaNet layers, and the modules it puts in sys.modules."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.dynamic.cpu import fla
from harness.dynamic.cpu.fake_packages import NotEmulated
from harness.dynamic.cpu.packages import explain_missing
from tests.helpers import run_fresh

B, T, H, K, V = 2, 19, 3, 4, 5


def _inputs(seed: int = 0, gated: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    out = dict(q=r(B, T, H, K), k=F.normalize(r(B, T, H, K), dim=-1), v=r(B, T, H, V),
               beta=torch.rand(B, T, H, generator=g))
    if gated:
        out["g"] = -torch.rand(B, T, H, generator=g)
    return out


def _matrix_steps(q, k, v, beta, g=None, scale=None, state=None):
    """Per batch and head, with plain matrices: S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T and
    o_t = S_t^T (scale q_t), a_t = exp(g_t) (the delta rule's product form, not the emulation's)."""
    scale = K ** -0.5 if scale is None else scale
    o = torch.zeros(B, T, H, V)
    finals = torch.zeros(B, H, K, V)
    for b in range(B):
        for h in range(H):
            s = torch.zeros(K, V) if state is None else state[b, h].clone()
            for t in range(q.shape[1]):
                a = torch.exp(g[b, t, h]) if g is not None else torch.tensor(1.0)
                kt = k[b, t, h][:, None]
                s = a * (torch.eye(K) - beta[b, t, h] * kt @ kt.T) @ s + beta[b, t, h] * kt @ v[b, t, h][None, :]
                o[b, t, h] = s.T @ (scale * q[b, t, h])
            finals[b, h] = s
    return o, finals


@pytest.fixture(params=[1, 3, 64], ids=lambda c: f"chunk{c}")
def chunk(request, monkeypatch):
    """The emulation's chunk length: the results must not depend on it (T = 19 spans several)."""
    monkeypatch.setattr(fla, "CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("gated", [True, False])
def test_the_delta_rule_matches_the_product_form(gated, chunk):
    x = _inputs(gated=gated)
    want, want_state = _matrix_steps(**x)
    if gated:
        got, state = fla.chunk_gated_delta_rule(**x, output_final_state=True)
    else:
        got, state = fla.chunk_delta_rule(**x, output_final_state=True)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(state, want_state, atol=1e-5)


def test_every_entry_point_computes_the_same_recurrence():
    x = _inputs()
    base, _ = fla.chunk_gated_delta_rule(**x)
    q, k, v, g, beta = x["q"], x["k"], x["v"], x["g"], x["beta"]
    for o, _state in (fla.fused_recurrent_gated_delta_rule(q, k, v, g, beta),
                      fla.naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=4),
                      fla.naive_recurrent_gated_delta_rule(q, k, v, beta, g)):
        assert torch.allclose(o, base, atol=1e-6)
    heads_first = fla.chunk_gated_delta_rule(*(t.transpose(1, 2) for t in (q, k, v, g, beta)), head_first=True)[0]
    assert torch.allclose(heads_first.transpose(1, 2), base, atol=1e-6)


def test_outputs_never_read_later_positions(chunk):
    x = _inputs(1)
    base, _ = fla.chunk_gated_delta_rule(**x)
    for t in (0, 7, T - 2):
        moved = {name: a.clone() for name, a in x.items()}
        for name in moved:
            moved[name][:, t + 1:] = moved[name][:, t + 1:] * -2.0 + 0.5
        o, _ = fla.chunk_gated_delta_rule(**moved)
        assert torch.equal(o[:, :t + 1], base[:, :t + 1])
        assert not torch.equal(o[:, t + 1:], base[:, t + 1:])


def test_a_state_carried_across_calls_continues_the_sequence(chunk):
    x = _inputs(2)
    whole, whole_state = fla.chunk_gated_delta_rule(**x, output_final_state=True)
    first = {n: a[:, :8] for n, a in x.items()}
    rest = {n: a[:, 8:] for n, a in x.items()}
    a, mid = fla.chunk_gated_delta_rule(**first, output_final_state=True)
    b, last = fla.chunk_gated_delta_rule(**rest, initial_state=mid, output_final_state=True)
    assert torch.allclose(torch.cat([a, b], dim=1), whole, atol=1e-6) and torch.allclose(last, whole_state, atol=1e-6)


def test_packed_sequences_each_start_from_their_own_state(chunk):
    x = _inputs(3)
    packed = {n: a.reshape(1, B * T, *a.shape[2:]) for n, a in x.items()}
    cu = torch.tensor([0, T, 2 * T])
    o, finals = fla.chunk_gated_delta_rule(**packed, cu_seqlens=cu, output_final_state=True)
    alone, alone_state = fla.chunk_gated_delta_rule(**x, output_final_state=True)
    assert torch.allclose(o.reshape(B, T, H, V), alone, atol=1e-6) and torch.allclose(finals, alone_state, atol=1e-6)


def test_more_value_heads_than_key_heads_share_the_keys():
    x = _inputs(4)
    v2 = torch.cat([x["v"], x["v"].flip(-1)], dim=2)  # 2H value heads
    beta2, g2 = x["beta"].repeat_interleave(2, 2), x["g"].repeat_interleave(2, 2)
    o, _ = fla.chunk_gated_delta_rule(x["q"], x["k"], v2, g2, beta2)
    q2, k2 = x["q"].repeat_interleave(2, 2), x["k"].repeat_interleave(2, 2)
    want, _ = fla.chunk_gated_delta_rule(q2, k2, v2, g2, beta2)
    assert torch.equal(o, want)


def test_the_short_conv_is_causal_and_resets_at_packed_boundaries():
    conv = fla.ShortConvolution(6, 4, bias=True, activation="silu")
    x = torch.randn(1, 10, 6)
    y, _ = conv(x)
    padded = F.pad(x.transpose(1, 2), (3, 0))
    want = F.silu(F.conv1d(padded, conv.weight, conv.bias, groups=6)).transpose(1, 2)
    assert torch.allclose(y, want, atol=1e-6)
    cu = torch.tensor([0, 4, 10])
    packed, _ = conv(x, cu_seqlens=cu)
    assert torch.allclose(packed[:, :4], conv(x[:, :4])[0], atol=1e-6)
    assert torch.allclose(packed[:, 4:], conv(x[:, 4:])[0], atol=1e-6)


@pytest.mark.parametrize("layer", ["GatedDeltaNet", "DeltaNet"])
def test_the_layers_are_causal_and_keep_the_package_names(layer):
    torch.manual_seed(0)
    if layer == "GatedDeltaNet":
        m = fla.GatedDeltaNet(hidden_size=16, expand_v=1, head_dim=8, num_heads=2, use_gate=True)
        names = {"q_proj.weight", "k_proj.weight", "v_proj.weight", "a_proj.weight", "b_proj.weight", "A_log",
                 "dt_bias", "q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight", "g_proj.weight",
                 "o_norm.weight", "o_proj.weight"}
    else:
        m = fla.DeltaNet(d_model=16, num_heads=2, use_beta=True, use_gate=True)
        names = {"q_proj.weight", "k_proj.weight", "v_proj.weight", "b_proj.weight", "q_conv1d.weight",
                 "k_conv1d.weight", "v_conv1d.weight", "g_proj.weight", "o_norm.weight", "o_proj.weight"}
    assert {n for n, _ in m.named_parameters()} == names
    x = torch.randn(2, 12, 16)
    moved = x.clone()
    moved[:, 7:] += 1.0
    with torch.no_grad():
        a, none, cache = m(x)
        b = m(moved)[0]
    assert a.shape == x.shape and none is None and cache is None
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.equal(a[:, 7:], b[:, 7:])
    packed = m(x.reshape(1, 24, 16), cu_seqlens=torch.tensor([0, 12, 24]))[0]
    assert torch.allclose(packed.reshape(2, 12, 16), a, atol=1e-5)
    with pytest.raises(NotEmulated, match="padding attention_mask"):
        m(x, attention_mask=torch.tensor([[1] * 12, [0] + [1] * 11]))
    with pytest.raises(NotEmulated, match="decode cache"):
        m(x, use_cache=True)


def test_install_provides_the_emulated_imports_and_names_the_others():
    # in a fresh interpreter: sys.modules here stays as it is
    code = (
        "import torch\n"
        "from harness.dynamic.cpu import fla; assert fla.install()\n"
        "from fla.layers import GatedDeltaNet, GatedDeltaProduct, Mamba2\n"
        "from fla.layers.delta_net import DeltaNet\n"
        "from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule\n"
        "from fla.ops.gated_delta_rule import chunk_gated_delta_rule\n"
        "from fla.modules.convolution import causal_conv1d, ShortConvolution\n"
        "from fla.modules import FusedRMSNormGated, RMSNorm\n"
        "import fla.ops.gated_delta_rule.chunk as chunk, fla.ops.gated_delta_rule.naive as naive\n"
        "import fla.layers.gated_deltanet as layer\n"
        # a script may swap the layer module's kernel (PR #1545's naive path): the layer uses the swap
        "seen = []\n"
        "def swapped(q, k, v, g, beta, **kw):\n"
        "    seen.append(q.shape)\n"
        "    return naive.naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64)\n"
        "layer.chunk_gated_delta_rule = swapped\n"
        "m = GatedDeltaNet(hidden_size=16, expand_v=1, head_dim=8, num_heads=2)\n"
        "m(torch.randn(1, 5, 16))\n"
        "assert seen == [torch.Size([1, 5, 2, 8])], seen\n"
        "y, state = causal_conv1d(torch.randn(1, 5, 4), torch.randn(4, 3))\n"
        "assert y.shape == (1, 5, 4) and state is None\n"
        "try:\n    GatedDeltaProduct(hidden_size=16)\nexcept NotImplementedError as e:\n    print(e)\n"
        "try:\n    from fla.ops.simple_gla import chunk_simple_gla\n"
        "except ModuleNotFoundError as e:\n    print(e)\n"
    )
    product, missing = run_fresh(code)
    assert product == "fla layers.GatedDeltaProduct is not emulated by golf-audit"
    assert missing == "No module named 'fla.ops.simple_gla'"
    assert explain_missing(missing).startswith("`fla.ops.simple_gla` is not emulated")
