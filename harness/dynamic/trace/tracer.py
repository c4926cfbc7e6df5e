"""The provenance tracer: runs a submission's eval under a TorchDispatchMode and records which
validation positions reach which scores and which updates (events of harness/dynamic/trace/events.py).

    from harness.dynamic.trace.tracer import Tracer, TracerConfig
    with Tracer(TracerConfig(val_stream=tokens, submission_dir=folder)) as tr:
        ... run eval code ...
    tr.events; tr.save(path)

Bootstrap uses `install()` / `finish(path)` around `runpy.run_path`. How it works, in short
(docs/tracer.md has the long form):

1. Validation tokens are recognised by content where data enters torch (`lift_fresh`, which
   from_numpy / tensor / as_tensor / asarray / new_tensor reach; `from_file`; a patched
   `frombuffer`): an integer tensor of >= min_match elements equal to a unique slice of the
   validation stream (or, row by row, to several slices) gets a position map.
2. Provenance is kept per *storage* (views, `.data`, `.detach()` share it): a position map for
   integer tensors, a score map for per-element losses, and a coarse bitmask of positions for
   everything else. Rules per op live in provenance.py.
3. nll_loss (cross_entropy) or a gather of a log-softmax by a target with a position map is a
   loss op (LossComputed). Its values reaching a sink (in-place accumulation, host read,
   collective) are Scored -- placed in the timeline at the moment they were computed.
4. In-place writes into parameter / buffer / optimizer-state storages whose operands carry
   validation positions are Updates (via optimizer-step / gradient / direct).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import itertools
import math
import linecache
import os
import sys
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from harness.challenge.shards import read_tokens
from harness.dynamic.trace import provenance as P
from harness.dynamic.trace import torch_compat as C
from harness.dynamic.trace.events import (Collective, Frame, LossComputed, ProvenanceLost, RunStart, Scored, TargetRead,
                                   Trace, Update, ValLoaded)

Tensor = torch.Tensor
_SEQ_STRIDE = 1024  # room after each event for the Scored events of a loss op (see _score_seq)


# lookups whose index may be a hash key of tokens (see Tracer._check_target_read)
_KEYED_LOOKUPS = frozenset({"aten::embedding", "aten::index_select"})


# ---------------------------------------------------------------- config
@dataclass
class TracerConfig:
    val_stream: Optional[np.ndarray] = None  # the full val token stream as the submission loads it
    val_files: list[str] = field(default_factory=list)  # challenge shards (read when val_stream is None)
    submission_dir: str = ""  # frames are reported relative to this folder
    rank: Optional[int] = None  # default: $RANK or 0
    world_size: Optional[int] = None  # default: $WORLD_SIZE or 1
    min_match: int = 64  # shortest integer tensor recognised as validation tokens
    capture_scores_only: bool = False  # only LossComputed / Scored (per-position NLL); no updates
    val_tokens_path: Optional[str] = None  # .npy of the stream (JSON-friendly alternative)
    val_glob: Optional[str] = None  # glob of shards, when neither of the above is given
    max_update_events: int = 200_000  # guard against runaway event counts
    notes: list[str] = field(default_factory=list)


def _discover_val_files() -> list[str]:
    """Shards where contest scripts look: $DATA_PATH, then data/ under the cwd."""
    pats = []
    if os.environ.get("DATA_PATH"):
        pats.append(os.path.join(os.environ["DATA_PATH"], "fineweb_val_*.bin"))
    pats += ["data/datasets/*/fineweb_val_*.bin", ".golf_audit/data/datasets/*/fineweb_val_*.bin"]
    for pat in pats:
        files = sorted(glob.glob(pat))
        if files:
            return files
    return []


# ---------------------------------------------------------------- content index
class ValIndex:
    """Finds where an integer array occurs in the validation stream.

    The stream is cut into blocks of W tokens; each block's hash goes into a sorted array.
    A query of length >= 2W - 1 contains a whole block at one of its first W offsets, so W
    lookups find every candidate offset; each candidate is verified in full."""

    W = 16

    def __init__(self, stream: np.ndarray):
        self.stream = np.ascontiguousarray(np.asarray(stream, dtype=np.int64).ravel())
        n = self.stream.size
        nb = n // self.W
        rng = np.random.default_rng(20240520)
        self.coef = rng.integers(1, 2**62, size=self.W, dtype=np.uint64) | np.uint64(1)
        if nb:
            blocks = self.stream[: nb * self.W].reshape(nb, self.W).astype(np.uint64)
            with np.errstate(over="ignore"):
                h = (blocks * self.coef).sum(axis=1, dtype=np.uint64)
        else:
            h = np.zeros(0, dtype=np.uint64)
        self.order = np.argsort(h, kind="stable")
        self.hashes = h[self.order]

    def find(self, q: np.ndarray, limit: int = 64) -> list[int]:
        """Offsets o with stream[o:o+len(q)] == q (at most `limit`+1 are reported)."""
        q = np.asarray(q, dtype=np.int64).ravel()
        L, W = q.size, self.W
        if L < 2 * W - 1 or L > self.stream.size:
            return []
        win = np.lib.stride_tricks.sliding_window_view(q[: 2 * W - 1], W).astype(np.uint64)
        with np.errstate(over="ignore"):
            qh = (win * self.coef).sum(axis=1, dtype=np.uint64)
        lo = np.searchsorted(self.hashes, qh, "left")
        hi = np.searchsorted(self.hashes, qh, "right")
        cands: set[int] = set()
        for j in range(W):
            for k in range(int(lo[j]), min(int(hi[j]), int(lo[j]) + limit + 1)):
                o = int(self.order[k]) * W - j
                if 0 <= o and o + L <= self.stream.size:
                    cands.add(o)
        out = []
        for o in sorted(cands):
            if self.stream[o] == q[0] and np.array_equal(self.stream[o:o + L], q):
                out.append(o)
                if len(out) > limit:
                    break
        return out


# ---------------------------------------------------------------- per-storage provenance
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
        # what a score map's values are, for re-scoring a blend (see Tracer._score_state):
        # None (the NLL or an unknown function of it), "neg" (-NLL), "prob" (exp(-NLL)),
        # "blend" (that probability combined with other values)
        self.pstate: str | None = None


@dataclass
class LossOp:
    id: int
    base: int  # first global score-element id
    n: int
    positions: np.ndarray  # per element: target position (-1: not a validation target)
    nll: np.ndarray  # per element, nats
    grad_enabled: bool
    seq: int  # seq of its LossComputed event
    frame: Frame | None
    recorded: int = 0  # bitmask of elements already Scored
    n_scored_events: int = 0
    reads: frozenset = frozenset()  # written state its forward read (since the last optimizer step)


@dataclass
class _Reg:
    name: str
    kind: str  # "parameter", "buffer", "optimizer-state"
    provisional: bool
    ref: Any


class _FrameFinder:
    """The first stack frame in submission code (not torch, not golf-audit, not the stdlib)."""

    def __init__(self, submission_dir: str):
        self.root = os.path.realpath(submission_dir) + os.sep if submission_dir else ""
        import sysconfig

        libs = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        libs |= {str(Path(torch.__file__).parent), str(Path(__file__).resolve().parents[2]),
                 str(Path(np.__file__).parent)}
        self.libs = tuple(sorted(os.path.realpath(p) + os.sep for p in libs if p))
        self.is_sub: dict[Any, Optional[str]] = {}

    def _rel(self, code) -> Optional[str]:
        hit = self.is_sub.get(code, 0)
        if hit != 0:
            return hit
        fn = code.co_filename
        rel: Optional[str]
        if fn.startswith("<") and not fn.startswith("<frozen"):
            rel = fn  # exec'd code: packed submissions
        else:
            real = os.path.realpath(fn)
            if self.root and real.startswith(self.root):
                rel = os.path.relpath(real, self.root)
            elif real.startswith(self.libs) or "/site-packages/" in real or "/harness/" in real:
                rel = None
            else:
                rel = None if self.root else real
        self.is_sub[code] = rel
        return rel

    def find(self, depth: int = 2) -> Frame | None:
        try:
            f = sys._getframe(depth)
        except ValueError:
            return None
        while f is not None:
            rel = self._rel(f.f_code)
            if rel is not None:
                line = f.f_lineno or 0
                code = linecache.getline(f.f_code.co_filename, line).strip() if line else ""
                return Frame(path=rel, line=line, function=f.f_code.co_name, code=code)
            f = f.f_back
        return None


# ---------------------------------------------------------------- the dispatch mode
class _Mode(C.TorchDispatchMode):
    """Thin per-thread mode object; all state lives in the Tracer."""

    def __init__(self, tracer: "Tracer"):
        super().__init__()
        self.tracer = tracer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        tr = self.tracer
        if tr.paused:
            return func(*args, **kwargs)
        comp = _COMPOSITE.get(func)
        if comp is None:
            comp = _COMPOSITE[func] = C.is_composite_implicit(func)
        if comp and tr._needs_decompose(func, args, kwargs):
            with self:
                out = C.decompose(func, args, kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)

        # One pass over the tensor arguments: which carry provenance, and is it coarse only?
        infos = tr.infos
        hit = rich = False
        mask = 0
        grad = False
        in_ids = []
        try:
            for a in args:
                if isinstance(a, Tensor):
                    k = id(a.untyped_storage())
                    in_ids.append(k)
                    i = infos.get(k)
                    if i is None:
                        continue
                    hit = True
                    if k in tr._watch and not tr._in_step:
                        tr._reads.add(tr._watch[k])
                    if i.pmap is not None or i.smap is not None or i.stag or i.mark is not None:
                        rich = True
                    else:
                        m = i.mask
                        if m and m is not mask:
                            mask = m if not mask else (mask | m)
                        grad = grad or i.grad
                elif type(a) in (list, tuple):
                    for b in a:
                        if isinstance(b, Tensor) and id(b.untyped_storage()) in infos:
                            hit = rich = True
                            break
            if kwargs:
                for a in kwargs.values():
                    if isinstance(a, Tensor) and id(a.untyped_storage()) in infos:
                        hit = rich = True
        except (RuntimeError, NotImplementedError):  # tensors without storage
            return out
        try:
            if not hit:
                special = tr.special.get(func)
                if special is not None:
                    special(func, args, kwargs, out)
                return out
            plan = tr._plans.get(func)
            if plan is None:
                plan = tr._plan(func)
            if plan[0] or plan[5]:
                return out  # c10d ops (the collective patches); views share their input's storage
            if plan[6] and not rich and isinstance(out, Tensor):
                # the bulk of traced ops: activations, logits, grads -- a mask union
                k = id(out.untyped_storage())
                if k in in_ids:
                    return out
                grad = grad or C.in_backward()
                if (mask or grad) and not tr.scores_only:
                    info = tr._info_for(out, create=True)
                    info.mask = mask
                    info.grad = grad
                    info.gen += 1
                return out
            tr._on_op(func, args, kwargs, out)
        except Exception as exc:  # a tracer bug must not change what the submission computes
            tr._internal_error(func, exc)
        return out


_COMPOSITE: dict = {}
_WATCHED_EVENTS = (LossComputed, Scored, Update)  # the integrity check runs at each of these


# ---------------------------------------------------------------- the tracer
class Tracer:
    def __init__(self, config: TracerConfig | None = None, **kwargs: Any):
        cfg = config or TracerConfig(**kwargs)
        self.cfg = cfg
        self.rank = cfg.rank if cfg.rank is not None else int(os.environ.get("RANK", "0"))
        self.world_size = cfg.world_size if cfg.world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
        self.events: list = []
        self.infos: dict[int, Info] = {}
        self.registry: dict[int, _Reg] = {}
        self.loss_ops: list[LossOp] = []
        self._loss_bases = np.zeros(0, dtype=np.int64)
        self._next_score_id = 0
        self.paused = False
        self.installed = False
        self.scores_only = bool(cfg.capture_scores_only)
        self.frames = _FrameFinder(cfg.submission_dir)
        self._seq = itertools.count(1)
        self._modes: list = []
        self._undo: list = []
        # what the integrity check (trace/integrity.py) verifies is still in place
        self.patched: list[tuple] = []  # (owner, attribute, our wrapper)
        self.hook_handles: list = []
        self._last_frame: Frame | None = None  # of the last score/update recorded
        self.tampered: dict | None = None  # the first integrity failure
        self._lock = threading.RLock()
        self._in_step = 0
        self._step_frame: Frame | None = None
        self._step_id = 0
        self._last_update: dict[tuple, int] = {}
        self._plans: dict = {}
        self._state_seen: set = set()
        self._n_updates = 0
        self._collective_index = 0
        self._lost: dict[tuple, list] = {}
        # storages written with validation positions -> their name; the last time (seq) each
        # name was read by an op outside an optimizer step (judges skip writes never read again)
        self._watch: dict[int, str] = {}
        self._last_read: dict[str, int] = {}  # name -> seq of the last *scored* loss op that read it
        self._reads: set[str] = set()  # watched names read since the last optimizer step
        self._watched_names: set[str] = set()  # every name ever watched (storages die, names stay)
        self._seq_now = 0
        # recent lookups keyed by token positions (embedding / index_select): (flat map, frame)
        self._lookups: "collections.deque" = collections.deque(maxlen=8)
        self._target_read_sites: set = set()
        self._seen_modules: "weakref.WeakSet" = weakref.WeakSet()
        self._root_names: dict[str, int] = {}
        self._param_refs: list = []
        self.errors: list[str] = []
        self.index: ValIndex | None = None
        self.val_sources: list[str] = []
        self.special = self._special_table()

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Tracer":
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def install(self) -> "Tracer":
        if self.installed:
            return self
        self._load_stream()
        self._emit(RunStart, world_size=self.world_size, val_tokens=int(self.index.stream.size) if self.index else 0,
                   val_sources=list(self.val_sources), torch_version=torch.__version__)
        self._install_patches()
        if not self.scores_only:
            self._install_hooks()
        mode = _Mode(self)
        mode.__enter__()
        self._modes.append(mode)
        self._install_threads()
        self.installed = True
        return self

    def uninstall(self) -> None:
        if not self.installed:
            return
        self._check_integrity("at exit", stack=True)
        self.installed = False
        for mode in reversed(self._modes):
            try:
                mode.__exit__(None, None, None)
            except Exception as exc:  # popped by someone else
                self.errors.append(f"mode exit: {exc}")
        self._modes.clear()
        for undo in reversed(self._undo):
            try:
                undo()
            except Exception as exc:
                self.errors.append(f"undo: {exc}")
        self._undo.clear()
        self._flush_lost()

    def finish(self, path: str | None = None) -> None:
        """Uninstall and (optionally) write the trace."""
        self.uninstall()
        if path:
            self.save(path)

    def trace(self) -> Trace:
        meta = {"tracer_errors": self.errors[:50], "tracer_notes": list(self.cfg.notes),
                # per rank: {} when the instrumentation stayed in place to the end
                "integrity": {str(self.rank): self.tampered or {}},
                "capture_scores_only": self.scores_only,
                # per state written with validation positions: the seq of the last scored loss
                # whose forward read it (rank-local names); judges skip writes no score reads
                "last_read": {f"{self.rank}:{k}": v for k, v in self._last_read.items()},
                "watched": sorted(f"{self.rank}:{v}" for v in self._watched_names)}
        if self.tampered:
            meta["untrusted"] = f"rank {self.rank}: " + "; ".join(self.tampered["missing"])
        return Trace(events=sorted(self.events, key=lambda e: e.seq), submission_dir=self.cfg.submission_dir,
                     meta=meta)

    def _check_integrity(self, when: str, *, stack: bool) -> None:
        """Record the first time the instrumentation is found incomplete, with the last
        score/update seen before (the nearest the trace can point to the tampering)."""
        if self.tampered is not None:
            return
        from harness.dynamic.trace.integrity import missing

        try:
            gone = missing(self, stack=stack)
        except Exception as exc:  # a check that fails is not evidence against the submission
            self.errors.append(f"integrity check: {type(exc).__name__}: {exc}")
            return
        if gone:
            frame = self._last_frame
            self.tampered = {"missing": gone, "when": when, "seq": self._seq_now,
                             "frame": dataclasses.asdict(frame) if frame is not None else None}

    def save(self, path: str | Path) -> None:
        self.trace().save(path)

    # ------------------------------------------------------------ events
    def _emit(self, cls, seq: int | None = None, **fields):
        ev = cls(seq=seq if seq is not None else next(self._seq) * _SEQ_STRIDE, rank=self.rank, **fields)
        self.events.append(ev)
        self._seq_now = max(self._seq_now, ev.seq)
        if cls in _WATCHED_EVENTS and self.tampered is None:
            self._check_integrity(f"at a recorded {ev.kind}", stack=False)
            if getattr(ev, "frame", None) is not None:
                self._last_frame = ev.frame
        return ev

    def _frame(self) -> Frame | None:
        return self.frames.find(3)

    def _internal_error(self, func: Any, exc: BaseException) -> None:
        if len(self.errors) < 200:
            self.errors.append(f"{C.op_name(func)}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _ranges(mask: int):
        return P.ranges_of_mask(mask)

    # ------------------------------------------------------------ validation stream
    def _load_stream(self) -> None:
        cfg = self.cfg
        stream = None
        try:
            if cfg.val_stream is not None:
                stream = np.asarray(cfg.val_stream)
            elif cfg.val_tokens_path:
                stream = np.load(cfg.val_tokens_path)
                self.val_sources = [cfg.val_tokens_path]
            else:
                files = list(cfg.val_files) or (sorted(glob.glob(cfg.val_glob)) if cfg.val_glob else []) \
                    or _discover_val_files()
                if files:
                    stream = np.concatenate([read_tokens(f) for f in files])
                    self.val_sources = [str(f) for f in files]
        except (OSError, ValueError) as exc:
            cfg.notes.append(f"validation stream unreadable: {exc}")
        if stream is None:
            cfg.notes.append("no validation stream given: nothing can be recognised as validation tokens")
            self.index = None
            return
        self.index = ValIndex(stream)

    def _match(self, t: Tensor, how: str) -> None:
        """Content-match an integer tensor entering torch against the validation stream."""
        if self.index is None or not isinstance(t, Tensor) or not P.is_token_dtype(t.dtype) \
                or t.dtype == torch.bool or t.numel() < self.cfg.min_match or t.is_complex():
            return
        try:
            arr = t.detach().numpy() if t.device.type == "cpu" else t.detach().cpu().numpy()
        except Exception:
            return
        flat = np.asarray(arr, dtype=np.int64).ravel()
        offs = self.index.find(flat)
        pos = None
        frame = self._frame()
        if len(offs) == 1:
            pos = np.arange(offs[0], offs[0] + flat.size, dtype=np.int64)
        elif len(offs) > 1:
            self._emit(ProvenanceLost, where=f"ambiguous content match ({len(offs)} places)",
                       positions=P.ranges_from_sorted(np.unique(np.concatenate(
                           [np.arange(o, o + flat.size) for o in offs[:4]]))), frame=frame)
            return
        elif arr.ndim == 2 and arr.shape[1] >= 2 * ValIndex.W - 1 and arr.shape[0] <= 4096:
            rows = np.full(arr.shape, -1, dtype=np.int64)
            any_row = False
            for i in range(arr.shape[0]):
                o = self.index.find(arr[i])
                if len(o) == 1:
                    rows[i] = np.arange(o[0], o[0] + arr.shape[1])
                    any_row = True
            if any_row:
                pos = rows.ravel()
        if pos is None:
            return
        info = self._info_for(t, create=True)
        info.pmap = P.new_flat(t, C.storage_nelems(t), torch.from_numpy(pos.reshape(tuple(t.shape))))
        info.itemsize = t.element_size()
        info.gen += 1
        valid = pos[pos >= 0]
        self._emit(ValLoaded, positions=P.ranges_from_sorted(np.unique(valid)), how="content-match",
                   frame=frame)

    # ------------------------------------------------------------ storage bookkeeping
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
        if info is None or info.pmap is None or t.element_size() != info.itemsize:
            return None
        try:
            return P.view_of(info.pmap, t)
        except RuntimeError:
            return None

    def _smap(self, t: Tensor, info: Info | None) -> Tensor | None:
        if info is None or info.smap is None or t.element_size() != info.itemsize:
            return None
        try:
            return P.view_of(info.smap, t)
        except RuntimeError:
            return None

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
        ids = np.unique(ids)
        which = np.searchsorted(self._loss_bases, ids, "right") - 1
        out: dict[int, int] = {}
        for k in np.unique(which).tolist():
            op = self.loss_ops[k]
            out[op.id] = P.mask_from_positions(ids[which == k] - op.base)
        return out

    # ------------------------------------------------------------ special ops (no tagged input)
    def _special_table(self) -> dict:
        aten = torch.ops.aten
        table: dict = {}

        def lift(func, args, kwargs, out):
            self._match(out, "tensor")

        def from_file(func, args, kwargs, out):
            self._match(out, "from_file")

        def mark(func, args, kwargs, out):
            name = func._schema.name
            if isinstance(out, Tensor):
                info = self._info_for(out, create=True)
                info.mark = P.MARK_PRODUCERS[name]

        for op in (aten.lift_fresh.default, aten.lift_fresh_copy.default):
            table[op] = lift
        table[aten.from_file.default] = from_file
        for op in (aten._log_softmax.default, aten._softmax.default):
            table[op] = mark
        return table

    # ------------------------------------------------------------ the slow path
    def _needs_decompose(self, func, args, kwargs) -> bool:
        """Composite ops reach the mode whole only under inference_mode. Decompose them when
        a rule needs the primitives: loss/log-softmax ops, or inputs with position or score
        maps. Ops on coarse-only inputs (matmul, linear, layer_norm on activations) run whole:
        the coarse union is the same either way, and far cheaper."""
        if C.op_name(func) in P.MUST_DECOMPOSE:
            return True
        infos = self.infos
        for a in itertools.chain(args, kwargs.values()):
            if isinstance(a, Tensor):
                i = infos.get(id(a.untyped_storage()))
                if i is not None and (i.pmap is not None or i.smap is not None or i.stag or i.mark):
                    return True
            elif type(a) in (list, tuple):
                for b in a:
                    if isinstance(b, Tensor):
                        i = infos.get(id(b.untyped_storage()))
                        if i is not None and (i.pmap is not None or i.smap is not None or i.stag or i.mark):
                            return True
        return False

    def _plan(self, func) -> tuple:
        """Per-op facts, computed once: (skip, name, rule, mut_pos, mut_kw, is_view, simple)."""
        plan = self._plans.get(func)
        if plan is None:
            name = C.op_name(func)
            skip = C.namespace(func) not in ("aten", "prims") or name in P.SHAPE_ONLY
            rule = P.rule_for(name, C.is_pointwise(func))
            mut_pos, mut_kw = C.mutated_args(func)
            try:
                is_view = bool(func.is_view) and not (mut_pos or mut_kw)
            except AttributeError:
                is_view = False
            simple = (not (mut_pos or mut_kw) and rule.kind not in ("loss",) and name not in P.LOOKUP_LOSS_OPS
                      and name not in P.HOST_READ_OPS and name not in P.MARK_PRODUCERS
                      and name not in P.MARK_TRANSFORMS)
            plan = (skip, name, rule, mut_pos, mut_kw, is_view, simple)
            self._plans[func] = plan
        return plan

    def _on_op(self, func, args, kwargs, out) -> None:
        skip, name, rule, mut_pos, mut_kw, is_view, simple = self._plan(func)
        if skip or is_view:
            return  # c10d ops: the collective patches; views share their input's storage
        if simple and self._coarse_only(args, kwargs, out):
            return

        # tensor inputs and their infos
        ins: list[tuple[Any, Tensor, Info | None]] = []
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                ins.append((i, a, self.infos.get(id(a.untyped_storage()))))
            elif isinstance(a, (list, tuple)):
                for j, b in enumerate(a):
                    if isinstance(b, Tensor):
                        ins.append(((i, j), b, self.infos.get(id(b.untyped_storage()))))
        for k, a in kwargs.items():
            if isinstance(a, Tensor):
                ins.append((k, a, self.infos.get(id(a.untyped_storage()))))

        if name in P.HOST_READ_OPS:
            t, info = ins[0][1], ins[0][2]
            self._host_read(t, info, "item")
            return

        dest_ids = set(mut_pos) | set(mut_kw)
        dests = [(k, t, info) for (k, t, info) in ins
                 if (k in dest_ids) or (isinstance(k, tuple) and k[0] in dest_ids)]
        in_storages = {id(t.untyped_storage()) for _, t, _ in ins}
        outs = [o for o in (out if isinstance(out, (list, tuple)) else (out,)) if isinstance(o, Tensor)]
        fresh = [o for o in outs if id(o.untyped_storage()) not in in_storages]

        if rule.kind == "loss" or (name in P.LOOKUP_LOSS_OPS and ins and ins[0][2] is not None
                                   and ins[0][2].mark is not None):
            if self._loss_op(func, name, rule, args, kwargs, out, ins):
                return

        if dests:
            self._on_write(func, name, rule, args, kwargs, ins, dests)
        if fresh:
            self._on_fresh(func, name, rule, args, kwargs, ins, fresh)
        if name in _KEYED_LOOKUPS and not self.scores_only:
            self._note_lookup(rule, args)

    def _note_lookup(self, rule, args) -> None:
        """Remember the position map of a lookup's index (a token embedding, a hash-bucket
        embedding) so a later loss can check that no target keyed its own prediction."""
        try:
            idx = args[rule.index[0]]
            if not isinstance(idx, Tensor) or idx.numel() < self.cfg.min_match:
                return
            m = self._pmap(idx, self.infos.get(id(idx.untyped_storage())))
            if m is None:
                return
            self._lookups.append((m.reshape(-1).numpy().copy(), self.frames.find(4)))
        except Exception as exc:
            self._internal_error("lookup", exc)

    def _check_target_read(self, pos: np.ndarray, loss_frame: Frame | None) -> None:
        """A lookup whose index, element for element, carries the position this loss scores as
        the target there, or a later one: the prediction for that target was keyed on the
        target's own token (or beyond). A causal model's inputs sit before their targets."""
        valid = pos >= 0
        n_valid = int(valid.sum())
        if n_valid < 8:
            return
        for keyed, frame in self._lookups:
            if len(keyed) != len(pos):
                continue
            same = valid & (keyed >= pos)  # the input for target p holds token p or a later one
            k = int(same.sum())
            if k < max(8, n_valid // 2):
                continue
            site = (frame.path, frame.line) if frame else None
            if site in self._target_read_sites:
                continue
            self._target_read_sites.add(site)
            self._emit(TargetRead, positions=P.ranges_from_sorted(np.unique(pos[same])), frame=frame,
                       loss_frame=loss_frame)

    def _coarse_only(self, args, kwargs, out) -> bool:
        """Fast path for the bulk of traced ops (activations, logits, grads): every tagged input
        carries only a coarse mask. Sets the output's mask; False when a richer rule is needed."""
        infos = self.infos
        mask = 0
        grad = False
        in_ids = set()
        for a in args:
            if isinstance(a, Tensor):
                k = id(a.untyped_storage())
                in_ids.add(k)
                i = infos.get(k)
            elif type(a) in (list, tuple):
                return False
            else:
                continue
            if i is None:
                continue
            if i.pmap is not None or i.smap is not None or i.stag or i.mark is not None:
                return False
            m = i.mask
            if m and m is not mask:
                mask = m if not mask else (mask | m)
            grad = grad or i.grad
        for a in kwargs.values():
            if isinstance(a, Tensor):
                return False
        if isinstance(out, Tensor):
            o = out
        elif isinstance(out, (list, tuple)) and len(out) == 1 and isinstance(out[0], Tensor):
            o = out[0]
        else:
            return False
        st = o.untyped_storage()
        if id(st) in in_ids:
            return True  # aliases an input: nothing new
        grad = grad or C.in_backward()
        if not mask and not grad:
            return True
        if self.scores_only:
            return True
        info = self._info_for(o, create=True)
        info.mask = mask
        info.grad = grad
        info.gen += 1
        return True

    # -- outputs in new storages
    def _on_fresh(self, func, name, rule, args, kwargs, ins, fresh) -> None:
        tagged = [(k, t, i) for (k, t, i) in ins if i is not None]
        grad_pass = C.in_backward()  # a gradient is not a score: score tags stop here
        grad = grad_pass or any(i.grad for _, _, i in tagged)
        map_of = lambda x: self._pmap(x, self.infos.get(id(x.untyped_storage())))  # noqa: E731
        smap_of = lambda x: self._smap(x, self.infos.get(id(x.untyped_storage())))  # noqa: E731
        has_pmap = any(i.pmap is not None for _, _, i in tagged)
        has_smap = any(i.smap is not None for _, _, i in tagged)
        has_coarse = any((i.pmap is None and i.mask) for _, _, i in tagged)
        single = len(fresh) == 1
        for o in fresh:
            pm = None
            sm = None
            if single and has_pmap and P.is_token_dtype(o.dtype):
                pm = self._derive_map(func, name, rule, args, kwargs, o, map_of)
            if single and has_smap and not grad_pass:
                sm = self._derive_smap(func, name, rule, args, kwargs, o, smap_of, ins)
            info = self._info_for(o, create=True)
            info.gen += 1
            info.grad = grad
            if pm is not None:
                info.pmap = P.new_flat(o, C.storage_nelems(o), pm)
                info.itemsize = o.element_size()
                extra = 0
                if not self.scores_only:
                    for _, t, i in tagged:
                        extra |= i.mask if i.pmap is not None else self._mask_of(t, i)
                info.mask = extra
            elif not self.scores_only:
                m = 0
                for _, t, i in tagged:
                    mi = self._mask_of(t, i)
                    if mi and mi is not m:
                        m = mi if not m else (m | mi)
                info.mask = m
            if sm is not None:
                info.smap = P.new_flat(o, C.storage_nelems(o), sm)
                info.itemsize = o.element_size()
                info.pstate = self._score_state(name, args, kwargs, ins)
                if info.pstate == "rescore":
                    info.pstate = None
                    self._rescore(o, info)
                rest = [(t, i) for _, t, i in tagged if i.smap is None and i.stag]
                if rest:
                    info.stag = self._union_stags(self._stag_of(t, i) for t, i in rest)
            elif (has_smap or any(i.stag for _, _, i in tagged)) and not grad_pass:
                info.stag = self._union_stags(self._stag_of(t, i) for _, t, i in tagged if i.smap is not None or i.stag)
            if name in P.MARK_PRODUCERS:
                info.mark = P.MARK_PRODUCERS[name]
            trans = P.MARK_TRANSFORMS.get(name)
            if trans and tagged and tagged[0][2].mark in trans and tagged[0][0] == 0:
                info.mark = trans[tagged[0][2].mark]
            if info.pmap is None and info.smap is None and not info.mask and not info.stag and not info.mark \
                    and not info.grad:
                self.infos.pop(id(o.untyped_storage()), None)
        del has_coarse

    def _derive_map(self, func, name, rule, args, kwargs, o, map_of) -> Tensor | None:
        try:
            if rule.kind in ("struct", "copy", "pad"):
                return P.replay(func, rule, args, kwargs, map_of)
            if rule.kind == "lookup":
                data_tagged = any(isinstance(args[i], Tensor) and map_of(args[i]) is not None
                                  for i in rule.data if i < len(args))
                m = P.index_map(func, rule, args, o, map_of)
                if data_tagged:
                    r = P.replay(func, rule, args, kwargs, map_of)
                    if r is None:
                        return None
                    m = r if m is None else torch.maximum(r, m)
                return m
            if rule.kind == "pointwise":
                # coarse-only inputs (float activations) make the result coarse
                for a in list(args) + list(kwargs.values()):
                    if isinstance(a, Tensor) and a.dim() > 0:
                        i = self.infos.get(id(a.untyped_storage()))
                        if i is not None and i.pmap is None and i.mask:
                            return None
                if name == "aten::where" and len(args) == 3 and isinstance(args[0], Tensor):
                    return P.where_map(args, o, map_of)
                return P.pointwise_max(args, kwargs, o, map_of)
        except Exception as exc:
            self._internal_error(func, exc)
        return None

    def _derive_smap(self, func, name, rule, args, kwargs, o, smap_of, ins) -> Tensor | None:
        try:
            if rule.kind in ("struct", "copy", "pad", "lookup"):
                if rule.kind == "lookup":
                    # only the data side may carry scores
                    if any(isinstance(args[i], Tensor) and smap_of(args[i]) is not None
                           for i in rule.index if i < len(args) and isinstance(args[i], Tensor)):
                        return None
                return P.replay(func, rule, args, kwargs, smap_of)
            if rule.kind == "pointwise":
                scored = [a for a in list(args) + list(kwargs.values())
                          if isinstance(a, Tensor) and smap_of(a) is not None]
                if len(scored) != 1:
                    return None
                src = scored[0]
                sm = smap_of(src).expand(o.shape).clone()
                if name in P.MASKING_OPS:
                    sm = self._drop_masked(name, args, src, sm, o)
                return sm
        except Exception as exc:
            self._internal_error(func, exc)
        return None

    @staticmethod
    def _drop_masked(name, args, src, sm, o) -> Tensor:
        """Elements a mask zeroes out are not scores: nll * mask, where(cond, nll, 0)."""
        if name == "aten::mul":
            other = args[1] if args[0] is src else args[0]
            if isinstance(other, Tensor):
                sm = sm.masked_fill((other == 0).expand(o.shape), -1)
            elif other == 0:
                sm.fill_(-1)
        elif name == "aten::where":
            cond = args[0]
            if args[1] is src:
                sm = sm.masked_fill((~cond.bool()).expand(o.shape), -1)
            elif len(args) > 2 and args[2] is src:
                sm = sm.masked_fill(cond.bool().expand(o.shape), -1)
        elif name == "aten::masked_fill" and args[0] is src:
            sm = sm.masked_fill(args[1].bool().expand(o.shape), -1)
        return sm

    @staticmethod
    def _union_stags(tags: Iterable[dict[int, int]]) -> dict[int, int] | None:
        out: dict[int, int] = {}
        for tag in tags:
            for k, m in tag.items():
                cur = out.get(k)
                out[k] = m if cur is None else (cur | m)
        return out or None

    # -- in-place writes
    def _on_write(self, func, name, rule, args, kwargs, ins, dests) -> None:
        grad = C.in_backward()
        for dk, d, dinfo in dests:
            # sources: every other tensor input (for foreach ops, the same list slot)
            srcs = []
            for k, t, i in ins:
                if k == dk:
                    continue
                if isinstance(dk, tuple) and isinstance(k, tuple) and k[1] != dk[1]:
                    continue
                srcs.append((k, t, i))
            src_tagged = [(k, t, i) for k, t, i in srcs if i is not None]
            src_mask = 0
            if not self.scores_only:
                for _, t, i in src_tagged:
                    mi = self._mask_of(t, i)
                    if mi and mi is not src_mask:
                        src_mask = mi if not src_mask else (src_mask | mi)
            src_grad = grad or any(i.grad for _, _, i in src_tagged)
            src_stag = None
            if not grad:
                src_stag = self._union_stags(self._stag_of(t, i) for _, t, i in src_tagged
                                             if i.smap is not None or i.stag)
            reg = self.registry.get(id(d.untyped_storage())) if not self.scores_only else None
            if reg is not None:
                src_stag = None  # an update is not a score record

            # a write carrying validation positions into persistent state: an Update
            if reg is not None and src_mask:
                self._update(reg, src_mask, src_grad, id(d.untyped_storage()))

            # accumulation of scores into a plain tensor: a score sink
            if src_stag and rule.accumulate and reg is None and not d.requires_grad:
                self._sink(src_stag, "accumulate")

            if dinfo is None and not (src_tagged or reg is not None):
                continue
            if dinfo is None:
                dinfo = self._info_for(d, create=True)
            dinfo.gen += 1
            full = d.numel() * d.element_size() == d.untyped_storage().nbytes()
            if rule.kind in ("fill", "copy_") and full and not src_mask:
                dinfo.mask = 0
                dinfo.stag = None
            if rule.kind == "copy_" and full:
                dinfo.mask = src_mask
                dinfo.stag = None
            else:
                dinfo.mask |= src_mask
            dinfo.grad = dinfo.grad or src_grad
            if reg is not None:
                dinfo.grad = src_grad
            self._write_maps(func, name, rule, args, kwargs, d, dinfo, srcs, src_stag)
            if src_stag and not (dinfo.smap is not None and rule.kind in ("copy_", "index_put")):
                dinfo.stag = self._union_stags([dinfo.stag or {}, src_stag])

    def _write_maps(self, func, name, rule, args, kwargs, d, dinfo, srcs, src_stag) -> None:
        """Position / score maps of an in-place destination."""
        map_of = lambda x: self._pmap(x, self.infos.get(id(x.untyped_storage())))  # noqa: E731
        smap_of = lambda x: self._smap(x, self.infos.get(id(x.untyped_storage())))  # noqa: E731
        src_pmaps = [(k, t) for k, t, i in srcs if i is not None and i.pmap is not None]
        src_smaps = [(k, t) for k, t, i in srcs if i is not None and i.smap is not None]
        try:
            if P.is_token_dtype(d.dtype) and (dinfo.pmap is not None or src_pmaps):
                if dinfo.pmap is None or d.element_size() != dinfo.itemsize:
                    dinfo.pmap = torch.full((C.storage_nelems(d),), -1, dtype=torch.int64)
                    dinfo.itemsize = d.element_size()
                dv = P.view_of(dinfo.pmap, d)
                if rule.kind == "fill":
                    dv.fill_(-1)
                elif rule.kind == "copy_":
                    src = args[1]
                    m = map_of(src)
                    dv.copy_(m if m is not None else torch.full(src.shape, -1, dtype=torch.int64))
                elif rule.kind == "index_put":
                    vals = args[2]
                    m = map_of(vals)
                    acc = bool(args[3]) if len(args) > 3 else bool(kwargs.get("accumulate", False))
                    if acc:
                        pass  # counts: the destination keeps its map; the coarse mask has the union
                    else:
                        dv.index_put_(tuple(args[1]), m if m is not None else
                                      torch.full(vals.shape, -1, dtype=torch.int64))
                elif rule.kind == "pointwise":
                    for _, t in src_pmaps:
                        dv.copy_(torch.maximum(dv, map_of(t)))
            if dinfo.smap is not None or src_smaps:
                if rule.kind in ("copy_", "index_put") and src_smaps:
                    if dinfo.smap is None:
                        dinfo.smap = torch.full((C.storage_nelems(d),), -1, dtype=torch.int64)
                        dinfo.itemsize = d.element_size()
                    dv = P.view_of(dinfo.smap, d)
                    if rule.kind == "copy_":
                        dv.copy_(smap_of(args[1]))
                    else:
                        vals = args[2]
                        m = smap_of(vals)
                        if m is not None:
                            dv.index_put_(tuple(args[1]), m)
                elif rule.kind == "fill" and dinfo.smap is not None:
                    P.view_of(dinfo.smap, d).fill_(-1)
                elif dinfo.smap is not None and rule.kind == "copy_":
                    P.view_of(dinfo.smap, d).fill_(-1)
        except Exception as exc:
            self._internal_error(func, exc)

    # ------------------------------------------------------------ loss ops and scores
    def _loss_op(self, func, name, rule, args, kwargs, out, ins) -> bool:
        """Register a loss op when its target carries a position map. Returns True when the
        op was handled (outputs tagged)."""
        try:
            if rule.kind == "loss":
                logp, target = args[0], args[1]
                tinfo = self.infos.get(id(target.untyped_storage()))
                tmap = self._pmap(target, tinfo)
                if tmap is None:
                    return False
                weight = args[2] if len(args) > 2 else kwargs.get("weight")
                reduction = int(args[3]) if len(args) > 3 else int(kwargs.get("reduction", 1))
                ignore = int(args[4]) if len(args) > 4 else int(kwargs.get("ignore_index", -100))
                loss = out[0] if isinstance(out, (tuple, list)) else out
                if reduction == 0:
                    per = loss
                else:
                    per = func(logp, target, weight, 0, ignore)
                    per = per[0] if isinstance(per, (tuple, list)) else per
                nll = per.detach().reshape(-1).to(torch.float64).numpy().copy()
                pos = tmap.reshape(-1).numpy().copy()
                pos[(target.reshape(-1) == ignore).numpy()] = -1
                out_t = per if reduction == 0 else None
            else:
                data = args[0]
                dinfo = ins[0][2]
                idx_pos = P.RULES[name].index[0]
                idx = args[idx_pos]
                if isinstance(idx, (list, tuple)):
                    tensors = [x for x in idx if isinstance(x, Tensor)]
                else:
                    tensors = [idx] if isinstance(idx, Tensor) else []
                map_of = lambda x: self._pmap(x, self.infos.get(id(x.untyped_storage())))  # noqa: E731
                if not tensors or all(map_of(x) is None for x in tensors):
                    return False
                loss_t = out if isinstance(out, Tensor) else None
                if loss_t is None or loss_t.is_floating_point() is False:
                    return False
                imap = P.index_map(func, P.RULES[name], args, loss_t, map_of)
                if imap is None:
                    return False
                vals = loss_t.detach().reshape(-1).to(torch.float64).numpy()
                if dinfo.mark == P.LOGP:
                    nll = -vals
                elif dinfo.mark == P.PROB:
                    with np.errstate(divide="ignore"):
                        nll = -np.log(vals)
                else:
                    nll = vals.copy()
                pos = imap.reshape(-1).numpy().copy()
                reduction = 0
                out_t = loss_t
                del data
            grad_enabled = bool(torch.is_grad_enabled())
            op = self._new_loss_op(pos, nll, grad_enabled)
            # outputs: a per-element score map, or a coarse score tag on the reduced value
            tagged = [(k, t, i) for (k, t, i) in ins if i is not None]
            mask = 0
            if not self.scores_only:
                for _, t, i in tagged:
                    mask |= self._mask_of(t, i)
            grad = C.in_backward() or any(i.grad for _, _, i in tagged)
            outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, Tensor)]
            for j, o in enumerate(outs):
                info = self._info_for(o, create=True)
                info.gen += 1
                info.mask = mask
                info.grad = grad
                if j > 0:
                    continue  # total_weight
                if out_t is not None and reduction == 0:
                    ids = torch.arange(op.base, op.base + op.n, dtype=torch.int64).reshape(o.shape)
                    info.smap = P.new_flat(o, C.storage_nelems(o), ids)
                    info.itemsize = o.element_size()
                else:
                    valid = np.nonzero(op.positions >= 0)[0]
                    info.stag = {op.id: P.mask_from_positions(valid)}
            return True
        except Exception as exc:
            self._internal_error(func, exc)
            return False

    # A score blended in probability space after the loss op -- -log((1-w)*exp(-nll) + w*q),
    # the eval-time n-gram caches of PR #1420 -- is a new score: the value that reaches the sum
    # is the blend's, not the loss op's. The chain neg -> exp -> (mixing ops) -> log is followed
    # on score maps; at the log a new loss op records the blended NLL for the same positions.
    _SAME_STATE = frozenset({"aten::_to_copy", "aten::clone", "aten::contiguous", "aten::alias", "aten::detach",
                             "aten::view", "aten::reshape", "aten::squeeze", "aten::unsqueeze", "aten::flatten",
                             "aten::slice", "aten::select", "aten::expand", "aten::cat", "aten::stack",
                             "aten::index", "aten::index_select", "aten::masked_select", "aten::lift_fresh"})
    _MIXING = frozenset({"aten::add", "aten::sub", "aten::rsub", "aten::mul", "aten::div", "aten::where",
                         "aten::addcmul", "aten::lerp", "aten::clamp", "aten::clamp_min"})

    def _score_state(self, name: str, args, kwargs, ins) -> str | None:
        src = next((i for _, _, i in ins if i is not None and i.smap is not None), None)
        state = src.pstate if src is not None else None
        if name in self._SAME_STATE:
            return state
        if name == "aten::neg":
            return "neg" if state is None else (None if state == "neg" else "blend" if state else None)
        if name == "aten::mul" and state in (None, "neg") and any(
                isinstance(a, (int, float)) and float(a) == -1.0 for a in args[1:]):
            return "neg" if state is None else None
        if name == "aten::exp":
            return "prob" if state == "neg" else None
        if name in self._MIXING and state in ("prob", "blend"):
            return "blend"
        if name == "aten::log":
            return "rescore" if state == "blend" else None
        return None

    def _rescore(self, o: Tensor, info: Info) -> None:
        """`o` = log of a blended probability: a new loss op over the same target positions."""
        try:
            ids = info.smap.reshape(-1).numpy() if o.numel() == info.smap.numel() else None
            if ids is None:
                v = self._smap(o, info)
                ids = v.reshape(-1).numpy() if v is not None else None
            if ids is None:
                return
            pos = np.full(ids.size, -1, dtype=np.int64)
            valid = ids >= 0
            if valid.any():
                which = np.searchsorted(self._loss_bases, ids[valid], "right") - 1
                src_pos = np.empty(int(valid.sum()), dtype=np.int64)
                for k in np.unique(which).tolist():
                    sel = which == k
                    op = self.loss_ops[k]
                    src_pos[sel] = op.positions[ids[valid][sel] - op.base]
                pos[valid] = src_pos
            was, self.paused = self.paused, True  # our own read of the values is not a host read
            try:
                vals = o.detach().reshape(-1).to(torch.float64).numpy().copy()
            finally:
                self.paused = was
            op = self._new_loss_op(pos, -vals, bool(torch.is_grad_enabled()))
            new_ids = torch.arange(op.base, op.base + op.n, dtype=torch.int64)
            new_ids[torch.from_numpy(~valid)] = -1
            info.smap = P.new_flat(o, C.storage_nelems(o), new_ids.reshape(o.shape))
        except Exception as exc:
            self._internal_error("rescore", exc)

    def _new_loss_op(self, pos: np.ndarray, nll: np.ndarray, grad_enabled: bool) -> LossOp:
        if not self.scores_only:
            # A `p.data = other` swap made before this loss changed the weights it was computed
            # with: record it first, so its Update precedes this LossComputed in the timeline
            # (vector_to_parameters TTT, submissions/evasion/vector_swap_update).
            self._check_param_swaps()
        with self._lock:
            frame = self._frame_deep()
            valid = pos[pos >= 0]
            ev = self._emit(LossComputed, loss_op=len(self.loss_ops), positions=P.ranges_from_sorted(np.unique(valid)),
                            grad_enabled=grad_enabled, frame=frame)
            op = LossOp(id=len(self.loss_ops), base=self._next_score_id, n=int(pos.size), positions=pos,
                        nll=nll, grad_enabled=grad_enabled, seq=ev.seq, frame=frame)
            op.reads = frozenset(self._reads)
            if self._lookups:
                self._check_target_read(pos, frame)
                # only lookups of this forward pass feed this loss: a later forward starts afresh
                # (windows of another batch would compare positions that are not aligned)
                self._lookups.clear()
            self._next_score_id += max(op.n, 1)
            self.loss_ops.append(op)
            self._loss_bases = np.append(self._loss_bases, op.base)
            return op

    def _frame_deep(self) -> Frame | None:
        return self.frames.find(2)

    def _score_seq(self, op: LossOp) -> int:
        """A Scored event sits in the timeline where its values were computed: right after its
        LossComputed (seq + 1, + 2, ...). Past the stride's room: at the sink."""
        op.n_scored_events += 1
        if op.n_scored_events < _SEQ_STRIDE:
            return op.seq + op.n_scored_events
        return next(self._seq) * _SEQ_STRIDE

    def _sink(self, stag: dict[int, int], sink: str) -> None:
        """Scores reaching a sink: one Scored event per loss op for elements not yet recorded
        (a repeated position inside one op goes to a further event)."""
        frame = None
        for op_id, elems in sorted(stag.items()):
            op = self.loss_ops[op_id]
            new = elems & ~op.recorded
            if not new:
                continue
            op.recorded |= new
            for name in op.reads:  # the state this score was computed with is live up to here
                if self._last_read.get(name, -1) < op.seq:
                    self._last_read[name] = op.seq
            idx = P.positions_from_mask(new)
            idx = idx[idx < op.n]
            pos = op.positions[idx]
            keep = pos >= 0
            idx, pos = idx[keep], pos[keep]
            if not idx.size:
                continue
            if frame is None:
                frame = self.frames.find(3)
            order = np.argsort(pos, kind="stable")
            idx, pos = idx[order], pos[order]
            sink_seq = next(self._seq) * _SEQ_STRIDE
            # split repeated positions into successive events
            while idx.size:
                first = np.ones(pos.size, dtype=bool)
                first[1:] = pos[1:] != pos[:-1]
                self._emit(Scored, seq=self._score_seq(op), loss_op=op.id,
                           positions=P.ranges_from_sorted(pos[first]),
                           nll=[float(x) for x in op.nll[idx[first]]], sink=sink,
                           grad_enabled=op.grad_enabled, frame=frame, sink_seq=sink_seq)
                idx, pos = idx[~first], pos[~first]

    def _host_read(self, t: Tensor, info: Info | None, how: str) -> None:
        if info is None:
            return
        stag = self._stag_of(t, info)
        if stag:
            self._sink(stag, "host-read")
            return
        if self.scores_only:
            return
        if how == "item" and info.pmap is None:
            return  # a statistic (count, norm, byte total) read as a number: not token data
        mask = self._mask_of(t, info)
        if mask:
            where = {"numpy": "numpy", "tolist": "python-list", "item": "python-scalar"}.get(how, how)
            frame = self.frames.find(3)
            key = (where, frame.path if frame else "", frame.line if frame else 0)
            hit = self._lost.get(key)
            if hit is None:
                self._lost[key] = [0, 0]
                self._emit(ProvenanceLost, where=where, positions=self._ranges(mask), frame=frame)
            else:
                hit[0] += 1
                hit[1] |= mask

    def _flush_lost(self) -> None:
        for (where, path, line), (n, mask) in self._lost.items():
            if n and mask:
                self._emit(ProvenanceLost, where=f"{where} (repeated {n} more times at this line)",
                           positions=self._ranges(mask),
                           frame=Frame(path=path, line=line, function="", code="") if path else None)
        self._lost.clear()

    # ------------------------------------------------------------ updates
    def _update(self, reg: _Reg, mask: int, grad: bool, storage_id: int | None = None) -> None:
        if storage_id is not None and reg.kind != "optimizer-state":
            self._watch[storage_id] = reg.name
            self._watched_names.add(reg.name)
        if self._n_updates >= self.cfg.max_update_events:
            return
        via = "optimizer-step" if self._in_step else ("gradient" if grad else "direct")
        key = (reg.name, via, self._step_id if self._in_step else -1)
        last = self._last_update.get(key)
        if last is not None and last == mask:
            return  # the same positions written again in the same step (momentum, decay, ...)
        self._last_update[key] = mask
        if len(self._last_update) > 4096:
            self._last_update.clear()
        if reg.kind == "optimizer-state" and self._in_step:
            # momentum / second-moment writes repeat what the step writes into the parameter:
            # one optimizer-state event per step and position set is enough
            skey = (self._step_id, mask)
            if skey in self._state_seen:
                return
            if len(self._state_seen) > 4096:
                self._state_seen.clear()
            self._state_seen.add(skey)
        self._n_updates += 1
        self._emit(Update, target=reg.name, target_kind=reg.kind, via=via, positions=self._ranges(mask),
                   frame=self.frames.find(4), step_frame=self._step_frame if self._in_step else None)

    def _register(self, t: Tensor, name: str, kind: str, provisional: bool) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = id(st)
        cur = self.registry.get(key)
        if cur is not None:
            upgrade = (cur.provisional and not provisional) or (
                not provisional and len(name) > len(cur.name) and name.endswith("." + cur.name))
            if not upgrade:
                return
        registry, watch = self.registry, self._watch

        def gone(_ref, key=key, registry=registry, watch=watch):
            c = registry.get(key)
            if c is not None and c.ref is _ref:
                del registry[key]
                watch.pop(key, None)  # the id may be reused by a new storage: not the same state

        self.registry[key] = _Reg(name=name, kind=kind, provisional=provisional, ref=weakref.ref(st, gone))
        if kind == "parameter":
            self._param_refs.append((weakref.ref(t), key))

    def _check_param_swaps(self) -> None:
        """`p.data = other` swaps a parameter's storage without any op: re-register, and a
        swapped-in storage that carries validation positions is an Update (direct)."""
        alive = []
        for ref, key in self._param_refs:
            p = ref()
            if p is None:
                continue
            try:
                st = p.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            if id(st) != key:
                old = self.registry.get(key)
                name = old.name if old else "<parameter>"
                self._register(p, name, "parameter", provisional=False)
                info = self.infos.get(id(st))
                if info is not None and info.mask:
                    reg = self.registry.get(id(st))
                    if reg is not None:
                        self._update(reg, info.mask, info.grad, id(st))
                alive.append((ref, id(st)))
            else:
                alive.append((ref, key))
        self._param_refs = alive

    def _install_hooks(self) -> None:
        import torch.nn.modules.module as mm

        def on_param(module, name, param):
            if param is not None and not self.paused:
                self._register(param, f"{type(module).__name__}.{name}", "parameter", provisional=True)

        def on_buffer(module, name, buf):
            if buf is not None and not self.paused:
                self._register(buf, f"{type(module).__name__}.{name}", "buffer", provisional=True)

        def on_call(module, args):
            if self.paused or module in self._seen_modules:
                return None
            self._name_module(module)
            return None

        self._scan_existing_modules()
        handles = [mm.register_module_parameter_registration_hook(on_param),
                   mm.register_module_buffer_registration_hook(on_buffer),
                   mm.register_module_forward_pre_hook(on_call)]
        import torch.optim.optimizer as opt

        def pre(optimizer, args, kwargs):
            if self.paused:
                return
            self._in_step += 1
            self._reads = set()  # a new step: what the next forward reads starts afresh
            self._step_id += 1
            self._step_frame = self.frames.find(3)
            self._name_optimizer(optimizer)

        def post(optimizer, args, kwargs):
            if self.paused:
                return
            self._name_optimizer(optimizer)
            self._in_step = max(0, self._in_step - 1)

        handles += [opt.register_optimizer_step_pre_hook(pre), opt.register_optimizer_step_post_hook(post)]
        self.hook_handles.extend(handles)
        self._undo.append(lambda: [h.remove() for h in handles])

    def _scan_existing_modules(self) -> None:
        """Modules built before install (tests; scripts that import a model): name the
        parameters of every root module now. One pass over the heap, at install only."""
        import gc

        module_type = torch.nn.Module
        mods = [o for o in gc.get_objects() if issubclass(type(o), module_type)]
        children = set()
        for m in mods:
            for c in m.children():
                children.add(id(c))
        for m in mods:
            if id(m) not in children:
                self._name_module(m)

    def _name_module(self, module: torch.nn.Module) -> None:
        cls = type(module).__name__
        k = self._root_names.get(cls, 0) + 1
        self._root_names[cls] = k
        prefix = "" if k == 1 else f"{cls}#{k}:"
        for name, p in module.named_parameters(remove_duplicate=True):
            self._register(p, prefix + _clean(name), "parameter", provisional=False)
        for name, b in module.named_buffers(remove_duplicate=True):
            if b is not None:
                self._register(b, prefix + _clean(name), "buffer", provisional=False)
        for m in module.modules():
            self._seen_modules.add(m)

    def _name_optimizer(self, optimizer: Any) -> None:
        for group in getattr(optimizer, "param_groups", []):
            for p in group.get("params", []):
                if isinstance(p, Tensor) and id(p.untyped_storage()) not in self.registry:
                    self._register(p, f"<param {tuple(p.shape)}>", "parameter", provisional=True)
        state = getattr(optimizer, "state", {})
        for p, st in list(state.items()):
            if not isinstance(st, dict):
                continue
            reg = self.registry.get(id(p.untyped_storage())) if isinstance(p, Tensor) else None
            pname = reg.name if reg else "<param>"
            for key, v in st.items():
                if isinstance(v, Tensor) and v.dim() > 0 and id(v.untyped_storage()) not in self.registry:
                    self._register(v, f"{pname}:{key}", "optimizer-state", provisional=False)

    # ------------------------------------------------------------ patches
    def _install_patches(self) -> None:
        tr = self

        def patch(owner, attr, make):
            real = getattr(owner, attr)
            wrapper = make(real)
            setattr(owner, attr, wrapper)
            self.patched.append((owner, attr, getattr(owner, attr)))  # as read back (a function on a class)
            self._undo.append(lambda: setattr(owner, attr, real))

        def host(how):
            def make(real):
                @functools.wraps(real)
                def wrapper(t, *a, **k):
                    if not tr.paused and tr.installed and isinstance(t, Tensor):
                        try:
                            info = tr.infos.get(id(t.untyped_storage()))
                            if info is not None:
                                tr.paused = True
                                try:
                                    tr._host_read(t, info, how)
                                finally:
                                    tr.paused = False
                        except Exception as exc:
                            tr._internal_error(how, exc)
                    return real(t, *a, **k)
                return wrapper
            return make

        patch(torch.Tensor, "numpy", host("numpy"))
        patch(torch.Tensor, "tolist", host("tolist"))

        def frombuffer(real):
            @functools.wraps(real)
            def wrapper(*a, **k):
                out = real(*a, **k)
                if not tr.paused and tr.installed:
                    tr.paused = True
                    try:
                        tr._match(out, "frombuffer")
                    except Exception as exc:
                        tr._internal_error("frombuffer", exc)
                    finally:
                        tr.paused = False
                return out
            return wrapper

        patch(torch, "frombuffer", frombuffer)

        def save(real):
            @functools.wraps(real)
            def wrapper(obj, *a, **k):
                if not tr.paused and tr.installed and not tr.scores_only:
                    tr.paused = True
                    try:
                        tr._serialized(obj)
                    except Exception as exc:
                        tr._internal_error("torch.save", exc)
                    finally:
                        tr.paused = False
                return real(obj, *a, **k)
            return wrapper

        patch(torch, "save", save)
        self._install_collectives(patch)

    def _serialized(self, obj) -> None:
        """torch.save of model state: the artifact is persistent state the final eval loads
        back (through bytes and files provenance cannot follow), so values derived from
        validation tokens in it (GPTQ statistics from val, pre-quant TTT weights) are an Update
        of target_kind "artifact". Raw token tensors (a position map) are not model state."""
        mask = 0
        seen: set[int] = set()
        stack = [obj]
        while stack:
            x = stack.pop()
            if id(x) in seen:
                continue
            seen.add(id(x))
            if isinstance(x, Tensor):
                info = self.infos.get(id(x.untyped_storage()))
                if info is not None and info.pmap is None:
                    mask |= self._mask_of(x, info)
            elif isinstance(x, dict):
                stack.extend(x.values())
            elif isinstance(x, (list, tuple)):
                stack.extend(x)
            elif hasattr(x, "state_dict") and callable(x.state_dict):  # a whole module
                stack.append(x.state_dict())
        if mask:
            self._emit(Update, target="torch.save(...)", target_kind="artifact", via="direct",
                       positions=self._ranges(mask), frame=self.frames.find(3), step_frame=None)

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
        return mask, grad, (self._union_stags(tags) or {})

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

    # ------------------------------------------------------------ threads
    def _install_threads(self) -> None:
        """New threads start with an empty mode stack: enter a mode for this tracer in each."""
        tr = self

        def hook():
            if not tr.installed:
                return None
            return _Mode(tr)

        try:
            from harness.dynamic.cpu import shims

            if shims.STATE is not None:
                shims.register_thread_hook(hook)
                self._undo.append(lambda: shims.STATE and hook in shims.STATE.thread_hooks
                                  and shims.STATE.thread_hooks.remove(hook))
                return
        except ImportError:
            pass
        real = threading.Thread._bootstrap_inner

        def bootstrap_inner(thread_self):
            mode = hook()
            if mode is None:
                return real(thread_self)
            with mode:
                return real(thread_self)

        threading.Thread._bootstrap_inner = bootstrap_inner
        self._undo.append(lambda: setattr(threading.Thread, "_bootstrap_inner", real))


def _clean(name: str) -> str:
    """Drop wrapper prefixes (DDP's module., torch.compile's _orig_mod.)."""
    for pre in ("module.", "_orig_mod."):
        while name.startswith(pre):
            name = name[len(pre):]
    return name


def _flat_tensors(values: Iterable[Any]) -> list[Tensor]:
    out = []
    for v in values:
        if isinstance(v, Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(x for x in v if isinstance(x, Tensor))
    return out
