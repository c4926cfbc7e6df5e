"""Each CPU shim does what real contest scripts need. The shims patch torch globally, so every
check runs in a fresh interpreter (never in pytest's own process)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_shimmed(tmp_path: Path, body: str, **opts) -> subprocess.CompletedProcess:
    code = ("from harness.dynamic.cpu import shims\n"
            f"state = shims.install(shims.ShimOptions(bin_dir={str(tmp_path / 'bin')!r}, **{opts!r}))\n"
            "import torch\n" + textwrap.dedent(body))
    script = tmp_path / "user_script.py"  # outside torch/site-packages: counts as submission code
    script.write_text(code)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)


def check(tmp_path, body, **opts):
    r = run_shimmed(tmp_path, body, **opts)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_compile_is_identity_and_dynamo_noops(tmp_path):
    out = check(tmp_path, """
        m = torch.nn.Linear(2, 2)
        assert torch.compile(m, dynamic=False, fullgraph=True) is m
        @torch.compile
        def f(x): return x + 1
        @torch.compile(mode="max-autotune")
        def g(x): return x * 2
        assert f(torch.ones(1)).item() == 2 and g(torch.ones(1)).item() == 2
        torch._dynamo.reset(); torch.compiler.cudagraph_mark_step_begin()
        print(shims.describe())
    """)
    assert "torch.compile -> identity (ran eager)" in out


def test_cuda_api_is_faked_for_the_submission_only(tmp_path):
    out = check(tmp_path, """
        assert torch.cuda.is_available()            # the submission sees a GPU
        from torch import cuda
        import torch.random
        assert not torch.cuda._is_compiled()
        torch.cuda.set_device(0); torch.cuda.synchronize(); torch.cuda.manual_seed_all(1)
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        assert torch.cuda.max_memory_allocated() == 0 and torch.cuda.max_memory_reserved() == 0
        assert torch.cuda.get_device_properties(0).multi_processor_count > 0
        assert "H100" in torch.cuda.get_device_name()
        assert torch.cuda.device_count() == 1 and torch.cuda.current_device() == 0
        s = torch.cuda.Stream(); e0 = torch.cuda.Event(enable_timing=True); e1 = torch.cuda.Event(enable_timing=True)
        e0.record(); e1.record(); e1.synchronize(); assert e0.elapsed_time(e1) >= 0
        with torch.cuda.stream(s): pass
        torch.cuda.current_stream().wait_stream(s)
        # torch's own code keeps seeing no CUDA: fork_rng asks cuda.is_available internally
        with torch.random.fork_rng(): torch.randn(2)
        torch.backends.cuda.enable_flash_sdp(True); torch.backends.cuda.enable_math_sdp(False)
        q = torch.randn(1, 2, 4, 8)
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)  # math SDPA still on
        print("ok")
    """)
    assert "ok" in out


def test_cuda_devices_become_cpu(tmp_path):
    out = check(tmp_path, """
        d = torch.device("cuda", 0)
        assert isinstance(d, torch.device) and d.type == "cpu"
        assert torch.device("cuda:1").type == "cpu" and torch.device("cpu").type == "cpu"
        assert torch.device("meta").type == "meta"
        x = torch.zeros(3, device="cuda")
        y = torch.ones(3).cuda(non_blocking=True)
        z = torch.ones(3).to("cuda:0", non_blocking=True).pin_memory()
        w = torch.empty(2, device=torch.device("cuda"), pin_memory=True)
        m = torch.nn.Linear(2, 2).cuda()
        assert all(t.device.type == "cpu" for t in (x, y, z, w, m.weight))
        assert y.is_cuda                                # scripts assert this
        import threading
        res = []
        t = threading.Thread(target=lambda: res.append(torch.ones(1, device="cuda").device.type))
        t.start(); t.join()
        assert res == ["cpu"], res
        print(shims.describe())
    """)
    assert "device='cuda' -> cpu" in out


def test_autocast_cuda_runs_float32_by_default_and_bf16_on_request(tmp_path):
    body = """
        a = torch.randn(4, 4)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            print((a @ a).dtype)
        with torch.cuda.amp.autocast():
            print((a @ a).dtype)
    """
    assert check(tmp_path, body).split()[:2] == ["torch.float32", "torch.float32"]
    assert check(tmp_path, body, autocast="bf16").split()[:2] == ["torch.bfloat16", "torch.bfloat16"]


def test_float32_autocast_casts_mixed_matmul_inputs_only_inside_the_region(tmp_path):
    """A bf16 model with fp32 LoRA factors (the April phased-TTT records) relies on CUDA autocast
    to mix them; in the float32 region both become float32, outside it the error stays, as on a GPU."""
    out = check(tmp_path, """
        w = torch.randn(4, 4).bfloat16()
        a = torch.randn(2, 4, requires_grad=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            y = a @ w
            z = torch.nn.functional.linear(a, w)
        y.sum().backward()
        print(y.dtype, z.dtype, a.grad.dtype)
        try:
            a @ w
        except RuntimeError:
            print("outside: error")
        # `enabled=device.type == "cuda"` (PRs #826, #846): the device shim makes it False here,
        # while on the GPU the region mixes dtypes; the region still casts
        device = torch.device("cuda")
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            print("device-gated:", (a @ w).dtype)
        print(shims.describe())
    """)
    assert out.split()[:3] == ["torch.float32", "torch.float32", "torch.float32"]
    assert "outside: error" in out and "device-gated: torch.float32" in out
    assert "mixed-dtype matmul inputs cast to float32" in out
    assert check(tmp_path, """
        w = torch.randn(4, 4).bfloat16(); a = torch.randn(2, 4)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            print((a.bfloat16() @ w).dtype)
    """).split()[0] == "torch.bfloat16"  # one dtype: left as the script wrote it


def test_inference_mode_is_no_grad_so_ttt_backward_works(tmp_path):
    out = check(tmp_path, """
        lin = torch.nn.Linear(4, 4)
        cache = {}
        @torch.inference_mode()
        def score(x):
            cache["rot"] = torch.randn(4)          # a cache built while scoring
            return lin(x + cache["rot"]).sum()
        score(torch.randn(2, 4))
        with torch.inference_mode():
            assert not torch.is_grad_enabled()
        assert torch.is_grad_enabled()
        loss = lin(torch.randn(2, 4) * cache["rot"]).sum()
        loss.backward()                             # fails under real inference_mode
        @torch.inference_mode
        def bare(x): return torch.is_grad_enabled()
        assert bare(1) is False
        print("ok")
    """)
    assert "ok" in out


def test_flash_attn_matches_causal_sdpa_with_gqa_and_varlen(tmp_path):
    out = check(tmp_path, """
        import torch.nn.functional as F
        from flash_attn_interface import flash_attn_func, flash_attn_varlen_func
        torch.manual_seed(0)
        B, S, H, KV, D = 2, 10, 4, 2, 8
        q, k, v = torch.randn(B, S, H, D), torch.randn(B, S, KV, D), torch.randn(B, S, KV, D)
        out = flash_attn_func(q, k, v, causal=True)
        kr, vr = k.repeat_interleave(2, 2), v.repeat_interleave(2, 2)
        ref = F.scaled_dot_product_attention(q.transpose(1, 2), kr.transpose(1, 2), vr.transpose(1, 2),
                                             is_causal=True).transpose(1, 2)
        assert torch.allclose(out, ref, atol=1e-5)
        # causality: changing a later position leaves earlier outputs unchanged
        k2 = k.clone(); k2[:, 7] += 1
        assert torch.allclose(flash_attn_func(q, k2, v, causal=True)[:, :7], out[:, :7], atol=1e-6)
        # varlen: two packed sequences attend only within themselves
        cu = torch.tensor([0, 4, 10], dtype=torch.int32)
        vo = flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 6, 6, causal=True)
        a = flash_attn_func(q[:1, :4], k[:1, :4], v[:1, :4], causal=True)[0]
        b = flash_attn_func(q[:1, 4:], k[:1, 4:], v[:1, 4:], causal=True)[0]
        assert torch.allclose(vo, torch.cat([a, b]), atol=1e-5)
        # sliding window (left 2): position 5 ignores keys < 3
        w = flash_attn_func(q, k, v, causal=True, window_size=(2, 0))
        k3 = k.clone(); k3[:, :3] += 5
        assert torch.allclose(flash_attn_func(q, k3, v, causal=True, window_size=(2, 0))[:, 5], w[:, 5], atol=1e-5)
        print("ok")
    """)
    assert "ok" in out


def test_mamba_ssm_imports_run_as_torch_emulations(tmp_path):
    # PR #1644's shape: the Mamba3 module built on "cuda", its projections swapped, the kernel
    # called directly with the module's own tensors, a stateful continuation
    out = check(tmp_path, """
        from mamba_ssm.modules.mamba3 import Mamba3
        from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined
        m = Mamba3(d_model=32, d_state=16, expand=2, headdim=16, chunk_size=8).cuda()
        u = torch.randn(2, 12, 32, device="cuda", requires_grad=True)
        m(u).sum().backward()
        assert u.grad is not None and m.dt_bias.grad is not None
        Q = torch.randn(1, 12, 1, 16); V = torch.randn(1, 12, 4, 16)
        dt = torch.rand(1, 4, 12); kw = dict(ADT=-dt, DT=dt, Trap=torch.zeros(1, 4, 12),
            Q_bias=m.C_bias.squeeze(1), K_bias=m.B_bias.squeeze(1), Angles=torch.randn(1, 12, 4, 4), D=m.D)
        y, *states = mamba3_siso_combined(Q=Q, K=Q, V=V, chunk_size=8, return_final_states=True, **kw)
        assert y.shape == V.shape and len(states) == 4
        print(shims.describe())
    """)
    assert "used: mamba_ssm mamba3_siso_combined -> torch emulation" in out
    assert "installed: mamba_ssm -> torch emulation" in out


def test_distributed_nccl_becomes_gloo(tmp_path):
    out = check(tmp_path, """
        import os, torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29581", RANK="0", WORLD_SIZE="1")
        dist.init_process_group(backend="nccl", device_id=torch.device("cuda", 0))
        assert dist.get_backend() == "gloo"
        m = DDP(torch.nn.Linear(2, 2).cuda(), device_ids=[0], broadcast_buffers=False)
        m(torch.randn(3, 2)).sum().backward()
        t = torch.ones(2); dist.all_reduce(t); dist.barrier(device_ids=[0])
        dist.destroy_process_group()
        print("ok")
    """)
    assert "ok" in out


def test_nvidia_smi_on_path(tmp_path):
    out = check(tmp_path, """
        import subprocess
        print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
    """)
    assert "GPU 0: NVIDIA H100 80GB HBM3" in out
    assert "audit" not in out.lower()  # nothing a submission could read as a sign of the audit


def test_triton_stub_imports_and_fails_clearly_on_launch(tmp_path):
    r = run_shimmed(tmp_path, """
        import importlib.util, sys
        if not getattr(sys.modules.get("triton"), "__golf_audit_shim__", False):
            print("real triton present"); raise SystemExit(0)
        import triton, triton.language as tl
        from triton.tools.tensor_descriptor import TensorDescriptor
        import torch.utils._triton as tt
        assert not tt.has_triton_package()          # torch still sees no triton
        @triton.jit
        def kernel(x_ptr, n, BLOCK: tl.constexpr):
            pass
        assert triton.cdiv(10, 4) == 3
        kernel[(1,)](torch.ones(1), 1, BLOCK=16)
    """)
    if "real triton present" in r.stdout:
        pytest.skip("a real triton package is importable here")
    assert r.returncode != 0
    assert "TritonUnavailable" in r.stderr and "kernel 'kernel' launched" in r.stderr


def test_known_triton_kernels_run_as_torch_emulations(tmp_path):
    """The fused MLP (two forms) and softcapped-CE kernels of the records, written here in their
    launch shape (descriptors / pointer tensors), give what plain torch gives."""
    r = run_shimmed(tmp_path, """
        import sys, torch, torch.nn.functional as F
        import triton, triton.language as tl
        from triton.tools.tensor_descriptor import TensorDescriptor
        assert getattr(triton, "__golf_audit_shim__", False)

        @triton.jit
        def linear_leaky_relu_square_kernel(a_desc, b_desc, c_desc, aux_desc, M, N, K,
                                            BLOCK_SIZE_M: tl.constexpr, FORWARD: tl.constexpr):
            pass

        def fused(a, b, aux=None):
            c = torch.empty(a.shape[0], b.shape[0]); fwd = aux is None
            aux = torch.empty_like(c) if fwd else aux
            d = [TensorDescriptor.from_tensor(t, [16, 16]) for t in (a, b, c, aux)]
            linear_leaky_relu_square_kernel[(1,)](*d, a.shape[0], b.shape[0], a.shape[1], BLOCK_SIZE_M=16,
                                                  FORWARD=fwd, num_warps=8)
            return (c, aux) if fwd else c

        torch.manual_seed(0)
        x, w = torch.randn(8, 5), torch.randn(6, 5)
        pre, post = fused(x, w)
        assert torch.allclose(pre, x @ w.T, atol=1e-5)
        assert torch.allclose(post, F.leaky_relu(x @ w.T, 0.5).square(), atol=1e-5)
        g = torch.randn(8, 6)
        assert torch.allclose(fused(g, torch.eye(6), aux=pre), g * torch.where(pre > 0, 2 * pre, 0.5 * pre), atol=1e-5)

        @triton.jit
        def _fused_leaky_relu_sq_tma_kernel(a_desc, b_desc, c_desc, aux_desc, M, N, K,
                                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
            pass

        act_grad, act = torch.empty(8, 6), torch.empty(8, 6)  # PR #1479: (gradient factor, activation)
        d = [TensorDescriptor.from_tensor(t, [16, 16]) for t in (x, w, act_grad, act)]
        _fused_leaky_relu_sq_tma_kernel[(1,)](*d, 8, 6, 5, BLOCK_M=16, BLOCK_N=16, num_stages=4)
        assert torch.allclose(act, F.leaky_relu(x @ w.T, 0.5).square(), atol=1e-5)
        assert torch.allclose(act_grad, torch.where(pre > 0, 2 * pre, 0.5 * pre), atol=1e-5)

        @triton.jit
        def _softcapped_ce_fwd_kernel(logits_ptr, losses_ptr, lse_ptr, targets_ptr, stride_logits_n,
                                      stride_logits_v, n_rows, n_cols, softcap, block_size: tl.constexpr):
            pass

        logits, t = torch.randn(4, 7) * 20, torch.tensor([0, 3, 6, 2])
        losses, lse = torch.empty(4), torch.empty(4)
        _softcapped_ce_fwd_kernel[(4,)](logits, losses, lse, t, 7, 1, 4, 7, 30.0, block_size=8)
        ref = F.cross_entropy(30.0 * torch.tanh(logits / 30.0), t, reduction="none")
        assert torch.allclose(losses, ref, atol=1e-4), (losses, ref)
        print("emulated ok")
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "emulated ok" in r.stdout
