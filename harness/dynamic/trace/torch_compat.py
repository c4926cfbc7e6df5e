"""Every private PyTorch hook the tracer relies on, in one place.

The tracer (harness/dynamic/trace/tracer/) interposes at three levels: a `TorchDispatchMode`
(aten ops, forward and backward), plain monkey-patches of a few public entry points
(Tensor.numpy/.tolist, torch.distributed collectives) and the public optimizer/module hooks.
Only the dispatch-mode base class and two facts about the current autograd state need private
torch APIs; they live here so a torch upgrade breaks one small file, loudly.

Checked against torch 2.13 (CPU build).
"""
from __future__ import annotations

from typing import Any

import torch

# The dispatch-mode base class. Public in spirit (FlopCounterMode, DebugMode, SchemaCheckMode
# are built on it) but it lives in a private module.
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: F401

__all__ = ["TorchDispatchMode", "in_backward", "op_callable", "takes_tensor_list", "storage_of", "storage_nelems",
           "mutated_args", "is_pointwise", "dispatch_mode_stack", "op_name", "hook_is_registered"]


def in_backward() -> bool:
    """True while the autograd engine runs a backward node on this thread (the op being
    dispatched computes a gradient)."""
    return torch._C._current_autograd_node() is not None


def op_callable(func: Any) -> Any:
    """What runs `func`: a plain OpOverload's C++ entry point (its `__call__` is a Python frame
    that only calls `_op`: ~0.2 us an op under a dispatch mode), else the op itself."""
    op = getattr(func, "_op", None)
    if op is not None and type(func).__call__ is torch._ops.OpOverload.__call__:
        return op
    return func


def takes_tensor_list(func: Any) -> bool:
    """Does the op's schema take a list of tensors (cat, stack, index, the foreach ops)?"""
    try:
        return any(isinstance(a.type, torch.ListType) and "Tensor" in str(a.type) for a in func._schema.arguments)
    except AttributeError:  # not an OpOverload
        return False


def storage_of(t: torch.Tensor) -> Any:
    """The tensor's UntypedStorage. Its Python object is preserved by torch for as long as the
    storage lives (the same object comes back for every view, `.data`, `.detach()`), and it can
    be weakly referenced: the tracer keys provenance by it."""
    return t.untyped_storage()


def storage_nelems(t: torch.Tensor) -> int:
    """How many elements of t's dtype the storage holds."""
    return t.untyped_storage().nbytes() // t.element_size()


_MUTATED: dict[Any, tuple[tuple[int, ...], tuple[str, ...]]] = {}


def mutated_args(func: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(positional indices, keyword names) of the arguments an aten op writes, from its schema
    (`Tensor(a!)`). Cached per overload."""
    hit = _MUTATED.get(func)
    if hit is not None:
        return hit
    pos: list[int] = []
    kw: list[str] = []
    try:
        for i, a in enumerate(func._schema.arguments):
            info = a.alias_info
            if info is not None and info.is_write:
                if a.kwarg_only:
                    kw.append(a.name)
                else:
                    pos.append(i)
    except AttributeError:  # not an OpOverload (HOP, custom callable)
        pass
    hit = (tuple(pos), tuple(kw))
    _MUTATED[func] = hit
    return hit


_POINTWISE: dict[Any, bool] = {}


def is_pointwise(func: Any) -> bool:
    """aten's own `pointwise` tag (add, mul, bitwise_xor, remainder, eq, where, ...)."""
    hit = _POINTWISE.get(func)
    if hit is None:
        try:
            hit = torch.Tag.pointwise in func.tags
        except AttributeError:
            hit = False
        _POINTWISE[func] = hit
    return hit


def op_name(func: Any) -> str:
    """'aten::add_' style name of an OpOverload (packet name without the overload)."""
    try:
        return func._schema.name
    except AttributeError:
        return str(func)


def namespace(func: Any) -> str:
    try:
        return func.namespace
    except AttributeError:
        return ""


_COMPOSITE: dict[Any, bool] = {}


def is_composite_implicit(func: Any) -> bool:
    """Ops with a CompositeImplicitAutograd kernel (matmul, linear, cross_entropy_loss, reshape,
    ...). Autograd normally decomposes them before a dispatch mode sees them, but under
    `inference_mode` (autograd key excluded) they reach the mode whole; the tracer then
    decomposes them itself (`func.decompose`, as FlopCounterMode does) so the same rules see
    the same primitive ops in every grad mode."""
    hit = _COMPOSITE.get(func)
    if hit is None:
        try:
            hit = bool(torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), torch._C.DispatchKey.CompositeImplicitAutograd))
        except (AttributeError, RuntimeError):
            hit = False
        _COMPOSITE[func] = hit
    return hit


def decompose(func: Any, args: tuple, kwargs: dict) -> Any:
    """Run a CompositeImplicitAutograd op through its decomposition (NotImplemented if none)."""
    return func.decompose(*args, **kwargs)


def hook_is_registered(handle: Any) -> bool:
    """Is the hook behind this RemovableHandle still in the dict it was registered in? (a
    submission may clear torch's global hook dicts instead of calling handle.remove())"""
    try:
        hooks = handle.hooks_dict_ref()
        return hooks is not None and handle.id in hooks
    except AttributeError:  # another torch: cannot tell, do not accuse
        return True


def dispatch_mode_stack() -> list:
    """The dispatch modes active on this thread (for tests/diagnostics, and the tracer's
    integrity check)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return list(_get_current_dispatch_mode_stack())
