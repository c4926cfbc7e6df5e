"""The tracer under torch.distributed (gloo, 2 processes on the CPU): collectives are recorded
in the same order on every rank, and provenance crosses ranks through all_reduce (a rank's
update made from an all-reduced gradient carries the other rank's positions)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness.dynamic.trace.events import Collective, Scored, Trace, Update, mask_from_ranges  # noqa: E402

WORLD = 2


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import test_tracer as T

    from harness.dynamic.trace.tracer import Tracer, TracerConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    val = T.val_tokens()
    model = T.make_model()
    tr = Tracer(TracerConfig(val_stream=val, submission_dir=T.HERE, rank=rank, world_size=WORLD))
    tr.install()
    try:
        val_t = T.load_val(val)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        loss_sum = torch.zeros((), dtype=torch.float64)
        n_chunks = (T.N - 1) // T.CHUNK
        for ci in range(n_chunks):
            local = val_t[ci * T.CHUNK: (ci + 1) * T.CHUNK + 1]
            half = T.CHUNK // WORLD
            mine = local[rank * half: (rank + 1) * half + 1]  # each rank scores half the chunk
            x, y = mine[:-1].reshape(1, -1), mine[1:].reshape(1, -1)
            with torch.no_grad():
                loss_sum += F.cross_entropy(model(x).reshape(-1, T.V), y.reshape(-1), reduction="sum")
            dist.barrier()
            if ci < n_chunks - 1:
                loss = F.cross_entropy(model(x).reshape(-1, T.V), y.reshape(-1))
                opt.zero_grad()
                loss.backward()
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= WORLD
                opt.step()
        dist.all_reduce(loss_sum)
        loss_sum.item()
    finally:
        tr.finish(os.path.join(out_dir, f"trace_rank{rank}.jsonl"))
        # both ranks leave together: a rank that tears gloo down while its peer is still connected
        # made the peer abort ("terminate called without an active exception"), 1 run in 3
        dist.barrier()
        dist.destroy_process_group()


def test_two_ranks_gloo(tmp_path):
    init_file = str(tmp_path / "init")
    mp.start_processes(_worker, args=(init_file, str(tmp_path)), nprocs=WORLD, join=True, start_method="spawn")
    trace = Trace.load([tmp_path / f"trace_rank{r}.jsonl" for r in range(WORLD)])
    by_rank = trace.by_rank()
    assert set(by_rank) == {0, 1}
    ops = {r: [e.op for e in evs if isinstance(e, Collective)] for r, evs in by_rank.items()}
    assert ops[0] == ops[1] and ops[0], "collectives out of step across ranks"
    # each rank scored its own half of every chunk; together every target once
    counts = np.zeros(1201, dtype=int)
    for s in trace.of(Scored):
        for a, b in s.positions:
            counts[a:b] += 1
    assert (counts[1:1201] == 1).all()
    # rank 1's update after the first step carries rank 0's positions (1..100) too
    ups1 = [u for u in by_rank[1] if isinstance(u, Update) and u.target == "head.weight"]
    assert ups1, "no update on rank 1"
    assert mask_from_ranges(ups1[0].positions) & mask_from_ranges([(1, 100)]), \
        "provenance did not cross ranks through all_reduce"
    assert not trace.meta.get("tracer_errors")
