"""Where validation data enters the trace: loading the validation stream the Tracer is told
about (or finds), and recognising integer tensors entering torch (lift_fresh, from_file,
frombuffer) by content against it; the table of such untagged ops the dispatch mode still
hands over (`special`)."""
from __future__ import annotations

import glob
import os

import numpy as np
import torch

from harness.challenge.shards import read_tokens
from harness.dynamic.trace import provenance as P
from harness.dynamic.trace import torch_compat as C
from harness.dynamic.trace.events import ProvenanceLost, ValLoaded
from harness.dynamic.run.paths import STATE_DIR
from harness.dynamic.trace.tracer.val_index import ValIndex

Tensor = torch.Tensor


def discover_val_files() -> list[str]:
    """Shards where contest scripts look: $DATA_PATH, then data/ under the cwd."""
    pats = []
    if os.environ.get("DATA_PATH"):
        pats.append(os.path.join(os.environ["DATA_PATH"], "fineweb_val_*.bin"))
    pats += ["data/datasets/*/fineweb_val_*.bin", f"{STATE_DIR}/data/datasets/*/fineweb_val_*.bin"]
    for pat in pats:
        files = sorted(glob.glob(pat))
        if files:
            return files
    return []


class DataLoadingMixin:
    """Tracer methods that set `self.index` / `self.val_sources` and tag matched tensors."""

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
                    or discover_val_files()
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
        self._emit(ValLoaded, positions=P.ranges_of_positions(pos), how="content-match",
                   frame=frame)

    # -- ops with no tagged input that still matter: data entering torch, softmax outputs
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
