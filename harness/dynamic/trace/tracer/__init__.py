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

The package holds the Tracer's parts by concern; the Tracer class itself (state, lifecycle,
the trace it writes) is here:

    config.py        TracerConfig
    val_index.py     ValIndex: the content index of the validation stream
    data_loading.py  loading the stream; recognising tokens entering torch
    frames.py        FrameFinder: the submission frame an event is reported at
    mode.py          the TorchDispatchMode and its fast paths
    plans.py         OpPlan: per-op facts, computed once
    storage.py       Info (per-storage provenance) and lookups on it
    propagate.py     the slow path: provenance through one op, in-place writes
    losses.py        loss ops, blended re-scoring, target-keyed lookups
    sinks.py         Scored / ProvenanceLost at accumulations and host reads
    updates.py       persistent state, Update events, torch.save artifacts
    patches.py       patched entry points (numpy/tolist, frombuffer, save), threads
    collectives.py   torch.distributed collectives
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.dynamic.trace import torch_compat as C
from harness.dynamic.trace.events import Frame, LossComputed, RunStart, Scored, Trace, Update
from harness.dynamic.trace.tracer.collectives import CollectiveMixin
from harness.dynamic.trace.tracer.config import TracerConfig
from harness.dynamic.trace.tracer.data_loading import DataLoadingMixin
from harness.dynamic.trace.tracer.frames import FrameFinder
from harness.dynamic.trace.tracer.losses import LossMixin, LossOp
from harness.dynamic.trace.tracer.mode import TracerMode
from harness.dynamic.trace.tracer.patches import PatchMixin
from harness.dynamic.trace.tracer.plans import OpPlan, make_plan
from harness.dynamic.trace.tracer.propagate import PropagationMixin
from harness.dynamic.trace.tracer.sinks import SEQ_STRIDE, SinkMixin
from harness.dynamic.trace.tracer.storage import Info, StorageMixin
from harness.dynamic.trace.tracer.updates import Registration, UpdateMixin
from harness.dynamic.trace.tracer.val_index import ValIndex

__all__ = ["Tracer", "TracerConfig", "ValIndex", "Info", "LossOp", "OpPlan", "Registration", "FrameFinder",
           "TracerMode", "SEQ_STRIDE"]

_WATCHED_EVENTS = (LossComputed, Scored, Update)  # the integrity check runs at each of these


class Tracer(DataLoadingMixin, StorageMixin, PropagationMixin, LossMixin, SinkMixin, UpdateMixin, PatchMixin,
             CollectiveMixin):
    """One rank's tracer. All state lives here (set up in __init__); the mixins hold the
    methods by concern (see the module docstring)."""

    def __init__(self, config: TracerConfig | None = None, **kwargs: Any):
        cfg = config or TracerConfig(**kwargs)
        self.cfg = cfg
        self.rank = cfg.rank if cfg.rank is not None else int(os.environ.get("RANK", "0"))
        self.world_size = cfg.world_size if cfg.world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
        self.events: list = []
        self.infos: dict[int, Info] = {}
        self.registry: dict[int, Registration] = {}
        self.loss_ops: list[LossOp] = []
        self._loss_bases = np.zeros(0, dtype=np.int64)
        self._next_score_id = 0
        self.paused = False
        self.installed = False
        self.scores_only = bool(cfg.capture_scores_only)
        self.frames = FrameFinder(cfg.submission_dir)
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
        self._plans: dict = {}  # OpOverload -> OpPlan
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
        self._param_names: dict = {}  # parameter name -> weakref to the parameter registered under it
        self.errors: list[str] = []
        self.index: ValIndex | None = None
        self.val_sources: list[str] = []
        self.special = self._special_table()

    # -- lifecycle
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
        mode = TracerMode.of(self)
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

    # -- events
    def _emit(self, cls, seq: int | None = None, **fields):
        ev = cls(seq=seq if seq is not None else next(self._seq) * SEQ_STRIDE, rank=self.rank, **fields)
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

    def _plan(self, func) -> OpPlan:
        """Per-op facts (plans.OpPlan), computed once per op."""
        plan = self._plans.get(func)
        if plan is None:
            plan = make_plan(func)
            self._plans[func] = plan
        return plan
