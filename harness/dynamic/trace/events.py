"""The record of one traced eval: the schema shared by the tracer (writer) and the judges
(readers, in `rules/`). Judges are pure functions over a `Trace`, so they are tested on
synthetic traces built with these classes.

Positions are indices into the validation token stream as the submission loaded it
(concatenated shards, header stripped). Position p's *score* is the NLL of token p given
tokens < p; a "target position" is therefore the index of the token being predicted.
Sets of positions are stored as sorted, non-overlapping half-open ranges.

Events carry a global sequence number `seq` (order within one rank) and the rank; ranks
are ordered against each other only through `Collective` events (what precedes the k-th
collective on every rank happens before what follows it on any rank).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Union

Ranges = list[tuple[int, int]]  # sorted, disjoint, half-open [start, end)


# ---------------------------------------------------------------- position sets
def ranges_from_positions(positions: Iterable[int]) -> Ranges:
    out: Ranges = []
    for p in sorted(set(int(x) for x in positions)):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def ranges_from_mask(mask: int) -> Ranges:
    """Python-int bitmask (bit p set = position p) to ranges."""
    out: Ranges = []
    p = 0
    while mask:
        if mask & 1:
            # skip a run of ones quickly
            run = (~mask & (mask + 1)).bit_length() - 1  # number of trailing ones
            out.append((p, p + run))
            mask >>= run
            p += run
        else:
            zeros = (mask & -mask).bit_length() - 1  # number of trailing zeros
            mask >>= zeros
            p += zeros
    return out


def mask_from_ranges(ranges: Ranges) -> int:
    mask = 0
    for a, b in ranges:
        mask |= ((1 << (b - a)) - 1) << a
    return mask


def count(ranges: Ranges) -> int:
    return sum(b - a for a, b in ranges)


def describe(ranges: Ranges, limit: int = 6) -> str:
    """'12-15, 40, 77-80 (+3 more ranges; 123 positions)' for reports."""
    shown = [f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in ranges[:limit]]
    more = f" (+{len(ranges) - limit} more ranges)" if len(ranges) > limit else ""
    return ", ".join(shown) + more + f"; {count(ranges)} positions"


# ---------------------------------------------------------------- events
@dataclass
class Frame:
    """The first stack frame inside the submission (not torch, not golf-audit)."""

    path: str  # relative to the submission folder
    line: int
    function: str
    code: str = ""  # stripped source line


@dataclass
class RunStart:
    kind = "run_start"
    seq: int
    rank: int
    world_size: int
    val_tokens: int  # length of the validation stream the submission loaded
    val_sources: list[str] = field(default_factory=list)  # shard files, in order
    shims: list[str] = field(default_factory=list)  # what the runtime shims changed
    torch_version: str = ""


@dataclass
class ValLoaded:
    """A tensor was recognised as (a slice of) the validation stream."""

    kind = "val_loaded"
    seq: int
    rank: int
    positions: Ranges
    how: str  # "shard-read", "content-match", ...
    frame: Frame | None = None


@dataclass
class Scored:
    """Loss values for target positions reached a score sink for the first time from one loss
    computation: an accumulator written in place, a host read (.item()/.tolist()/numpy), or a
    collective. `nll` holds the per-position NLL in nats, aligned with `positions` expanded."""

    kind = "scored"
    seq: int
    rank: int
    loss_op: int  # id of the loss computation these values came from
    positions: Ranges
    nll: list[float]
    sink: str  # "accumulate", "host-read", "collective"
    grad_enabled: bool  # was the loss computed with autograd recording?
    frame: Frame | None = None  # where the values reached the sink
    # The tracer places a Scored event in the timeline where its values were *computed*:
    # seq = its LossComputed's seq + k. sink_seq says when they reached the sink (same scale);
    # -1 when unknown (synthetic traces).
    sink_seq: int = -1


@dataclass
class LossComputed:
    """A loss op (nll_loss/cross_entropy, or gather on log_softmax) whose targets are validation
    tokens. Emitted whether or not the values are ever recorded as a score."""

    kind = "loss_computed"
    seq: int
    rank: int
    loss_op: int
    positions: Ranges  # target positions
    grad_enabled: bool
    frame: Frame | None = None


@dataclass
class Update:
    """A write into persistent state carrying validation provenance.

    target_kind: "parameter" (nn.Parameter storage), "buffer" (module buffer),
    "optimizer-state". via: "optimizer-step" (inside torch.optim step / step hook),
    "gradient" (written value derives from a backward pass), "direct" (any other write,
    e.g. p.data.copy_ from a calibration statistic). positions: every validation position
    whose tokens (as inputs or as targets) reached the written value."""

    kind = "update"
    seq: int
    rank: int
    target: str  # e.g. "blocks.0.attn.c_q.weight" or "<param 0x7f..>"
    target_kind: str
    via: str
    positions: Ranges
    frame: Frame | None = None
    step_frame: Frame | None = None  # the optimizer.step() call site, when known


@dataclass
class Collective:
    kind = "collective"
    seq: int
    rank: int
    index: int  # k-th collective on this rank (0-based)
    op: str  # "all_reduce", "barrier", ...
    frame: Frame | None = None


@dataclass
class ProvenanceLost:
    """Validation-derived data left the tracer's sight (numpy, ctypes, custom kernel, Python
    lists). Recorded as a fact, never guessed over."""

    kind = "provenance_lost"
    seq: int
    rank: int
    where: str
    positions: Ranges
    frame: Frame | None = None


@dataclass
class TargetRead:
    """An embedding/index lookup whose index tensor carried, element for element, the position
    that a later loss scored as the target there, or a later one: the input to the prediction
    for position p was computed from the token at p or after (a hash key built on the target)."""

    kind = "target_read"
    seq: int
    rank: int
    positions: Ranges  # target positions whose own token keyed the lookup
    frame: Frame | None = None  # the lookup
    loss_frame: Frame | None = None  # the loss that scored those targets


@dataclass
class Reported:
    """A score the submission printed (parsed from its stdout by the runner)."""

    kind = "reported"
    seq: int
    rank: int
    label: str  # e.g. "final_int8_zlib_roundtrip_exact", "ttt_final"
    val_loss: float | None
    val_bpb: float | None
    line: str
    decimals: int = 4  # precision of the printed value


@dataclass
class RunEnd:
    kind = "run_end"
    seq: int
    rank: int
    exit_code: int
    wall_s: float
    # facts the runner knows independently of the submission:
    val_bytes_utf8: int | None = None  # UTF-8 bytes of the decoded validation text
    # per target position true UTF-8 bytes is derivable from the tokenizer; the runner stores
    # the total for the positions 1..N-1 and the tokenizer path for judges that need more.
    tokenizer_path: str | None = None
    notes: list[str] = field(default_factory=list)


Event = Union[RunStart, ValLoaded, Scored, LossComputed, Update, Collective, ProvenanceLost, TargetRead, Reported,
              RunEnd]
EVENT_TYPES = {cls.kind: cls for cls in (RunStart, ValLoaded, Scored, LossComputed, Update, Collective,
                                         ProvenanceLost, TargetRead, Reported, RunEnd)}


def event_to_json(event: Event) -> str:
    d = asdict(event)
    d["kind"] = event.kind
    return json.dumps(d, separators=(",", ":"))


def event_from_dict(d: dict) -> Event:
    d = dict(d)
    cls = EVENT_TYPES[d.pop("kind")]
    for key in ("frame", "step_frame", "loss_frame"):
        if d.get(key) is not None:
            d[key] = Frame(**d[key])
    for key in ("positions",):
        if key in d:
            d[key] = [tuple(r) for r in d[key]]
    return cls(**d)


@dataclass
class Trace:
    """All events of one run (all ranks). `submission_dir` lets judges quote source lines."""

    events: list[Event]
    submission_dir: str = ""
    meta: dict = field(default_factory=dict)  # runner facts: env used, timings, rewrites

    def of(self, cls: type) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def by_rank(self) -> dict[int, list[Event]]:
        out: dict[int, list[Event]] = {}
        for e in self.events:
            out.setdefault(e.rank, []).append(e)
        for evs in out.values():
            evs.sort(key=lambda e: e.seq)
        return out

    def save(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"meta": self.meta, "submission_dir": self.submission_dir}) + "\n")
            for e in self.events:
                fh.write(event_to_json(e) + "\n")

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> "Trace":
        """Load and merge one JSONL file per rank."""
        events: list[Event] = []
        meta: dict = {}
        subdir = ""
        for path in paths:
            with open(path, encoding="utf-8") as fh:
                header = json.loads(fh.readline() or "{}")
                for key, value in header.get("meta", {}).items():
                    if key == "last_read" and isinstance(value, dict):  # per rank: merge
                        meta.setdefault(key, {}).update(value)
                    elif key == "watched" and isinstance(value, list):
                        meta[key] = sorted(set(meta.get(key, [])) | set(value))
                    else:
                        meta[key] = value
                subdir = header.get("submission_dir", subdir)
                for line in fh:
                    if line.strip():
                        events.append(event_from_dict(json.loads(line)))
        return cls(events=events, submission_dir=subdir, meta=meta)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)
