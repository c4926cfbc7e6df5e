"""Synthetic traces: events built by hand for rule examples and tests, and the example type
rules declare as TRACE_VALID / TRACE_INVALID."""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.dynamic.trace.events import (
    Collective,
    Frame,
    LossComputed,
    Ranges,
    Reported,
    RunEnd,
    RunStart,
    Scored,
    TargetRead,
    Trace,
    Update,
)


@dataclass(frozen=True)
class TraceExample:
    """A synthetic trace a dynamic rule must (INVALID) or must not (VALID) report on.
    `function` pins the first finding's enclosing function, `line` its line."""

    events: tuple
    meta: dict = field(default_factory=dict)
    note: str = ""
    function: str | None = None
    line: int | None = None
    message_contains: str | None = None

    def trace(self) -> Trace:
        return Trace(events=list(self.events), submission_dir="", meta=dict(self.meta))


class SyntheticRun:
    """Builds events for synthetic traces (rule examples, tests) with consecutive seqs per rank:

        run = SyntheticRun(n=9)
        run.score("eval_val", 10, [(1, 9)], nll=2.0)
        run.update("ttt", 20, [(1, 9)])
        events = run.events
    """

    def __init__(self, n: int, world_size: int = 1, path: str = "train_gpt.py"):
        self.n = n
        self.path = path
        self.events: list = []
        self._seq: dict[int, int] = {}
        self._coll: dict[int, int] = {}
        self._loss_op = 0
        for r in range(world_size):
            self.events.append(RunStart(seq=self._next(r), rank=r, world_size=world_size, val_tokens=n))

    def _next(self, rank: int) -> int:
        s = self._seq.get(rank, 0)
        self._seq[rank] = s + 1
        return s

    def frame(self, function: str, line: int) -> Frame:
        return Frame(path=self.path, line=line, function=function)

    def score(self, function: str, line: int, positions: Ranges, nll=2.0, rank: int = 0,
              grad_enabled: bool = False, sink: str = "accumulate") -> Scored:
        k = sum(b - a for a, b in positions)
        values = list(nll) if isinstance(nll, (list, tuple)) else [float(nll)] * k
        self._loss_op += 1
        self.events.append(LossComputed(seq=self._next(rank), rank=rank, loss_op=self._loss_op,
                                        positions=list(positions), grad_enabled=grad_enabled,
                                        frame=self.frame(function, line - 1)))
        ev = Scored(seq=self._next(rank), rank=rank, loss_op=self._loss_op, positions=list(positions),
                    nll=values, sink=sink, grad_enabled=grad_enabled, frame=self.frame(function, line))
        self.events.append(ev)
        return ev

    def loss(self, function: str, line: int, positions: Ranges, rank: int = 0) -> LossComputed:
        self._loss_op += 1
        ev = LossComputed(seq=self._next(rank), rank=rank, loss_op=self._loss_op, positions=list(positions),
                          grad_enabled=True, frame=self.frame(function, line))
        self.events.append(ev)
        return ev

    def update(self, function: str, line: int, positions: Ranges, rank: int = 0, via: str = "optimizer-step",
               target: str = "lm_head.weight", target_kind: str = "parameter") -> Update:
        ev = Update(seq=self._next(rank), rank=rank, target=target, target_kind=target_kind, via=via,
                    positions=list(positions), frame=self.frame(function, line),
                    step_frame=self.frame(function, line) if via == "optimizer-step" else None)
        self.events.append(ev)
        return ev

    def target_read(self, function: str, line: int, positions: Ranges, loss_function: str = "forward",
                    loss_line: int = 1, rank: int = 0) -> TargetRead:
        ev = TargetRead(seq=self._next(rank), rank=rank, positions=list(positions),
                        frame=self.frame(function, line), loss_frame=self.frame(loss_function, loss_line))
        self.events.append(ev)
        return ev

    def collective(self, op: str = "all_reduce") -> None:
        """One collective on every rank (all ranks call collectives in the same order)."""
        for r in sorted(self._seq):
            k = self._coll.get(r, 0)
            self._coll[r] = k + 1
            self.events.append(Collective(seq=self._next(r), rank=r, index=k, op=op))

    def report(self, label: str, val_loss: float | None, val_bpb: float | None = None, decimals: int = 8) -> None:
        fmt = f"{{:.{decimals}f}}"
        parts = [label]
        if val_loss is not None:
            val_loss = round(val_loss, decimals)
            parts.append("val_loss:" + fmt.format(val_loss))
        if val_bpb is not None:
            val_bpb = round(val_bpb, decimals)
            parts.append("val_bpb:" + fmt.format(val_bpb))
        self.events.append(Reported(seq=self._next(0), rank=0, label=label, val_loss=val_loss,
                                    val_bpb=val_bpb, line=" ".join(parts), decimals=decimals))

    def end(self, val_bytes_utf8: int | None = None) -> None:
        for r in sorted(self._seq):
            self.events.append(RunEnd(seq=self._next(r), rank=r, exit_code=0, wall_s=1.0,
                                      val_bytes_utf8=val_bytes_utf8 if r == 0 else None))
