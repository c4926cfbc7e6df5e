"""Capture the tracer's events on a set of eval loops, or compare two captures.

A change made for speed in the tracer must not change what it records. This runs eval loops of
the shapes the tracer's fast paths see (sliding windows, score-first TTT, windows scored in
reverse with host reads, overlapping windows, a window's scores summed in a permuted and a
strided order, a bias read through `torch.cat`) under `Tracer` and writes each trace's meta and events
as JSON lines to DIR, with the tree's path masked. `compare A B` reports every loop whose events
differ.

    python benchmarks/compare_traces.py capture /tmp/before     # on the old tree
    python benchmarks/compare_traces.py capture /tmp/after      # on the new tree
    python benchmarks/compare_traces.py compare /tmp/before /tmp/after
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import trace_overhead as T  # noqa: E402

from harness.dynamic.trace.events import event_to_json  # noqa: E402
from harness.dynamic.trace.tracer import Tracer, TracerConfig  # noqa: E402

V = T._VOCAB


def loops(model, load, seq_len: int, stride: int, batch: int) -> Iterator[tuple[str, Callable[[], object]]]:
    yield "sliding", lambda: T.sliding_eval(model, load(), seq_len, stride, batch)
    yield "ttt", lambda: T.ttt_eval(model, load(), seq_len, seq_len * 4)

    def window(tok, s):
        x, y = tok[s:s + seq_len][None], tok[s + 1:s + seq_len + 1][None]
        return F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), reduction="none")

    def reversed_windows():  # windows scored last to first, each read to the host
        tok, total = load(), 0.0
        with torch.no_grad():
            for s in reversed(range(0, tok.numel() - seq_len - 1, seq_len)):
                total += window(tok, s).sum().item()
        return total

    def overlapping():  # whole windows half a window apart: positions scored twice
        tok, acc = load(), torch.zeros((), dtype=torch.float64)
        with torch.no_grad():
            for s in range(0, 4 * seq_len, seq_len // 2):
                acc += window(tok, s).double().sum()
        return acc.item()

    def reordered():  # one window's scores summed shuffled, strided, then whole
        tok, acc = load(), torch.zeros((), dtype=torch.float64)
        with torch.no_grad():
            nll = window(tok, 0)
            perm = torch.randperm(seq_len, generator=torch.Generator().manual_seed(0))
            acc += nll[perm[: seq_len // 2]].double().sum()
            acc += nll[::3].double().sum()
            acc += nll.double().sum()
        return acc.item()

    def bias_through_cat():  # a bias trained on the first window, read through a tensor list
        tok = load()
        a, b = torch.nn.Parameter(torch.zeros(V // 2)), torch.nn.Parameter(torch.zeros(V - V // 2))
        opt = torch.optim.SGD([a, b], lr=0.1)
        x, y = tok[:seq_len][None], tok[1:seq_len + 1][None]
        F.cross_entropy(model(x).reshape(-1, V) + torch.cat([a, b]), y.reshape(-1)).backward()
        opt.step()
        with torch.no_grad():
            return F.cross_entropy(model(x).reshape(-1, V) + torch.cat([a, b]), y.reshape(-1)).item()

    yield "reversed", reversed_windows
    yield "overlapping", overlapping
    yield "reordered", reordered
    yield "bias_through_cat", bias_through_cat


def capture(out: Path) -> int:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    val = np.random.default_rng(0).integers(0, V, size=4097).astype(np.uint16)
    torch.manual_seed(0)
    model, seq_len, stride, batch = T.toy_model(V)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    root = str(ROOT) + "/"
    for name, run in loops(model, lambda: torch.from_numpy(val.copy()).to(torch.int64), seq_len, stride, batch):
        model.load_state_dict(state)
        torch.manual_seed(0)
        with Tracer(TracerConfig(val_stream=val, eager_only=True)) as tr:
            run()
        trace = tr.trace()
        lines = [json.dumps(trace.meta, sort_keys=True, default=str)]
        lines += [event_to_json(e).replace(root, "<root>/") for e in trace.events]
        lines += [f"error: {e}" for e in tr.errors]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        print(f"{name}: {len(lines)} lines")
    return 0


def compare(a: Path, b: Path) -> int:
    names = sorted({p.name for p in a.glob("*.jsonl")} | {p.name for p in b.glob("*.jsonl")})
    differ = 0
    for name in names:
        pa, pb = a / name, b / name
        same = pa.exists() and pb.exists() and pa.read_text() == pb.read_text()
        differ += not same
        print(f"{'same' if same else 'DIFFERENT':9s} {name}")
    print(f"{len(names) - differ} identical, {differ} different")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("capture").add_argument("dir", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    return capture(args.dir) if args.cmd == "capture" else compare(args.a, args.b)


if __name__ == "__main__":
    raise SystemExit(main())
