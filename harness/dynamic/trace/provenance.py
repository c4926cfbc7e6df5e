"""The propagation rules: which aten op moves validation positions how.

Kept apart from the engine (the tracer/ package) so the API knowledge is one table: adding an op means
adding a row here, not touching the mode. Three kinds of provenance travel with tensors:

- position maps ("pmap"): for integer/bool token tensors, an int64 tensor of the same shape
  whose elements are validation-stream offsets (-1: not a validation token). Structural ops
  (views, copies, cat, index, gather, ...) are *replayed* on the maps; pointwise ops combine
  maps by elementwise max (the latest position that influenced an element).
- score maps ("smap"): per-element ids of loss values (which loss op, which element), replayed
  through the same structural/pointwise rules so `nll[i, a:b]` narrows to those elements.
- coarse masks: a Python-int bitmask of positions for everything else (activations, logits,
  grads, parameters). Union on every op. Handled in the tracer (tracer/mode.py,
  tracer/propagate.py), not here.

Every function here runs inside the dispatch handler, with the tracer's mode popped: torch
calls made here are not traced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

Tensor = torch.Tensor
MapOf = Callable[[Tensor], Optional[Tensor]]  # tensor -> its map view (same shape) or None


# ---------------------------------------------------------------- the table
@dataclass(frozen=True)
class Rule:
    kind: str  # "struct", "copy", "lookup", "pointwise", "fill", "copy_", "index_put", "loss", "other"
    data: tuple[int, ...] = (0,)  # argument positions whose values are moved (maps replayed)
    index: tuple[int, ...] = ()  # argument positions that select (index tensors; kept as is)
    accumulate: bool = False  # an in-place op that adds into its destination (a score sink)


_STRUCT = Rule("struct")
_COPY = Rule("copy")  # dtype/device conversions: the map is copied, never converted

RULES: dict[str, Rule] = {
    # copies that keep element positions
    "aten::clone": _STRUCT, "aten::_to_copy": _COPY, "aten::lift_fresh_copy": _COPY,
    "aten::_to_dense": _COPY,
    "aten::cat": _STRUCT, "aten::stack": _STRUCT, "aten::hstack": _STRUCT, "aten::vstack": _STRUCT,
    "aten::flip": _STRUCT, "aten::roll": _STRUCT, "aten::repeat": _STRUCT,
    "aten::narrow_copy": _STRUCT, "aten::slice_copy": _STRUCT, "aten::select_copy": _STRUCT,
    "aten::view_copy": _STRUCT, "aten::permute_copy": _STRUCT, "aten::transpose_copy": _STRUCT,
    "aten::t_copy": _STRUCT, "aten::expand_copy": _STRUCT, "aten::unsqueeze_copy": _STRUCT,
    "aten::squeeze_copy": _STRUCT, "aten::unfold_copy": _STRUCT, "aten::alias_copy": _STRUCT,
    "aten::repeat_interleave": _STRUCT, "aten::tile": _STRUCT,
    "aten::constant_pad_nd": Rule("pad"),
    "aten::slice_scatter": Rule("struct", data=(0, 1)),
    "aten::select_scatter": Rule("struct", data=(0, 1)),
    "aten::index_put": Rule("struct", data=(0, 2), index=(1,)),
    "aten::masked_select": Rule("lookup", data=(0,), index=(1,)),
    # lookups: the output element depends on the data element and on the index element
    "aten::index_select": Rule("lookup", data=(0,), index=(2,)),
    "aten::gather": Rule("lookup", data=(0,), index=(2,)),
    "aten::index": Rule("lookup", data=(0,), index=(1,)),
    "aten::_unsafe_index": Rule("lookup", data=(0,), index=(1,)),
    "aten::take": Rule("lookup", data=(0,), index=(1,)),
    "aten::take_along_dim": Rule("lookup", data=(0,), index=(1,)),
    "aten::embedding": Rule("lookup", data=(0,), index=(1,)),
    # in-place writes
    "aten::copy_": Rule("copy_", data=(1,)),
    "aten::index_put_": Rule("index_put", data=(2,), index=(1,)),
    "aten::_index_put_impl_": Rule("index_put", data=(2,), index=(1,)),
    "aten::fill_": Rule("fill", data=()), "aten::zero_": Rule("fill", data=()),
    "aten::normal_": Rule("fill", data=()), "aten::uniform_": Rule("fill", data=()),
    "aten::random_": Rule("fill", data=()), "aten::bernoulli_": Rule("fill", data=()),
    "aten::exponential_": Rule("fill", data=()),
    "aten::add_": Rule("pointwise", accumulate=True), "aten::sub_": Rule("pointwise", accumulate=True),
    "aten::index_add_": Rule("other", accumulate=True),
    "aten::scatter_add_": Rule("other", accumulate=True),
    "aten::index_reduce_": Rule("other", accumulate=True),
    "aten::scatter_reduce_": Rule("other", accumulate=True),
    "aten::_foreach_add_": Rule("other", accumulate=True),
    "aten::addcmul_": Rule("pointwise", accumulate=True),
    "aten::addcdiv_": Rule("pointwise", accumulate=True),
    "aten::lerp_": Rule("pointwise", accumulate=True),
    # loss ops: per-element NLL of a target token
    "aten::nll_loss_forward": Rule("loss", data=(0,), index=(1,)),
    "aten::nll_loss2d_forward": Rule("loss", data=(0,), index=(1,)),
}

# What a tensor's values are, for recognising "gather the target's log-probability" losses.
LOGP, PROB, NLOGP = "logp", "prob", "nlogp"
MARK_PRODUCERS = {"aten::_log_softmax": LOGP, "aten::log_softmax": LOGP, "aten::_softmax": PROB,
                  "aten::softmax": PROB}
# op -> {input mark: output mark}
MARK_TRANSFORMS: dict[str, dict[str, str]] = {
    "aten::log": {PROB: LOGP}, "aten::exp": {LOGP: PROB}, "aten::neg": {LOGP: NLOGP, NLOGP: LOGP},
    "aten::_to_copy": {LOGP: LOGP, PROB: PROB, NLOGP: NLOGP},
    "aten::clone": {LOGP: LOGP, PROB: PROB, NLOGP: NLOGP},
    "aten::contiguous": {LOGP: LOGP, PROB: PROB, NLOGP: NLOGP},
}
LOOKUP_LOSS_OPS = {"aten::gather", "aten::index", "aten::_unsafe_index", "aten::take_along_dim",
                   "aten::index_select"}
# Reductions over the class dim turn per-class values into per-position ones, so scores on them
# are not recognised; these are the common ops that (re)build a log-prob from a mark.

# outputs that depend on a tensor's shape/dtype only, never on its values: nothing flows
SHAPE_ONLY = {"aten::ones_like", "aten::zeros_like", "aten::empty_like", "aten::full_like",
              "aten::rand_like", "aten::randn_like", "aten::randint_like", "aten::new_empty",
              "aten::new_zeros", "aten::new_ones", "aten::new_full", "aten::new_empty_strided",
              "aten::empty_strided", "aten::sym_size", "aten::sym_stride", "aten::sym_numel"}
# composite ops always decomposed (under inference_mode they reach the mode whole): the
# primitives they become are what the loss rules recognise
MUST_DECOMPOSE = {"aten::cross_entropy_loss", "aten::nll_loss", "aten::nll_loss_nd", "aten::nll_loss2d",
                  "aten::log_softmax", "aten::softmax", "aten::take_along_dim"}
# host reads handled at dispatch level
HOST_READ_OPS = {"aten::_local_scalar_dense"}
# ops that a multiply-by-zero mask can knock out of a score map
MASKING_OPS = {"aten::mul", "aten::where", "aten::masked_fill"}


def rule_for(name: str, pointwise: bool) -> Rule:
    r = RULES.get(name)
    if r is not None:
        return r
    if pointwise:
        return Rule("pointwise", data=())
    return Rule("other", data=())


def is_token_dtype(dtype: torch.dtype) -> bool:
    """Position maps are kept for integer and bool tensors only (tokens, hash keys, masks):
    float activations carry a coarse mask, which is far cheaper."""
    return not (dtype.is_floating_point or dtype.is_complex)


# ---------------------------------------------------------------- map helpers
def view_of(flat: Tensor, t: Tensor) -> Tensor:
    """The map elements of t: flat is one int64 per storage element of t's dtype."""
    return flat.as_strided(t.size(), t.stride(), t.storage_offset())


def new_flat(t: Tensor, nelems: int, values: Tensor | None) -> Tensor:
    """A flat map for a fresh output t (storage of nelems elements) holding `values` (broadcast
    to t's shape) at t's elements and -1 elsewhere."""
    flat = torch.full((nelems,), -1, dtype=torch.int64)
    if values is not None:
        view_of(flat, t).copy_(values)
    return flat


def _neg_like(t: Tensor) -> Tensor:
    return torch.full(t.shape, -1, dtype=torch.int64)


def _sub(a: Any, map_of: MapOf) -> Any:
    if isinstance(a, Tensor):
        m = map_of(a)
        return m if m is not None else _neg_like(a)
    if isinstance(a, (list, tuple)) and any(isinstance(x, Tensor) for x in a):
        return type(a)(_sub(x, map_of) for x in a)
    return a


def replay(func: Any, rule: Rule, args: tuple, kwargs: dict, map_of: MapOf) -> Tensor | None:
    """Run `func` on the maps of its data arguments (index arguments kept) -> the output map."""
    if rule.kind == "copy":
        m = map_of(args[0])
        return None if m is None else m.clone()
    new_args = list(args)
    for i in rule.data:
        if i < len(new_args):
            new_args[i] = _sub(new_args[i], map_of)
    kw = dict(kwargs)
    if rule.kind == "pad":
        if len(new_args) > 2:
            new_args[2] = -1
        else:
            kw["value"] = -1
    if func._schema.name == "aten::index_put":
        if len(new_args) > 3:
            new_args[3] = False
        kw.pop("accumulate", None)
    for k in ("dtype", "layout", "device", "pin_memory", "memory_format"):
        kw.pop(k, None)
    try:
        out = func(*new_args, **kw)
    except Exception:  # an op we cannot replay on int64 maps: the caller goes coarse
        return None
    return out if isinstance(out, Tensor) else None


def index_map(func: Any, rule: Rule, args: tuple, out: Tensor, map_of: MapOf) -> Tensor | None:
    """For lookups (gather, index, index_select, take, embedding): the map of the index
    argument laid out like the output, or None when the index carries no map or the layout is
    not one we know."""
    name = func._schema.name
    if name in ("aten::gather", "aten::take", "aten::take_along_dim"):
        idx = args[2] if name == "aten::gather" else args[1]
        m = map_of(idx) if isinstance(idx, Tensor) else None
        if m is None:
            return None
        return m if tuple(m.shape) == tuple(out.shape) else None
    if name == "aten::index_select":
        idx = args[2]
        m = map_of(idx) if isinstance(idx, Tensor) else None
        if m is None:
            return None
        dim = args[1] % max(out.dim(), 1)
        shape = [1] * out.dim()
        shape[dim] = -1
        return m.reshape(shape).expand(out.shape)
    if name == "aten::embedding":
        idx = args[1]
        m = map_of(idx) if isinstance(idx, Tensor) else None
        if m is None:
            return None
        return m.unsqueeze(-1).expand(out.shape)
    if name in ("aten::index", "aten::_unsafe_index"):
        self_t, indices = args[0], list(args[1])
        present = [i for i, x in enumerate(indices) if x is not None]
        if not present:
            return None
        idx_tensors = [indices[i] for i in present]
        if any(x.dtype == torch.bool for x in idx_tensors):
            return None
        maps = [map_of(x) for x in idx_tensors]
        if all(m is None for m in maps):
            return None
        bshape = torch.broadcast_shapes(*[tuple(x.shape) for x in idx_tensors])
        acc = torch.full(bshape, -1, dtype=torch.int64)
        for m in maps:
            if m is not None:
                acc = torch.maximum(acc, m)
        contiguous_block = present == list(range(present[0], present[-1] + 1))
        first = present[0] if contiguous_block else 0
        rest = self_t.dim() - len(indices)
        lead = first
        trail = (len(indices) - present[-1] - 1 if contiguous_block else len(indices) - len(present)) + rest
        shaped = acc.reshape((1,) * lead + tuple(bshape) + (1,) * trail)
        try:
            return shaped.expand(out.shape)
        except RuntimeError:
            return None
    if name == "aten::masked_select":
        return None
    return None


def where_map(args: tuple, out: Tensor, map_of: MapOf) -> Tensor | None:
    """torch.where(cond, a, b): each element's positions come from the input it selected (and
    from the condition, when that carries positions). Padding rows built as
    where(valid, gathered_tokens, 0) then carry none, instead of every gathered position."""
    cond, a, b = args[0], args[1], args[2]
    maps = [map_of(x) if isinstance(x, Tensor) else None for x in (cond, a, b)]
    if all(m is None for m in maps):
        return None
    none = torch.full(out.shape, -1, dtype=torch.int64)
    ma = maps[1].expand(out.shape) if maps[1] is not None else none
    mb = maps[2].expand(out.shape) if maps[2] is not None else none
    m = torch.where(cond.expand(out.shape).bool(), ma, mb)
    if maps[0] is not None:
        m = torch.maximum(m, maps[0].expand(out.shape))
    return m.clone()


def pointwise_max(args: tuple, kwargs: dict, out: Tensor, map_of: MapOf) -> Tensor | None:
    """Elementwise max of the maps of all tensor arguments (broadcast to the output)."""
    acc = None
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, Tensor):
            m = map_of(a)
            if m is not None:
                acc = m.expand(out.shape).clone() if acc is None else torch.maximum(acc, m)
    return acc


# ---------------------------------------------------------------- positions <-> masks
def contiguous_run(pos: np.ndarray) -> tuple[int, int] | None:
    """(lo, hi) when the flat `pos` is exactly lo, lo+1, ..., hi with lo >= 0, else None. A
    window's slice of a position or score map is such a run, and its set needs no sort."""
    n = pos.size
    if n == 0:
        return None
    lo, hi = int(pos[0]), int(pos[-1])
    if lo < 0 or hi - lo + 1 != n or (n > 2 and not (pos[1:] - pos[:-1] == 1).all()):
        return None
    return lo, hi


def run_mask(lo: int, hi: int) -> int:
    """The bitmask of positions lo..hi."""
    return ((1 << (hi - lo + 1)) - 1) << lo


def _dense_bits(pos: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(one byte per position from lo, lo) for non-negative `pos` whose span is not much
    larger than its size (overlapping windows, a batch): a set without a sort. None if sparse."""
    lo, hi = int(pos.min()), int(pos.max())
    if hi - lo >= 16 * pos.size + 4096:
        return None
    bits = np.zeros(hi - lo + 1, dtype=np.uint8)
    bits[pos - lo] = 1
    return bits, lo


def ranges_of_positions(pos: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ranges of the set of non-negative entries of `pos` (any order, repeats)."""
    pos = np.asarray(pos).ravel()
    run = contiguous_run(pos)
    if run is not None:
        return [(run[0], run[1] + 1)]
    pos = pos[pos >= 0]
    if pos.size == 0:
        return []
    dense = _dense_bits(pos)
    return ranges_from_sorted(np.flatnonzero(dense[0]) + dense[1] if dense is not None else np.unique(pos))


def mask_from_positions(pos: np.ndarray) -> int:
    """Python-int bitmask of the non-negative entries of `pos`."""
    pos = np.asarray(pos).ravel()
    run = contiguous_run(pos)
    if run is not None:
        return run_mask(*run)
    pos = pos[pos >= 0]
    if pos.size == 0:
        return 0
    dense = _dense_bits(pos)
    if dense is not None:
        return int.from_bytes(np.packbits(dense[0], bitorder="little").tobytes(), "little") << dense[1]
    u = np.unique(pos)
    if u.size == 1:
        return 1 << int(u[0])
    breaks = np.nonzero(np.diff(u) != 1)[0]
    if breaks.size < 64:
        starts = [int(u[0])] + [int(x) for x in u[breaks + 1]]
        ends = [int(x) + 1 for x in u[breaks]] + [int(u[-1]) + 1]
        m = 0
        for a, b in zip(starts, ends):
            m |= ((1 << (b - a)) - 1) << a
        return m
    lo = int(u[0])
    bits = np.zeros(int(u[-1]) - lo + 1, dtype=np.uint8)
    bits[u - lo] = 1
    return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little") << lo


def positions_from_mask(mask: int) -> np.ndarray:
    """Sorted int64 positions of the set bits of `mask`."""
    if mask <= 0:
        return np.zeros(0, dtype=np.int64)
    low = mask & -mask
    if not (mask + low) & mask:  # one run of set bits (a window, a chunk): no unpacking
        lo = low.bit_length() - 1
        return np.arange(lo, mask.bit_length(), dtype=np.int64)
    nbytes = (mask.bit_length() + 7) // 8
    bits = np.unpackbits(np.frombuffer(mask.to_bytes(nbytes, "little"), dtype=np.uint8), bitorder="little")
    return np.nonzero(bits)[0].astype(np.int64)


def ranges_from_sorted(u: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ranges of a sorted, duplicate-free position array."""
    if u.size == 0:
        return []
    breaks = np.nonzero(np.diff(u) != 1)[0]
    starts = np.concatenate([u[:1], u[breaks + 1]])
    ends = np.concatenate([u[breaks], u[-1:]]) + 1
    return list(zip(starts.tolist(), ends.tolist()))


# the last few masks converted: an optimizer step writes the same positions into every parameter
# and its state (one TTT step: ~40 Update events, one mask), and each conversion unpacks the whole
# bitmask. Few entries: a mask is up to one bit per validation token.
_RANGES: dict[int, tuple[tuple[int, int], ...]] = {}
_RANGES_KEPT = 4


def ranges_of_mask(mask: int) -> list[tuple[int, int]]:
    hit = _RANGES.get(mask)
    if hit is None:
        if len(_RANGES) >= _RANGES_KEPT:
            _RANGES.clear()
        hit = _RANGES[mask] = tuple(ranges_from_sorted(positions_from_mask(mask)))
    return list(hit)  # a new list, as before: the caller's event owns it
