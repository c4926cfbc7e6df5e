"""Per-storage provenance: `Info` (what one UntypedStorage carries: position map, score map,
coarse mask, score tag, marks) and the Tracer's lookups on it -- the Info of a tensor, the
position / score map of a view, its coarse mask and score tag."""
from __future__ import annotations

import weakref
from typing import Iterable

import numpy as np
import torch

from harness.dynamic.trace import provenance as P

Tensor = torch.Tensor


class Info:
    """Provenance of one storage. pmap/smap are flat int64 maps over the storage's elements
    (of `itemsize` bytes each); mask is the coarse position set; stag the coarse score tag
    {loss_op id: bitmask of its elements}; grad: derives from a backward pass."""

    __slots__ = ("mask", "pmap", "smap", "stag", "grad", "mark", "itemsize", "gen", "cache", "ref", "pstate",
                 "__weakref__")

    def __init__(self):
        self.mask = 0
        self.pmap: Tensor | None = None
        self.smap: Tensor | None = None
        self.stag: dict[int, int] | None = None
        self.grad = False
        self.mark: str | None = None
        self.itemsize = 0
        self.gen = 0
        self.cache: dict | None = None
        self.ref = None
        # what a score map's values are, for re-scoring a blend (see losses.score_state):
        # None (the NLL or an unknown function of it), "neg" (-NLL), "prob" (exp(-NLL)),
        # "blend" (that probability combined with other values)
        self.pstate: str | None = None


def _view_of_map(t: Tensor, info: Info | None, flat: Tensor | None) -> Tensor | None:
    """t's view of `flat`, a position or score map of t's storage (`info`); None when the storage
    has no such map, or t reads it at another element size."""
    if flat is None or t.element_size() != info.itemsize:
        return None
    try:
        return P.view_of(flat, t)
    except RuntimeError:
        return None


def union_stags(tags: Iterable[dict[int, int]]) -> dict[int, int] | None:
    """Union of score tags ({loss op: element bitmask}); None when empty."""
    out: dict[int, int] = {}
    for tag in tags:
        for k, m in tag.items():
            cur = out.get(k)
            out[k] = m if cur is None else (cur | m)
    return out or None


class StorageMixin:
    """Tracer methods over `self.infos` (storage id -> Info); `_group_ids` also reads
    `self.loss_ops` / `self._loss_bases` (score element ids -> loss ops)."""

    def _info_for(self, t: Tensor, create: bool = False) -> Info | None:
        st = t.untyped_storage()
        key = id(st)
        info = self.infos.get(key)
        if info is None and create:
            info = Info()
            info.itemsize = t.element_size()
            infos = self.infos

            def gone(_ref, key=key, infos=infos):
                cur = infos.get(key)
                if cur is not None and cur.ref is _ref:
                    del infos[key]

            info.ref = weakref.ref(st, gone)
            self.infos[key] = info
        return info

    def _pmap(self, t: Tensor, info: Info | None) -> Tensor | None:
        return _view_of_map(t, info, info.pmap if info is not None else None)

    def _smap(self, t: Tensor, info: Info | None) -> Tensor | None:
        return _view_of_map(t, info, info.smap if info is not None else None)

    def _geom(self, t: Tensor, info: Info) -> tuple:
        return (tuple(t.shape), tuple(t.stride()), t.storage_offset(), info.gen)

    def _mask_of(self, t: Tensor, info: Info | None) -> int:
        """Coarse positions of t: its storage mask, plus the positions in its map view."""
        if info is None:
            return 0
        if info.pmap is None:
            return info.mask
        key = ("m",) + self._geom(t, info)
        cache = info.cache
        if cache is not None and key in cache:
            return cache[key]
        v = self._pmap(t, info)
        m = info.mask
        if v is not None:
            m |= P.mask_from_positions(v.numpy())
        else:
            m |= P.mask_from_positions(info.pmap.numpy())
        if cache is None or len(cache) > 64:
            cache = info.cache = {}
        cache[key] = m
        return m

    def _stag_of(self, t: Tensor, info: Info | None) -> dict[int, int]:
        """Coarse score tag of t: {loss op: element bitmask}."""
        if info is None:
            return {}
        out = dict(info.stag) if info.stag else {}
        if info.smap is not None:
            v = self._smap(t, info)
            ids = (v if v is not None else info.smap).reshape(-1).numpy()
            ids = ids[ids >= 0]
            if ids.size:
                for op_id, m in self._group_ids(ids).items():
                    out[op_id] = out.get(op_id, 0) | m
        return out

    def _group_ids(self, ids: np.ndarray) -> dict[int, int]:
        run = P.contiguous_run(ids)
        if run is not None:
            # the common case, a slice of one loss op's scores: no sort, one mask
            k = int(np.searchsorted(self._loss_bases, run[0], "right")) - 1
            op = self.loss_ops[k]
            if run[1] < op.base + max(op.n, 1):
                return {op.id: P.run_mask(run[0] - op.base, run[1] - op.base)}
        ids = np.unique(ids)
        which = np.searchsorted(self._loss_bases, ids, "right") - 1
        out: dict[int, int] = {}
        for k in np.unique(which).tolist():
            op = self.loss_ops[k]
            out[op.id] = P.mask_from_positions(ids[which == k] - op.base)
        return out
