"""torch.distributed collectives: score tags reaching one are Scored (sink "collective"); the
coarse masks of all ranks' inputs are gathered and unioned into the outputs (an Update when
an output is persistent state, e.g. all-reduced gradients); each call is a Collective event,
which orders events across ranks."""
from __future__ import annotations

import functools
from typing import Any, Iterable

import torch

from harness.dynamic.trace.events import Collective
from harness.dynamic.trace.tracer.storage import union_stags

Tensor = torch.Tensor


class CollectiveMixin:
    """Tracer methods; `_install_collectives` is called by `_install_patches` with its
    `patch(owner, attr, make)`."""

    def _install_collectives(self, patch) -> None:
        if not torch.distributed.is_available():
            return
        import inspect

        dist = torch.distributed
        tr = self
        # op -> (input arg names, output arg names)
        table = {
            "all_reduce": (("tensor",), ("tensor",)), "broadcast": (("tensor",), ("tensor",)),
            "reduce": (("tensor",), ("tensor",)),
            "all_gather": (("tensor",), ("tensor_list",)),
            "all_gather_into_tensor": (("input_tensor",), ("output_tensor",)),
            "reduce_scatter": (("input_list",), ("output",)),
            "reduce_scatter_tensor": (("input",), ("output",)),
            "all_to_all_single": (("input",), ("output",)),
            "barrier": ((), ()),
        }
        real_gather_obj = dist.all_gather_object

        def make_for(opname, ins_names, outs_names):
            def make(real):
                sig = inspect.signature(real)

                @functools.wraps(real)
                def wrapper(*args, **kwargs):
                    if tr.paused or not tr.installed or not dist.is_initialized():
                        return real(*args, **kwargs)
                    try:
                        bound = sig.bind(*args, **kwargs)
                        ba = bound.arguments
                    except TypeError:
                        return real(*args, **kwargs)
                    tensors_in = _flat_tensors(ba.get(n) for n in ins_names)
                    tensors_out = _flat_tensors(ba.get(n) for n in outs_names)
                    tr.paused = True
                    try:
                        mask, grad, stag = tr._collective_inputs(tensors_in)
                        if stag:
                            tr._sink(stag, "collective")
                    finally:
                        tr.paused = False
                    res = real(*args, **kwargs)
                    tr.paused = True
                    try:
                        if not tr.scores_only:
                            objs: list = [None] * dist.get_world_size(ba.get("group"))
                            real_gather_obj(objs, (mask, grad), group=ba.get("group"))
                            union = 0
                            anyg = False
                            for o in objs:
                                if o:
                                    union |= o[0]
                                    anyg = anyg or o[1]
                            if opname != "barrier":
                                tr._collective_outputs(tensors_out, union, anyg)
                        tr._emit(Collective, index=tr._collective_index, op=opname, frame=tr.frames.find(2))
                        tr._collective_index += 1
                    except Exception as exc:
                        tr._internal_error(opname, exc)
                    finally:
                        tr.paused = False
                    return res
                return wrapper
            return make

        for opname, (i, o) in table.items():
            if hasattr(dist, opname):
                patch(dist, opname, make_for(opname, i, o))

    def _collective_inputs(self, tensors: list[Tensor]) -> tuple[int, bool, dict]:
        mask, grad, tags = 0, False, []
        for t in tensors:
            info = self.infos.get(id(t.untyped_storage()))
            if info is None:
                continue
            if not self.scores_only:
                mask |= self._mask_of(t, info)
            grad = grad or info.grad
            tags.append(self._stag_of(t, info))
        return mask, grad, (union_stags(tags) or {})

    def _collective_outputs(self, tensors: list[Tensor], mask: int, grad: bool) -> None:
        for t in tensors:
            reg = self.registry.get(id(t.untyped_storage()))
            info = self.infos.get(id(t.untyped_storage()))
            if not mask and info is None:
                continue
            if reg is not None and mask:
                self._update(reg, mask, grad, id(t.untyped_storage()))
            info = info or self._info_for(t, create=True)
            info.mask |= mask
            info.grad = info.grad or grad
            info.gen += 1


def _flat_tensors(values: Iterable[Any]) -> list[Tensor]:
    out = []
    for v in values:
        if isinstance(v, Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(x for x in v if isinstance(x, Tensor))
    return out
