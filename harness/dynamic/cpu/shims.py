"""Runtime shims that let CUDA-only contest scripts run eagerly on a CPU.

Installed by `harness.dynamic.run.bootstrap` inside the sandboxed subprocess, before the
submission runs. Every shim that fires is named in `ShimState.used` so reports can say what
was changed ("ran eager: torch.compile shimmed", "autocast(cuda, bf16) ran in float32", ...).
The list follows /work/shared/notes/real-scripts-on-cpu.md items 1-11.

Composition with the tracer: `install()` pushes one global TorchFunctionMode (device
rewriting) on the main thread and in every new thread. The tracer installs *after* the shims,
so its modes sit above ours; it calls `register_thread_hook()` to push its own modes in new
threads after ours. Nothing here uses private `torch._C` calls.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any, Callable

import torch

from harness.dynamic.cpu import fla, mamba

_REAL: dict[str, Any] = {}  # originals, for uninstall() in tests


@dataclass
class ShimOptions:
    autocast: str = "float32"  # "float32": cuda autocast regions run in fp32; "bf16": CPU bf16 autocast
    fake_gpu_name: str = "NVIDIA H100 80GB HBM3"  # what a real run reads: no sign of the audit
    sm_count: int = 132
    bin_dir: str | None = None  # where to write the fake nvidia-smi (prepended to PATH)


@dataclass
class ShimState:
    options: ShimOptions = field(default_factory=ShimOptions)
    used: set[str] = field(default_factory=set)  # shims that actually fired
    installed: list[str] = field(default_factory=list)  # shims put in place
    thread_hooks: list[Callable[[], Any]] = field(default_factory=list)
    mode: Any = None
    eager_only: bool = False  # torch.compile runs eager: dynamo never evaluates a frame

    def note(self, what: str) -> None:
        self.used.add(what)


STATE: ShimState | None = None


# ---------------------------------------------------------------- who is calling?
_LIB_PREFIXES: tuple[str, ...] = ()


def _lib_prefixes() -> tuple[str, ...]:
    global _LIB_PREFIXES
    if not _LIB_PREFIXES:
        import sysconfig
        paths = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        paths |= {str(Path(torch.__file__).parent), str(Path(__file__).resolve().parents[2])}  # the harness package
        _LIB_PREFIXES = tuple(sorted(p.rstrip("/") + "/" for p in paths if p))
    return _LIB_PREFIXES


def _caller_is_submission(depth: int = 2) -> bool:
    """True when the frame `depth` up is submission code: anything outside the standard
    library, site-packages, torch and golf-audit (packed code exec'd as "<string>" counts)."""
    try:
        filename = sys._getframe(depth).f_code.co_filename
    except ValueError:
        return False
    return not filename.startswith(_lib_prefixes()) and not filename.startswith("<frozen ")


# ---------------------------------------------------------------- devices
def _is_cuda(dev: Any) -> bool:
    if isinstance(dev, str):
        return dev == "cuda" or dev.startswith("cuda:")
    if isinstance(dev, _REAL.get("device", torch.device)):
        return dev.type == "cuda"
    return False


class _DeviceMeta(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, _REAL["device"])

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _REAL["device"])

    def __call__(cls, *args: Any, **kwargs: Any):
        real = _REAL["device"]
        first = args[0] if args else kwargs.get("type")
        # Only the submission's devices move: torch's own code (fork_rng, amp) builds
        # torch.device("cuda") to probe CUDA and must keep seeing the real answer.
        if _is_cuda(first) and _caller_is_submission():
            STATE.note("device('cuda') -> cpu")
            return real("cpu")
        return real(*args, **kwargs)


class _FakeDevice(metaclass=_DeviceMeta):
    """Stands in for torch.device: construction maps cuda to cpu; isinstance still works."""


def _map_device_arg(value: Any) -> Any:
    if _is_cuda(value):
        STATE.note("device='cuda' -> cpu")
        return _REAL["device"]("cpu")
    return value


class _DeviceMode(torch.overrides.TorchFunctionMode):
    """Rewrites device='cuda' keyword arguments, .to('cuda'), .cuda() and pin_memory."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs:
            dev = kwargs.get("device")
            if dev is not None and _is_cuda(dev):
                kwargs = dict(kwargs)
                kwargs["device"] = _map_device_arg(dev)
            if kwargs.get("pin_memory"):
                kwargs = dict(kwargs)
                kwargs["pin_memory"] = False
                STATE.note("pin_memory -> off")
        if func is _TENSOR_CUDA:
            STATE.note(".cuda() -> cpu")
            return args[0]
        if func is _TENSOR_PIN:
            STATE.note("pin_memory -> off")
            return args[0]
        if func is _TENSOR_TO and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], _map_device_arg(args[1])) + tuple(args[2:])
        if _F32_REGION.depth and func in _AUTOCAST_MATMULS:
            args = _upcast_mixed(args)
        return func(*args, **kwargs)


# Inside a float32 autocast(cuda) region, a matmul of bf16 weights with fp32 activations fails
# on the CPU, where CUDA autocast would have cast both to one dtype. Casting both to float32
# keeps such scripts off CPU bf16 (measured ~9x slower) and off the failed-then-rerun path.
# Outside any autocast(cuda) region the error stays, as on a GPU.
class _Region(threading.local):
    depth = 0


_F32_REGION = _Region()
_AUTOCAST_MATMULS = {
    torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.einsum,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.Tensor.mm,
    torch.Tensor.bmm, torch.nn.functional.linear, torch.nn.functional.scaled_dot_product_attention,
}


def _upcast_mixed(args: tuple) -> tuple:
    """float32 for every floating tensor argument when they mix dtypes; as given otherwise."""
    dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
    if len(dtypes) < 2:
        return args
    STATE.note("autocast(cuda) float32: mixed-dtype matmul inputs cast to float32")
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


_TENSOR_CUDA = torch.Tensor.cuda
_TENSOR_PIN = torch.Tensor.pin_memory
_TENSOR_TO = torch.Tensor.to


# ---------------------------------------------------------------- torch.cuda
class _FakeEvent:
    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.t: float | None = None

    def record(self, stream: Any = None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: "_FakeEvent") -> float:
        return ((end.t or 0.0) - (self.t or 0.0)) * 1000.0


class _FakeStream:
    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any):
        self.device = _REAL["device"]("cpu")

    def synchronize(self) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> _FakeEvent:
        event = event or _FakeEvent()
        event.record()
        return event

    def query(self) -> bool:
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _fake_props(options: ShimOptions) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=options.fake_gpu_name, multi_processor_count=options.sm_count,
                                 total_memory=80 * (1 << 30), major=9, minor=0,
                                 is_integrated=False, is_multi_gpu_board=False,
                                 L2_cache_size=50 * (1 << 20), warp_size=32)


def _install_cuda(state: ShimState) -> None:
    cuda = torch.cuda
    opts = state.options
    real_is_available = cuda.is_available
    real_device_count = cuda.device_count
    _REAL["cuda.is_available"] = real_is_available
    _REAL["cuda.device_count"] = real_device_count

    def is_available() -> bool:
        # torch's own code must keep seeing False (dynamo/rng paths crash otherwise);
        # the submission sees a GPU so `assert torch.cuda.is_available()` passes.
        if _caller_is_submission():
            state.note("torch.cuda.is_available() -> True for the submission")
            return True
        return real_is_available()

    def device_count() -> int:
        if _caller_is_submission():
            return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return real_device_count()

    def noop(name: str):
        label = name if name.startswith("backends.") else f"cuda.{name}"

        def f(*args: Any, **kwargs: Any) -> None:
            state.note(f"torch.{label}: no-op")
            return None
        f.__name__ = name
        return f

    def zero(*args: Any, **kwargs: Any) -> int:
        return 0

    replacements: dict[str, Any] = {
        "is_available": is_available,
        "device_count": device_count,
        "current_device": lambda: int(os.environ.get("LOCAL_RANK", "0")),
        "get_device_name": lambda *a, **k: opts.fake_gpu_name,
        "get_device_properties": lambda *a, **k: _fake_props(opts),
        "get_device_capability": lambda *a, **k: (9, 0),
        "is_bf16_supported": lambda *a, **k: True,
        "max_memory_allocated": zero, "max_memory_reserved": zero,
        "memory_allocated": zero, "memory_reserved": zero,
        "mem_get_info": lambda *a, **k: (80 * (1 << 30), 80 * (1 << 30)),
        "memory_stats": lambda *a, **k: {},
        "Stream": _FakeStream, "Event": _FakeEvent,
        "current_stream": lambda *a, **k: _FakeStream(),
        "default_stream": lambda *a, **k: _FakeStream(),
        "stream": lambda *a, **k: contextlib.nullcontext(),
        "device": lambda *a, **k: contextlib.nullcontext(),
    }
    for name in ("set_device", "synchronize", "manual_seed", "manual_seed_all", "seed", "seed_all",
                 "empty_cache", "reset_peak_memory_stats", "reset_max_memory_allocated",
                 "reset_max_memory_cached", "reset_accumulated_memory_stats",
                 "set_per_process_memory_fraction", "ipc_collect", "init", "set_sync_debug_mode"):
        replacements[name] = noop(name)
    for name, value in replacements.items():
        _REAL.setdefault("cuda." + name, getattr(cuda, name, None))
        setattr(cuda, name, value)
    cuda.nvtx = types.SimpleNamespace(range_push=lambda *a, **k: None, range_pop=lambda *a, **k: None,
                                      range=lambda *a, **k: contextlib.nullcontext(),
                                      mark=lambda *a, **k: None)
    state.installed.append("torch.cuda.* -> CPU no-ops / fake H100 properties")

    # torch.backends.cuda setters: keep every CPU SDPA backend enabled.
    bc = torch.backends.cuda
    for name in ("enable_flash_sdp", "enable_mem_efficient_sdp", "enable_math_sdp", "enable_cudnn_sdp",
                 "enable_math_sdp", "allow_fp16_bf16_reduction_math_sdp", "preferred_linalg_library",
                 "preferred_blas_library", "preferred_rocm_fa_library"):
        if hasattr(bc, name):
            _REAL.setdefault("backends.cuda." + name, getattr(bc, name))
            setattr(bc, name, noop("backends.cuda." + name))
    if hasattr(bc, "sdp_kernel"):
        _REAL.setdefault("backends.cuda.sdp_kernel", bc.sdp_kernel)
        bc.sdp_kernel = lambda *a, **k: contextlib.nullcontext()


# ---------------------------------------------------------------- compile / dynamo
def _install_compile(state: ShimState) -> None:
    _REAL.setdefault("compile", torch.compile)

    def compile_(model: Any = None, **kwargs: Any):
        state.note("torch.compile -> identity (ran eager)")
        if model is None:  # used as @torch.compile(...)
            return lambda fn: fn
        return model

    torch.compile = compile_
    state.eager_only = True
    try:
        import torch._dynamo as dynamo
        _REAL.setdefault("dynamo.reset", dynamo.reset)
        dynamo.reset = lambda: None
    except Exception:  # pragma: no cover - very old torch
        pass
    if hasattr(torch, "compiler"):
        for name in ("cudagraph_mark_step_begin", "reset"):
            if hasattr(torch.compiler, name):
                _REAL.setdefault("compiler." + name, getattr(torch.compiler, name))
                setattr(torch.compiler, name, lambda *a, **k: None)
    state.installed.append("torch.compile -> identity; dynamo.reset/cudagraph_mark_step_begin no-ops")


# ---------------------------------------------------------------- autocast / inference_mode
def _install_autocast(state: ShimState) -> None:
    real = torch.autocast
    _REAL.setdefault("autocast", real)
    fp32 = state.options.autocast == "float32"

    class autocast(real):  # subclass keeps isinstance and decorator use working
        def __init__(self, device_type: str = "cuda", dtype: Any = None, enabled: bool = True,
                     cache_enabled: bool | None = None):
            self._f32_region = False
            if device_type == "cuda":
                if fp32:
                    state.note("autocast(cuda) -> float32 (autocast off; CPU bf16 autocast ~9x slower)")
                    # enabled or not: scripts write `enabled=device.type == "cuda"`, which the
                    # device shim turns False, while the GPU run mixes dtypes under autocast
                    self._f32_region = True
                    enabled = False
                else:
                    state.note("autocast(cuda) -> autocast(cpu, bf16)")
                    dtype = torch.bfloat16 if dtype in (None, torch.float16) else dtype
                device_type = "cpu"
                if dtype is None:
                    dtype = torch.bfloat16
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

        def __enter__(self):
            if getattr(self, "_f32_region", False):
                _F32_REGION.depth += 1
            return super().__enter__()

        def __exit__(self, *exc: Any):
            if getattr(self, "_f32_region", False):
                _F32_REGION.depth -= 1
            return super().__exit__(*exc)

    torch.autocast = autocast
    torch.amp.autocast = autocast
    try:
        import torch.amp.autocast_mode as am
        am.autocast = autocast
    except Exception:
        pass

    def cuda_amp_autocast(enabled: bool = True, dtype: Any = torch.float16, cache_enabled: bool = True):
        return autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    _REAL.setdefault("cuda.amp.autocast", torch.cuda.amp.autocast)
    torch.cuda.amp.autocast = cuda_amp_autocast
    state.installed.append(f"autocast(cuda) -> CPU ({state.options.autocast})")


class _InferenceModeAsNoGrad(torch.utils._contextlib._DecoratorContextManager):
    """inference_mode(True) behaves as no_grad: without compile, caches (rotary tables) get
    built inside inference_mode during scoring and a later TTT backward fails with
    "Inference tensors cannot be saved for backward". Autograd stays off as before."""

    def __init__(self, mode: bool = True) -> None:
        self.mode = mode

    def __new__(cls, mode: bool = True):
        if isinstance(mode, bool):
            return super().__new__(cls)
        return cls()(mode)  # bare decorator: @torch.inference_mode

    def __enter__(self) -> None:
        self.prev = torch.is_grad_enabled()
        if self.mode:
            STATE.note("inference_mode -> no_grad (inference tensors break later TTT backward on eager CPU)")
            torch.set_grad_enabled(False)

    def __exit__(self, *exc: Any) -> None:
        torch.set_grad_enabled(self.prev)

    def clone(self):
        return self.__class__(self.mode)


def _install_inference_mode(state: ShimState) -> None:
    _REAL.setdefault("inference_mode", torch.inference_mode)
    torch.inference_mode = _InferenceModeAsNoGrad
    torch.autograd.inference_mode = _InferenceModeAsNoGrad
    torch.autograd.grad_mode.inference_mode = _InferenceModeAsNoGrad
    state.installed.append("inference_mode -> no_grad")


# ---------------------------------------------------------------- flash attention
def _sdpa_bshd(q, k, v, causal: bool, softmax_scale: float | None, window_left: int = -1):
    """q: (B, S, H, D), k/v: (B, S, Hkv, D) -> (B, S, H, D), via scaled_dot_product_attention."""
    import torch.nn.functional as F
    h, hkv = q.shape[2], k.shape[2]
    if hkv != h:  # GQA: repeat key/value heads
        k = k.repeat_interleave(h // hkv, dim=2)
        v = v.repeat_interleave(h // hkv, dim=2)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    mask = None
    if window_left is not None and window_left >= 0:
        sq, sk = qt.shape[2], kt.shape[2]
        i = torch.arange(sq).unsqueeze(1) + (sk - sq)
        j = torch.arange(sk).unsqueeze(0)
        mask = (j <= i) & (j >= i - window_left) if causal else (j >= i - window_left)
        causal = False
    elif causal and qt.shape[2] != kt.shape[2]:
        sq, sk = qt.shape[2], kt.shape[2]
        mask = torch.arange(sk).unsqueeze(0) <= torch.arange(sq).unsqueeze(1) + (sk - sq)
        causal = False
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2)


def flash_attn_func(q, k, v, dropout_p: float = 0.0, softmax_scale: float | None = None,
                    causal: bool = False, window_size: tuple[int, int] = (-1, -1), *args: Any,
                    return_attn_probs: bool = False, **kwargs: Any):
    STATE.note("flash_attn -> scaled_dot_product_attention")
    out = _sdpa_bshd(q, k, v, causal, softmax_scale, window_size[0] if window_size else -1)
    return (out, None) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int = 0,
                           max_seqlen_k: int = 0, dropout_p: float = 0.0,
                           softmax_scale: float | None = None, causal: bool = False,
                           window_size: tuple[int, int] = (-1, -1), *args: Any,
                           return_attn_probs: bool = False, **kwargs: Any):
    """q: (total_q, H, D) packed sequences delimited by cu_seqlens; each attends only to itself."""
    STATE.note("flash_attn_varlen -> per-sequence scaled_dot_product_attention")
    outs = []
    cq = [int(x) for x in cu_seqlens_q.tolist()]
    ck = [int(x) for x in cu_seqlens_k.tolist()]
    for (qa, qb), (ka, kb) in zip(zip(cq, cq[1:]), zip(ck, ck[1:])):
        if qb == qa:
            continue
        o = _sdpa_bshd(q[qa:qb].unsqueeze(0), k[ka:kb].unsqueeze(0), v[ka:kb].unsqueeze(0),
                       causal, softmax_scale, window_size[0] if window_size else -1)
        outs.append(o.squeeze(0))
    out = torch.cat(outs, dim=0) if outs else q.new_zeros(q.shape)
    return (out, None) if return_attn_probs else out


def _install_flash_attn(state: ShimState) -> None:
    for name in ("flash_attn_interface", "flash_attn", "flash_attn.flash_attn_interface"):
        if name in sys.modules:
            continue
        mod = types.ModuleType(name)
        mod.__spec__ = ModuleSpec(name, None)
        mod.__file__ = f"<golf-audit shim {name}>"
        mod.flash_attn_func = flash_attn_func
        mod.flash_attn_varlen_func = flash_attn_varlen_func
        mod.__golf_audit_shim__ = True
        sys.modules[name] = mod
    sys.modules["flash_attn"].flash_attn_interface = sys.modules["flash_attn.flash_attn_interface"]
    state.installed.append("flash_attn_interface/flash_attn -> SDPA (causal, GQA, window, varlen)")


# ---------------------------------------------------------------- triton
class TritonUnavailable(RuntimeError):
    pass


_STATE_NOTE: Callable[[str], None] = lambda msg: None  # set by _install_triton


class _StubKernel:
    def __init__(self, fn: Callable | None = None, **kwargs: Any):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "kernel")

    def __getitem__(self, grid: Any):
        def launch(*args: Any, **kwargs: Any):
            from harness.dynamic.cpu import kernels

            if self.fn is not None and kernels.launch(self.fn, self.__name__, args, kwargs):
                _STATE_NOTE(f"triton kernel {self.__name__} -> torch emulation (harness/dynamic/cpu/kernels.py)")
                return None
            raise TritonUnavailable(
                f"triton kernel {self.__name__!r} launched: no torch emulation for it and no triton "
                "(golf-audit stub). Add one to harness/dynamic/cpu/kernels.py, or set "
                "GOLF_AUDIT_TRITON_INTERPRET=1 with triton installed to try Triton's CPU interpreter.")
        return launch

    def __call__(self, *args: Any, **kwargs: Any):
        return self[None](*args, **kwargs)


def _stub_decorator(*dargs: Any, **dkwargs: Any):
    if len(dargs) == 1 and callable(dargs[0]) and not dkwargs:
        return _StubKernel(dargs[0])
    return lambda fn: fn if isinstance(fn, _StubKernel) else _StubKernel(fn)


class _Anything:
    """Attribute sink for triton.language (tl.constexpr in annotations, tl.float32, ...)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, item: str) -> "_Anything":
        if item.startswith("__"):
            raise AttributeError(item)
        return _Anything(f"{self._name}.{item}")

    def __call__(self, *args: Any, **kwargs: Any) -> "_Anything":
        return self

    def __getitem__(self, item: Any) -> "_Anything":
        return self

    def __repr__(self) -> str:
        return f"<golf-audit triton stub {self._name}>"


def _install_triton(state: ShimState) -> None:
    try:
        import importlib.util
        real = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        real = False
    # Triton's interpreter computed the TMA-descriptor kernels of the April records wrongly
    # (NaN losses): the stub with torch emulations is the default, the interpreter opt-in.
    if real and os.environ.get("GOLF_AUDIT_TRITON_INTERPRET") == "1":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        state.installed.append("triton: real package, kernels run in the interpreter (TRITON_INTERPRET=1)")
        return
    global _STATE_NOTE
    _STATE_NOTE = state.note
    # Prime torch's cached triton detection with the truth (no triton) before the stub exists.
    try:
        import torch.utils._triton as tt
        tt.has_triton_package()
        tt.has_triton()
    except Exception:
        pass
    triton = types.ModuleType("triton")
    triton.__spec__ = ModuleSpec("triton", None)
    triton.__golf_audit_shim__ = True
    triton.__version__ = "0.0.0+golf-audit-stub"
    triton.jit = _stub_decorator
    triton.autotune = lambda *a, **k: _stub_decorator
    triton.heuristics = lambda *a, **k: _stub_decorator
    triton.Config = lambda *a, **k: types.SimpleNamespace(args=a, kwargs=k)
    triton.cdiv = lambda a, b: -(-a // b)
    triton.next_power_of_2 = lambda n: 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
    language = _Anything("triton.language")
    lang_mod = types.ModuleType("triton.language")
    lang_mod.__getattr__ = lambda name: getattr(language, name)  # PEP 562
    lang_mod.constexpr = type("constexpr", (), {})
    triton.language = lang_mod
    tools = types.ModuleType("triton.tools")
    td = types.ModuleType("triton.tools.tensor_descriptor")

    class TensorDescriptor:
        """Keeps the tensor a kernel emulation reads and writes (harness/dynamic/cpu/kernels.py)."""

        def __init__(self, base: Any = None, shape: Any = None, strides: Any = None, block_shape: Any = None):
            self.base, self.shape, self.strides, self.block_shape = base, shape, strides, block_shape

        @staticmethod
        def from_tensor(tensor: Any, block_shape: Any = None, *args: Any, **kwargs: Any):
            return TensorDescriptor(tensor, getattr(tensor, "shape", None), None, block_shape)

    td.TensorDescriptor = TensorDescriptor
    tools.tensor_descriptor = td
    triton.tools = tools
    for name, mod in {"triton": triton, "triton.language": lang_mod, "triton.tools": tools,
                      "triton.tools.tensor_descriptor": td}.items():
        mod.__spec__ = ModuleSpec(name, None)
        sys.modules[name] = mod
    state.installed.append("triton: stub; known kernels run as torch emulations, others fail clearly")


# ---------------------------------------------------------------- distributed
def _install_distributed(state: ShimState) -> None:
    import torch.distributed as dist
    if not dist.is_available():
        return
    real_init = dist.init_process_group
    _REAL.setdefault("dist.init_process_group", real_init)

    def init_process_group(backend: Any = None, *args: Any, **kwargs: Any):
        if backend is not None and "nccl" in str(backend):
            state.note(f"init_process_group({backend!r}) -> gloo")
            backend = "gloo"
        if kwargs.pop("device_id", None) is not None:
            state.note("init_process_group: device_id dropped")
        return real_init(backend, *args, **kwargs)

    dist.init_process_group = init_process_group
    real_new_group = dist.new_group
    _REAL.setdefault("dist.new_group", real_new_group)

    def new_group(*args: Any, **kwargs: Any):
        if "nccl" in str(kwargs.get("backend", "")):
            kwargs["backend"] = "gloo"
        return real_new_group(*args, **kwargs)

    dist.new_group = new_group
    real_barrier = dist.barrier
    _REAL.setdefault("dist.barrier", real_barrier)

    def barrier(*args: Any, **kwargs: Any):
        kwargs.pop("device_ids", None)
        return real_barrier(*args, **kwargs)

    dist.barrier = barrier

    # Tearing the default gloo group down races with DDP's destructor (the group's destructor
    # waits for a gloo worker thread that waits for the GIL the freeing thread holds): about 3
    # in 10 runs hung there. The bootstrap leaves with os._exit, so the group needs no teardown.
    real_destroy = dist.destroy_process_group
    _REAL.setdefault("dist.destroy_process_group", real_destroy)

    def destroy_process_group(group: Any = None):
        if group is not None:
            return real_destroy(group)
        state.note("destroy_process_group: deferred to process exit (gloo teardown race)")

    dist.destroy_process_group = destroy_process_group

    from torch.nn.parallel import DistributedDataParallel as DDP
    real_ddp_init = DDP.__init__
    _REAL.setdefault("DDP.__init__", real_ddp_init)

    def ddp_init(self, module, device_ids=None, output_device=None, *args: Any, **kwargs: Any):
        if device_ids is not None or output_device is not None:
            state.note("DDP device_ids -> None")
        return real_ddp_init(self, module, None, None, *args, **kwargs)

    DDP.__init__ = ddp_init
    state.installed.append("distributed: nccl -> gloo, device_id dropped, DDP device_ids=None")


# ---------------------------------------------------------------- misc tensor-level
def _install_tensor(state: ShimState) -> None:
    real_is_cuda = torch._C.TensorBase.is_cuda  # getset descriptor of the base class

    def is_cuda(self) -> bool:
        if _caller_is_submission():
            state.note("Tensor.is_cuda -> True for the submission")
            return True
        return real_is_cuda.__get__(self)

    torch.Tensor.is_cuda = property(is_cuda)
    _REAL.setdefault("Tensor.is_cuda", real_is_cuda)

    def module_cuda(self, device: Any = None):
        state.note(".cuda() -> cpu")
        return self

    _REAL.setdefault("Module.cuda", torch.nn.Module.cuda)
    torch.nn.Module.cuda = module_cuda

    real_load = torch.load
    _REAL.setdefault("load", real_load)

    @functools.wraps(real_load)
    def load(*args: Any, **kwargs: Any):
        ml = kwargs.get("map_location")
        if ml is not None and (_is_cuda(ml) or isinstance(ml, dict)):
            kwargs["map_location"] = "cpu"
        return real_load(*args, **kwargs)

    torch.load = load

    real_default = torch.set_default_device
    _REAL.setdefault("set_default_device", real_default)
    torch.set_default_device = lambda d: real_default("cpu" if _is_cuda(d) else d)

    _REAL.setdefault("device", torch.device)
    torch.device = _FakeDevice
    state.installed.append("torch.device('cuda') -> cpu; Tensor.is_cuda True for the submission; "
                           "device kwargs / .cuda() / pin_memory via TorchFunctionMode")


# ---------------------------------------------------------------- nvidia-smi
_FAKE_NVIDIA_SMI = """#!/bin/sh
# a CPU run's stand-in: the line a real `nvidia-smi -L` prints, nothing that reads as an audit
echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)"
exit 0
"""


def _install_nvidia_smi(state: ShimState) -> None:
    bin_dir = state.options.bin_dir
    if not bin_dir:
        return
    path = Path(bin_dir) / "nvidia-smi"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_FAKE_NVIDIA_SMI)
    path.chmod(0o755)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    state.installed.append("fake nvidia-smi on PATH")


# ---------------------------------------------------------------- threads
def register_thread_hook(hook: Callable[[], Any]) -> None:
    """`hook()` is called at the start of every new thread (after the device mode is pushed);
    a context manager it returns is entered for the thread's lifetime."""
    if STATE is not None:
        STATE.thread_hooks.append(hook)


def _install_threads(state: ShimState) -> None:
    real = threading.Thread._bootstrap_inner
    _REAL.setdefault("Thread._bootstrap_inner", real)

    def bootstrap_inner(self) -> None:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(_DeviceMode())
                for hook in list(state.thread_hooks):
                    cm = hook()
                    if cm is not None:
                        stack.enter_context(cm)
            except Exception:
                pass
            real(self)

    threading.Thread._bootstrap_inner = bootstrap_inner


# ---------------------------------------------------------------- entry points
def install(options: ShimOptions | None = None) -> ShimState:
    """Install every shim (idempotent). Returns the state; `describe()` lists what fired."""
    global STATE
    if STATE is not None:
        return STATE
    state = STATE = ShimState(options=options or ShimOptions())
    _install_triton(state)  # before anything imports triton
    _install_compile(state)
    _install_cuda(state)
    _install_autocast(state)
    _install_inference_mode(state)
    _install_flash_attn(state)
    if mamba.install(state.note):
        state.installed.append(f"mamba_ssm -> torch emulation: {mamba.EMULATED}")
    if fla.install(state.note):
        state.installed.append(f"fla -> torch emulation: {fla.EMULATED}")
    _install_distributed(state)
    _install_tensor(state)
    _install_nvidia_smi(state)
    _install_threads(state)
    state.mode = _DeviceMode()
    state.mode.__enter__()
    return state


def describe() -> list[str]:
    """What the shims changed during this run (fired shims first, then everything installed)."""
    if STATE is None:
        return []
    return [f"used: {u}" for u in sorted(STATE.used)] + [f"installed: {i}" for i in STATE.installed]
