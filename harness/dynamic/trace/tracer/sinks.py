"""Score sinks: score-tagged values reaching an accumulation, a host read or a collective
become Scored events, placed in the timeline right after their loss op's LossComputed (the
seq stride below leaves room). Host reads of position-carrying values that are not scores are
ProvenanceLost (one event per site; repeats summed at uninstall)."""
from __future__ import annotations

import numpy as np
import torch

from harness.dynamic.trace import provenance as P
from harness.dynamic.trace.events import Frame, ProvenanceLost, Scored
from harness.dynamic.trace.tracer.losses import LossOp
from harness.dynamic.trace.tracer.storage import Info

Tensor = torch.Tensor
SEQ_STRIDE = 1024  # room after each event for the Scored events of a loss op (see _score_seq)


class SinkMixin:
    """Tracer methods that mark LossOp elements recorded and emit Scored / ProvenanceLost
    (`self._lost`: host-read sites already reported)."""

    def _score_seq(self, op: LossOp) -> int:
        """A Scored event sits in the timeline where its values were computed: right after its
        LossComputed (seq + 1, + 2, ...). Past the stride's room: at the sink."""
        op.n_scored_events += 1
        if op.n_scored_events < SEQ_STRIDE:
            return op.seq + op.n_scored_events
        return next(self._seq) * SEQ_STRIDE

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
            sink_seq = next(self._seq) * SEQ_STRIDE
            run = P.contiguous_run(pos)
            if run is not None:  # ascending and distinct (a window's scores): one event, as it is
                self._emit(Scored, seq=self._score_seq(op), loss_op=op.id, positions=[(run[0], run[1] + 1)],
                           nll=op.nll[idx].tolist(), sink=sink, grad_enabled=op.grad_enabled, frame=frame,
                           sink_seq=sink_seq)
                continue
            order = np.argsort(pos, kind="stable")
            idx, pos = idx[order], pos[order]
            # split repeated positions into successive events
            while idx.size:
                first = np.ones(pos.size, dtype=bool)
                first[1:] = pos[1:] != pos[:-1]
                self._emit(Scored, seq=self._score_seq(op), loss_op=op.id,
                           positions=P.ranges_from_sorted(pos[first]),
                           nll=op.nll[idx[first]].tolist(), sink=sink,
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
                self._emit(ProvenanceLost, where=where, positions=P.ranges_of_mask(mask), frame=frame)
            else:
                hit[0] += 1
                hit[1] |= mask

    def _flush_lost(self) -> None:
        for (where, path, line), (n, mask) in self._lost.items():
            if n and mask:
                self._emit(ProvenanceLost, where=f"{where} (repeated {n} more times at this line)",
                           positions=P.ranges_of_mask(mask),
                           frame=Frame(path=path, line=line, function="", code="") if path else None)
        self._lost.clear()
