"""The result lines a run printed, as `Reported` events the judges compare with its scores."""
from __future__ import annotations

from harness.challenge.results import parse_line
from harness.dynamic.trace.events import Reported


def parse_reported(stdout: str, rank: int = 0, start_seq: int = 1_000_000_000) -> list[Reported]:
    """Every result line in `stdout`, in order. `val_bpb:enabled ...` banners are skipped
    (no number)."""
    out: list[Reported] = []
    seq = start_seq
    for raw in stdout.splitlines():
        line = raw.strip()
        if "val_" not in line:
            continue
        parsed = parse_line(line)
        if parsed is None:
            continue
        label, vl, vb, decimals = parsed
        out.append(Reported(seq=seq, rank=rank, label=label, val_loss=vl, val_bpb=vb,
                            line=line[:500], decimals=decimals))
        seq += 1
    return out
