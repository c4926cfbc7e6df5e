"""The provenance tracer on small hand-written eval loops, legal and illegal.

Each test runs a loop in-process under `Tracer` and asserts on its events. Failure messages
say which way a test failed: "leak undetected" (an illegal order that the events do not show)
or "false leak" (a legal loop whose events look illegal).
"""
from __future__ import annotations

import copy
import math
import os
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.dynamic.trace.events import (LossComputed, ProvenanceLost, Scored, Trace, Update, ValLoaded,
                                   mask_from_ranges, ranges_from_positions)
from harness.dynamic.trace.tracer import Tracer, TracerConfig
from tests.helpers import marker_line

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))
V = 48  # vocabulary
N = 1201  # validation tokens
CHUNK = 200
SEQ = 50


def val_tokens(seed: int = 0, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=n).astype(np.uint16)


class TinyLM(nn.Module):
    """Embedding -> causal mean of previous embeddings -> MLP -> logits. Causal by construction."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.emb = nn.Embedding(V, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        csum = h.cumsum(dim=-2)
        n = torch.arange(1, x.shape[-1] + 1, dtype=h.dtype).unsqueeze(-1)
        h = h + torch.tanh(self.mix(csum / n))
        return self.head(h)


def make_model(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def cfg_for(val: np.ndarray, **kw) -> TracerConfig:
    return TracerConfig(val_stream=val, submission_dir=HERE, **kw)


def line_of(marker: str) -> int:
    """Line number (in this file) of the statement carrying `# <marker>`."""
    return marker_line(__file__, marker)


def load_val(val: np.ndarray) -> torch.Tensor:
    # the way contest scripts load shards: numpy, then from_numpy, then int64
    return torch.from_numpy(val.astype(np.uint16)).to(torch.int64)


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


def scored_mask_before(events, seq: int, *, eval_only: bool = True) -> int:
    m = 0
    for s in of(events, Scored):
        if s.seq < seq and (not eval_only or not s.grad_enabled):
            m |= mask_from_ranges(s.positions)
    return m


def score_counts(events, n: int = N, eval_only: bool = True) -> np.ndarray:
    counts = np.zeros(n, dtype=int)
    for s in of(events, Scored):
        if eval_only and s.grad_enabled:
            continue
        for a, b in s.positions:
            counts[a:b] += 1
    return counts


def scored_total(events) -> float:
    return sum(sum(s.nll) for s in of(events, Scored) if not s.grad_enabled)


def premature(events) -> list[tuple[Update, int]]:
    """Updates that used positions (other than 0: never a target) not scored before them."""
    out = []
    for u in of(events, Update):
        m = mask_from_ranges(u.positions) & ~1
        bad = m & ~scored_mask_before(events, u.seq)
        if bad:
            out.append((u, bad))
    return out


def sgd_on(model, opt, x, y):
    loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()  # STEP-LEGAL
    return loss


# ---------------------------------------------------------------- (a) legal score-first chunks
def legal_chunk_loop(val_t: torch.Tensor, model: TinyLM, epochs: int = 1):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = 0
    n_chunks = (val_t.numel() - 1) // CHUNK
    for ci in range(n_chunks):
        local = val_t[ci * CHUNK: (ci + 1) * CHUNK + 1]
        x, y = local[:-1].reshape(-1, SEQ), local[1:].reshape(-1, SEQ)
        with torch.inference_mode():
            nll = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), reduction="none")
            loss_sum += nll.to(torch.float64).sum()
            count += nll.numel()
        if ci < n_chunks - 1:
            for _ in range(epochs):  # several epochs on an already-scored chunk are fine
                sgd_on(model, opt, x, y)
    return (loss_sum / count).item(), loss_sum.item()


def test_a_legal_score_first_chunks():
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        mean, total = legal_chunk_loop(load_val(val), model, epochs=2)
    ev = tr.events
    assert of(ev, ValLoaded), "validation tokens not recognised"
    assert of(ev, Update), "leak undetected: the TTT steps left no Update"
    bad = premature(ev)
    assert not bad, f"false leak: {bad[0][0].target} used unscored positions"
    counts = score_counts(ev)
    assert (counts[1:N] == 1).all(), "each target position must be scored exactly once"
    assert counts[0] == 0
    assert scored_total(ev) == pytest.approx(total, rel=1e-9)
    # every update happened inside opt.step(), via the optimizer
    assert {u.via for u in of(ev, Update)} == {"optimizer-step"}
    assert all(u.step_frame is not None and u.step_frame.line == line_of("STEP-LEGAL") for u in of(ev, Update))
    assert not tr.errors, tr.errors


# ---------------------------------------------------------------- (b) adapt, then score
@pytest.mark.parametrize("eager_only", [False, True])
def test_b_adapt_then_score(eager_only):
    # eager_only (toy runs: torch.compile shimmed) drops torch's dynamo guard on the mode; the
    # trace must be the same
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    from harness.dynamic.trace.tracer.mode import EagerTracerMode

    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val, eager_only=eager_only)) as tr:
        assert isinstance(_get_current_dispatch_mode(), EagerTracerMode) == eager_only
        val_t = load_val(val)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for ci in range((N - 1) // CHUNK):
            local = val_t[ci * CHUNK: (ci + 1) * CHUNK + 1]
            x, y = local[:-1].reshape(-1, SEQ), local[1:].reshape(-1, SEQ)
            loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()  # STEP-B
            with torch.no_grad():
                loss_sum += F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), reduction="sum")
    ev = tr.events
    bad = premature(ev)
    assert bad, "leak undetected: training on a chunk before scoring it"
    first, positions = bad[0]
    assert first.step_frame is not None and first.step_frame.line == line_of("STEP-B")
    assert first.step_frame.path == "test_tracer.py"
    assert mask_from_ranges(ranges_from_positions(range(1, CHUNK + 1))) & positions
    # the scores of the chunk come after the update that used it
    first_score = min(s.seq for s in of(ev, Scored))
    assert first.seq < first_score


@pytest.mark.parametrize("throwaway", [True, False])
def test_b2_warmup_on_a_throwaway_copy_is_dead_but_on_the_scored_model_is_not(throwaway):
    """The April records warm up torch.compile by training a LoRA on the first validation tokens
    and deleting it: nothing scored reads that state. The same steps on the model that is
    scored afterwards are adapt-then-score."""
    from harness.dynamic.judge.updates import dead_write
    from harness.core.registry import rule_by_name

    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        warm = copy.deepcopy(model) if throwaway else model
        opt = torch.optim.AdamW(warm.parameters(), lr=0.01)
        x, y = val_t[:SEQ].unsqueeze(0), val_t[1:SEQ + 1].unsqueeze(0)
        for _ in range(2):
            F.cross_entropy(warm(x).reshape(-1, V), y.reshape(-1)).backward()
            opt.step()
            opt.zero_grad()
        del warm, opt
        with torch.no_grad():  # then the eval: every position scored once
            total = 0.0
            for ci in range((N - 1) // SEQ):
                xs, ys = val_t[ci * SEQ:(ci + 1) * SEQ], val_t[ci * SEQ + 1:(ci + 1) * SEQ + 1]
                total += float(F.cross_entropy(model(xs.unsqueeze(0)).reshape(-1, V), ys, reduction="sum"))
    trace = tr.trace()
    findings = list(rule_by_name("train-before-score").judge(trace)) + \
        list(rule_by_name("val-data-in-training").judge(trace))
    if throwaway:
        assert findings == [], f"false leak: a deleted warm-up copy: {[f.message for f in findings]}"
        assert all(dead_write(trace, u) for u in of(trace.events, Update))
    else:
        assert findings, "leak undetected: warm-up steps on the model that is then scored"


def test_b2_state_read_only_through_a_tensor_list_is_read():
    """A bias trained on the first validation tokens and read by the eval only through
    `torch.cat([a, b])` is live state: the tensors inside a list argument are inputs like any
    other (they once were not, and the write looked dead)."""
    from harness.core.registry import rule_by_name

    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        a, b = torch.nn.Parameter(torch.zeros(V // 2)), torch.nn.Parameter(torch.zeros(V - V // 2))
        opt = torch.optim.SGD([a, b], lr=0.1)
        x, y = val_t[:SEQ].unsqueeze(0), val_t[1:SEQ + 1].unsqueeze(0)
        F.cross_entropy(model(x).reshape(-1, V) + torch.cat([a, b]), y.reshape(-1)).backward()
        opt.step()
        with torch.no_grad():
            for ci in range((N - 1) // SEQ):
                xs, ys = val_t[ci * SEQ:(ci + 1) * SEQ], val_t[ci * SEQ + 1:(ci + 1) * SEQ + 1]
                float(F.cross_entropy(model(xs.unsqueeze(0)).reshape(-1, V) + torch.cat([a, b]), ys,
                                      reduction="sum"))
    findings = list(rule_by_name("val-data-in-training").judge(tr.trace()))
    assert findings, "leak undetected: the trained bias is read through torch.cat"


def test_b3_an_adapter_freed_after_its_ttt_eval_is_not_read_by_the_next_eval():
    """PR #826: a score-first TTT eval trains an adapter (its last chunk scored, no step after),
    returns and frees it; a base-model eval then scores the whole stream. That eval reads none
    of the adapter, so the TTT steps are not before its scores."""
    from harness.core.registry import rule_by_name

    val = val_tokens()
    model = make_model()

    def ttt_eval(val_t):
        adapter = torch.nn.Parameter(torch.zeros(V))
        opt = torch.optim.SGD([adapter], lr=0.1)
        chunks = (N - 1) // SEQ
        for ci in range(chunks):
            xs, ys = val_t[ci * SEQ:(ci + 1) * SEQ], val_t[ci * SEQ + 1:(ci + 1) * SEQ + 1]
            with torch.no_grad():
                float(F.cross_entropy(model(xs.unsqueeze(0)).reshape(-1, V) + adapter, ys, reduction="sum"))
            if ci < chunks - 1:
                F.cross_entropy(model(xs.unsqueeze(0)).reshape(-1, V) + adapter, ys).backward()
                opt.step()
                opt.zero_grad()

    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        ttt_eval(val_t)
        with torch.no_grad():
            for ci in range((N - 1) // SEQ):
                xs, ys = val_t[ci * SEQ:(ci + 1) * SEQ], val_t[ci * SEQ + 1:(ci + 1) * SEQ + 1]
                float(F.cross_entropy(model(xs.unsqueeze(0)).reshape(-1, V), ys, reduction="sum"))
    findings = list(rule_by_name("train-before-score").judge(tr.trace()))
    assert findings == [], f"false leak: {[f.message for f in findings]}"


# ---------------------------------------------------------------- (c) PR #713 shape
def test_c_multi_epoch_score_last_epoch_only():
    val = val_tokens()
    model = make_model()
    epochs = 2
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for epoch in range(epochs):
            for ci in range((N - 1) // CHUNK):
                local = val_t[ci * CHUNK: (ci + 1) * CHUNK + 1]
                x, y = local[:-1].reshape(-1, SEQ), local[1:].reshape(-1, SEQ)
                if epoch == epochs - 1:
                    with torch.no_grad():
                        nll = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), reduction="none")
                        loss_sum += nll.double().sum()
                sgd_on(model, opt, x, y)
        final = loss_sum.item()
    ev = tr.events
    ups, scs = of(ev, Update), of(ev, Scored)
    assert ups and scs
    assert min(u.seq for u in ups) < min(s.seq for s in scs), "leak undetected: no update before the scores"
    assert premature(ev), "leak undetected"
    assert scored_total(ev) == pytest.approx(final, rel=1e-9)


# ---------------------------------------------------------------- (d) pre-quant TTT on a copy
def test_d_prequant_ttt_on_deepcopy():
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        with torch.no_grad():  # a baseline forward of the original (it gets named first)
            model(val_t[:SEQ].reshape(1, -1))
        ttt = copy.deepcopy(model)
        opt = torch.optim.AdamW(ttt.parameters(), lr=1e-3)
        for _ in range(2):
            for s in range(0, N - 1 - SEQ, SEQ * 4):
                local = val_t[s: s + SEQ * 4 + 1]
                x, y = local[:-1].reshape(-1, SEQ), local[1:].reshape(-1, SEQ)
                sgd_on(ttt, opt, x, y)
        loss_sum = torch.zeros((), dtype=torch.float64)
        with torch.no_grad():
            for s in range(0, N - 1, SEQ * 4):
                local = val_t[s: s + SEQ * 4 + 1]
                x, y = local[:-1].reshape(1, -1), local[1:].reshape(1, -1)
                loss_sum += F.cross_entropy(ttt(x).reshape(-1, V), y.reshape(-1), reduction="sum")
        loss_sum.item()
    ev = tr.events
    ups = of(ev, Update)
    assert ups, "leak undetected: no Update for the copy's training"
    # the copy's parameters are told apart from the original's ("TinyLM#k:emb.weight")
    assert all(u.target.startswith("TinyLM#") for u in ups), {u.target for u in ups}
    first_score = min(s.seq for s in of(ev, Scored))
    assert all(u.seq < first_score for u in ups)
    assert premature(ev), "leak undetected"
    assert {u.target_kind for u in ups} <= {"parameter", "optimizer-state"}


# ---------------------------------------------------------------- (e) hand-written and hidden steps
def test_e_manual_update_and_getattr_step():
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        local = val_t[: CHUNK + 1]
        x, y = local[:-1].reshape(-1, SEQ), local[1:].reshape(-1, SEQ)
        loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.data.add_(-0.1 * p.grad)  # MANUAL
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.zero_grad()
        F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1)).backward()
        getattr(opt, "st" + "ep")()  # HIDDEN
    ev = tr.events
    manual = [u for u in ev if isinstance(u, Update) and u.frame and u.frame.line == line_of("MANUAL")]
    assert manual, "leak undetected: p.data.add_(-lr * p.grad) left no Update"
    assert {u.via for u in manual} == {"gradient"}
    assert {u.target for u in manual} == {"emb.weight", "mix.weight", "mix.bias", "head.weight", "head.bias"}
    hidden = [u for u in ev if isinstance(u, Update) and u.via == "optimizer-step"]
    assert hidden and all(u.step_frame.line == line_of("HIDDEN") for u in hidden)
    assert all(mask_from_ranges(u.positions) & (1 << CHUNK) for u in manual + hidden)


# ---------------------------------------------------------------- (f) numpy round trip
def test_f_tokens_round_tripped_through_numpy_stay_tagged():
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        again = torch.from_numpy(val_t.numpy().copy())  # evasion attempt
        as_list = torch.tensor(val_t[100:400].tolist())
        loss_sum = torch.zeros((), dtype=torch.float64)
        with torch.no_grad():
            x, y = again[:-1][: 1000].reshape(-1, SEQ), again[1:][: 1000].reshape(-1, SEQ)
            loss_sum += F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), reduction="sum")
            x2, y2 = as_list[:-1].reshape(1, -1), as_list[1:].reshape(1, -1)
            loss_sum += F.cross_entropy(model(x2).reshape(-1, V), y2.reshape(-1), reduction="sum")
    ev = tr.events
    loads = of(ev, ValLoaded)
    assert len(loads) == 3, "round-tripped tokens not re-tagged"
    assert loads[2].positions == [(100, 400)]
    lost = of(ev, ProvenanceLost)
    assert {e.where for e in lost} >= {"numpy", "python-list"}
    counts = score_counts(ev)
    assert (counts[1:1001] >= 1).all()
    assert counts[101:400].max() == 2  # scored by both losses: a re-score the judge sees


# ---------------------------------------------------------------- (g) sliding windows
def sliding_eval(model, val_t, seq_len=64, stride=16, batch=8):
    total = val_t.numel() - 1
    starts = list(range(0, total, stride))
    loss_sum = torch.zeros((), dtype=torch.float64)
    tokens = torch.zeros((), dtype=torch.float64)
    running = []
    with torch.inference_mode():
        for bi in range(0, len(starts), batch):
            ws_batch = starts[bi: bi + batch]
            x = torch.zeros(len(ws_batch), seq_len, dtype=torch.int64)
            y = torch.zeros(len(ws_batch), seq_len, dtype=torch.int64)
            lens = []
            for i, ws in enumerate(ws_batch):
                wlen = min(ws + seq_len, total) - ws
                window = val_t[ws: ws + wlen + 1]
                x[i, :wlen], y[i, :wlen] = window[:-1], window[1:]
                lens.append(wlen)
            nll = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), reduction="none").reshape(len(ws_batch), seq_len)
            for i, ws in enumerate(ws_batch):
                wlen = lens[i]
                first = 0 if ws == 0 else seq_len - stride  # the context is not scored again
                if first >= wlen:
                    continue
                loss_sum += nll[i, first:wlen].to(torch.float64).sum()
                tokens += wlen - first
            running.append((loss_sum / tokens).item())  # (h) a running print: not a score
    return loss_sum.item(), float(tokens.item())


def test_g_h_sliding_window_each_position_once_and_running_prints():
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        total, ntok = sliding_eval(model, load_val(val))
    ev = tr.events
    counts = score_counts(ev)
    assert ntok == N - 1
    assert (counts[1:N] == 1).all(), f"positions scored {set(counts[1:N].tolist())} times"
    assert scored_total(ev) == pytest.approx(total, rel=1e-9)
    sinks = {s.sink for s in of(ev, Scored)}
    assert sinks == {"accumulate"}, "(h) running .item() prints of the accumulator re-scored"
    # every Scored sits right after its LossComputed (computation time)
    lc = {e.loss_op: e.seq for e in of(ev, LossComputed)}
    assert all(lc[s.loss_op] < s.seq < lc[s.loss_op] + 1024 for s in of(ev, Scored))
    assert not of(ev, Update)


# ---------------------------------------------------------------- (i) calibration on val
def test_i_calibration_statistics_written_into_weights():
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        with torch.no_grad():
            h = model.emb(val_t[:800].reshape(-1, SEQ))  # activations of validation tokens
            flat = h.reshape(-1, h.shape[-1])
            hessian = flat.T @ flat / flat.shape[0]  # GPTQ-style statistic
            w = model.mix.weight
            w_new = w @ torch.linalg.inv(hessian + torch.eye(hessian.shape[0]))
            model.mix.weight.data.copy_(w_new)  # CALIBRATE
    ups = of(tr.events, Update)
    assert ups, "leak undetected: calibration from validation activations"
    u = ups[0]
    assert (u.target, u.target_kind, u.via) == ("mix.weight", "parameter", "direct")
    assert u.frame.line == line_of("CALIBRATE")
    assert mask_from_ranges(u.positions) == mask_from_ranges([(0, 800)])


def test_i2_calibrated_artifact_saved_is_an_update_legal_artifact_is_not():
    """GPTQ-style: statistics from validation activations shape the quantized weights, which
    reach the final eval only through torch.save -> bytes -> file -> load."""
    import io

    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, io.BytesIO())  # LEGAL_SAVE
        with torch.no_grad():
            h = model.emb(val_t[:400].reshape(-1, SEQ))
            flat = h.reshape(-1, h.shape[-1])
            hessian = flat.T @ flat
            scale = (model.mix.weight.abs() @ hessian.diag().sqrt()).clamp_min(1e-6)
            q = torch.round(model.mix.weight / scale[:, None]).to(torch.int8)
        torch.save({"mix.q": q, "mix.scale": scale}, io.BytesIO())  # SAVE_CALIBRATED
    ups = [u for u in of(tr.events, Update) if u.target_kind == "artifact"]
    assert len(ups) == 1, f"leak undetected or false leak: {[(u.frame.line, u.positions) for u in ups]}"
    assert ups[0].frame.line == line_of("SAVE_CALIBRATED")
    assert mask_from_ranges(ups[0].positions) == mask_from_ranges([(0, 400)])


@pytest.mark.parametrize("keyed_on_target", [True, False])
def test_hash_embedding_keyed_on_the_target_is_a_target_read(keyed_on_target):
    """BigramHash keyed on (t[i], t[i+1]) -- the target -- versus the legal (t[i-1], t[i])."""
    val = val_tokens()
    model = make_model()
    table = nn.Embedding(97, 16)
    with Tracer(cfg_for(val)) as tr, torch.no_grad():
        val_t = load_val(val)
        x, y = val_t[:400].reshape(-1, SEQ), val_t[1:401].reshape(-1, SEQ)
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        key = (x * 31 + y * 7) % 97 if keyed_on_target else (prev * 31 + x * 7) % 97
        h = model.emb(x) + table(key)  # HASH_LOOKUP
        nll = F.cross_entropy(model.head(h).reshape(-1, V), y.reshape(-1), reduction="none")
        float(nll.sum())
    reads = [e for e in tr.events if type(e).__name__ == "TargetRead"]
    if not keyed_on_target:
        assert reads == [], "false leak: a key on the previous and current token reads no target"
        return
    assert len(reads) == 1, "leak undetected: a hash key built on the target"
    assert reads[0].frame.line == line_of("HASH_LOOKUP")
    assert mask_from_ranges(reads[0].positions) == mask_from_ranges([(1, 401)])


def test_where_padding_carries_only_the_selected_positions():
    """Batched per-document TTT pads finished documents with where(valid, gathered, 0): the
    padding rows must not carry the positions they gathered but did not select."""
    val = val_tokens()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        gathered = torch.stack([val_t[500:551], val_t[0:51]])
        valid = torch.tensor([[True] * SEQ, [False] * SEQ])
        x = torch.where(valid, gathered[:, :-1], 0)
        y = torch.where(valid, gathered[:, 1:], 0)
        F.cross_entropy(make_model()(x).reshape(-1, V), y.reshape(-1), reduction="none")
    losses = of(tr.events, LossComputed)
    assert len(losses) == 1
    assert mask_from_ranges(losses[0].positions) == mask_from_ranges([(501, 551)]), "false positions from padding"


# ---------------------------------------------------------------- (j) Python-float accumulation
def test_j_scores_accumulated_in_python_floats():
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        total = 0.0
        with torch.no_grad():
            for s in range(0, N - 1, CHUNK):
                local = val_t[s: s + CHUNK + 1]
                x, y = local[:-1].reshape(1, -1), local[1:].reshape(1, -1)
                nll = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), reduction="none")
                total += nll.sum().item()  # HOSTREAD
    scs = of(tr.events, Scored)
    assert scs and {s.sink for s in scs} == {"host-read"}
    assert all(s.frame.line == line_of("HOSTREAD") for s in scs)
    assert (score_counts(tr.events)[1:N] == 1).all()
    assert scored_total(tr.events) == pytest.approx(total, rel=1e-6)  # float32 sums


# ---------------------------------------------------------------- more shapes
def test_gather_on_log_softmax_is_a_loss():
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        x, y = val_t[:-1][:1000].reshape(-1, SEQ), val_t[1:][:1000].reshape(-1, SEQ)
        with torch.no_grad():
            logp = F.log_softmax(model(x).float(), dim=-1)
            nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            s = nll.sum().item()
    scs = of(tr.events, Scored)
    assert scs and (score_counts(tr.events)[1:1001] == 1).all()
    assert scored_total(tr.events) == pytest.approx(s, rel=1e-6)


def test_masked_sum_counts_only_unmasked_elements():
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        x, y = val_t[:-1][:200].reshape(2, 100), val_t[1:][:200].reshape(2, 100)
        with torch.no_grad():
            nll = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), reduction="none").reshape(2, 100)
            keep = torch.zeros(2, 100)
            keep[:, 50:] = 1
            acc = torch.zeros(())
            acc += (nll * keep).sum()
    counts = score_counts(tr.events)
    assert counts[51:101].sum() == 50 and counts[151:201].sum() == 50
    assert counts[1:51].sum() == 0 and counts[101:151].sum() == 0


def test_two_d_batch_built_from_separate_slices_is_matched_row_by_row():
    val = val_tokens()
    with Tracer(cfg_for(val)) as tr:
        rows = np.stack([val[10:110], val[500:600], val[900:1000]]).astype(np.int64)
        t = torch.from_numpy(rows)
    loads = of(tr.events, ValLoaded)
    assert loads and loads[0].positions == [(10, 110), (500, 600), (900, 1000)]
    del t


def test_ambiguous_content_is_not_guessed():
    val = np.concatenate([val_tokens(1, 300), val_tokens(1, 300), val_tokens(2, 300)])
    with Tracer(cfg_for(val)) as tr:
        torch.from_numpy(val[:200].astype(np.int64).copy())
    assert not of(tr.events, ValLoaded)
    assert any("ambiguous" in e.where for e in of(tr.events, ProvenanceLost))


def test_short_and_foreign_tensors_are_ignored():
    val = val_tokens()
    with Tracer(cfg_for(val)) as tr:
        torch.from_numpy(val[:40].astype(np.int64))  # below min_match
        torch.from_numpy(val_tokens(7, 500).astype(np.int64))  # other data
        torch.tensor(list(range(100)))
    assert not of(tr.events, ValLoaded)


def test_scoring_inside_a_thread_is_traced():
    val = val_tokens()
    model = make_model()
    out = {}

    def work(val_t):
        with torch.no_grad():
            x, y = val_t[:-1][:1000].reshape(-1, SEQ), val_t[1:][:1000].reshape(-1, SEQ)
            out["v"] = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1)).item()

    with Tracer(cfg_for(val)) as tr:
        val_t = load_val(val)
        th = threading.Thread(target=work, args=(val_t,))
        th.start()
        th.join()
    assert "v" in out
    assert (score_counts(tr.events)[1:1001] == 1).all(), "scores made in a thread were lost"


def test_capture_scores_only_records_scores_not_updates():
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val, capture_scores_only=True)) as tr:
        legal_chunk_loop(load_val(val), model)
    ev = tr.events
    assert not of(ev, Update)
    assert (score_counts(ev)[1:N] == 1).all()


def test_save_and_load_round_trip(tmp_path):
    val = val_tokens()
    model = make_model()
    with Tracer(cfg_for(val)) as tr:
        legal_chunk_loop(load_val(val), model)
    path = tmp_path / "trace_rank0.jsonl"
    tr.save(path)
    back = Trace.load([path])
    assert len(back.events) == len(tr.events)
    assert [e.seq for e in back.events] == sorted(e.seq for e in tr.events)
    first = min(of(tr.events, Scored), key=lambda e: e.seq)
    assert back.of(Scored)[0].nll == pytest.approx(first.nll)
    assert back.of(Scored)[0].positions == first.positions


def test_uninstall_restores_torch():
    real_numpy, real_tolist = torch.Tensor.numpy, torch.Tensor.tolist
    val = val_tokens()
    with Tracer(cfg_for(val)):
        assert torch.Tensor.numpy is not real_numpy
    assert torch.Tensor.numpy is real_numpy and torch.Tensor.tolist is real_tolist
    from harness.dynamic.trace import torch_compat
    assert not torch_compat.dispatch_mode_stack()
    assert math.isfinite(float(torch.ones(3).sum()))


def test_an_info_made_again_for_a_live_storage_still_leaves_with_it():
    # _on_fresh drops an empty Info while its storage lives; a later Info for the same storage must
    # still be removed when the storage dies, or a new storage at the same address would inherit
    # its provenance (a regression seen on PR #826: its TTT and n-gram passes split apart)
    tr = Tracer(cfg_for(np.arange(16, dtype=np.uint16)))
    t = torch.zeros(4)
    key = id(t.untyped_storage())
    tr._info_for(t, create=True)
    tr.infos.pop(key)
    tr._info_for(t, create=True).mask = 0b1010
    assert key in tr.infos
    del t
    assert key not in tr.infos
