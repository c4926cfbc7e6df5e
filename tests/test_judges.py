"""The trace judges on synthetic traces: the shapes of real evals (score-first TTT, multi-epoch
TTT scored on the last epoch, pre-quant full-model TTT, score-every-epoch, calibration on val,
several ranks). Each test says which way it would fail: "leak undetected" or "false leak"."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.core.registry import rule_by_name
from harness.dynamic.judge.order import timeline
from harness.dynamic.judge.passes import passes
from harness.dynamic.judge.reported import match_reported, pass_numbers, tolerance
from harness.dynamic.judge.stream import bytes_of
from harness.dynamic.judge.synthetic import SyntheticRun
from harness.dynamic.judge.updates import premature_positions
from harness.dynamic.trace.events import Trace, Update
from harness.core.findings import Layer


def _trace(run: SyntheticRun, **meta) -> Trace:
    return Trace(events=list(run.events), meta=meta)


def tbs(trace):
    return list(rule_by_name("train-before-score").judge(trace))


def vdit(trace):
    return list(rule_by_name("val-data-in-training").judge(trace))


def rescored(trace):
    return list(rule_by_name("rescored-tokens").judge(trace))


def roundtrip_eval(run, n):
    run.score("eval_val", 250, [(1, n)], nll=3.0)


def test_score_first_ttt_is_clean():
    n = 33
    run = SyntheticRun(n)
    roundtrip_eval(run, n)
    for a in range(1, n, 8):  # score chunk, then train on it (several epochs are fine)
        b = min(a + 8, n)
        run.score("eval_val_ttt", 300, [(a, b)], nll=2.0)
        for _ in range(3):
            run.loss("eval_val_ttt", 310, [(a, b)])
            run.update("eval_val_ttt", 312, [(a - 1, b)])
    t = _trace(run)
    assert tbs(t) == [], "false leak: score-first TTT"
    assert vdit(t) == [] and rescored(t) == [], "false leak"
    assert len(passes(t)) == 2


def test_multi_epoch_scored_on_last_epoch_is_train_before_score():
    """PR #713's lora_ttt_eval shape: train on every chunk for two epochs, score on the third."""
    n = 25
    run = SyntheticRun(n)
    roundtrip_eval(run, n)
    chunks = [(1, 9), (9, 17), (17, 25)]
    for epoch in range(3):
        for ci, (a, b) in enumerate(chunks):
            if epoch == 2:
                run.score("lora_ttt_eval", 1220, [(a, b)], nll=1.0)
            if ci < len(chunks) - 1:
                run.loss("lora_ttt_eval", 1200, [(a, b)])
                run.update("lora_ttt_eval", 1265, [(a - 1, b)], target="lora.q.A")
    fs = tbs(_trace(run))
    assert len(fs) == 1, "leak undetected (or not grouped per function)"
    f = fs[0]
    assert f.location.function == "lora_ttt_eval" and f.location.line == 1265
    assert f.layer is Layer.TRACE and "lora_ttt_eval" in f.message
    assert "1-8" in f.evidence[1]  # the first step's unscored positions (position 0 is context only)
    assert any("first loss computed" in e and ":1200" in e for e in f.evidence)


def test_prequant_full_model_ttt_then_eval_is_train_before_score():
    """PR #713's test_time_train: fine-tune on all of val after it was scored once, then a sliding
    eval scores it again and that number is printed."""
    n = 17
    run = SyntheticRun(n)
    roundtrip_eval(run, n)
    for _epoch in range(2):
        for a in (1, 9):
            run.update("test_time_train", 1003, [(a - 1, a + 8)], target="blocks.0.attn.c_q.weight")
    run.score("eval_val_sliding", 900, [(1, n)], nll=1.5)
    run.report("final_ttt_exact", 1.5)
    fs = tbs(_trace(run))
    assert [f.location.function for f in fs] == ["test_time_train"], "leak undetected"
    assert fs[0].location.line == 1003
    assert rescored(_trace(run)) == [], "false rescoring: a different eval function"


def test_two_functions_two_findings():
    n = 17
    run = SyntheticRun(n)
    roundtrip_eval(run, n)
    run.update("lora_ttt_eval", 10, [(0, 9)])
    run.score("lora_ttt_eval", 11, [(1, n)], nll=1.0)
    run.update("test_time_train", 20, [(0, 17)])
    run.update("test_time_train", 20, [(0, 17)])
    run.score("eval_val_sliding", 30, [(1, n)], nll=1.0)
    fs = tbs(_trace(run))
    assert sorted(f.location.function for f in fs) == ["lora_ttt_eval", "test_time_train"]


def test_training_on_never_scored_positions():
    n = 17
    run = SyntheticRun(n)
    run.score("eval_val", 5, [(1, 9)])
    run.update("ttt", 6, [(8, 17)])
    fs = tbs(_trace(run))
    assert len(fs) == 1 and "never scored" in fs[0].message


def test_score_every_epoch_is_rescoring_not_train_before_score():
    n = 17
    run = SyntheticRun(n)
    chunks = [(1, 9), (9, 17)]
    for epoch, nll in enumerate((2.0, 1.0)):
        for a, b in chunks:
            run.score("eval_ttt", 40, [(a, b)], nll=nll)
            run.update("eval_ttt", 45, [(a - 1, b)])
    run.report("final_exact", 1.0)  # the last epoch's scores
    t = _trace(run)
    assert tbs(t) == [], "false leak: every update follows a score"
    fs = rescored(t)
    assert len(fs) == 1 and fs[0].severity.name == "HIGH", "rescoring undetected"
    assert fs[0].location.line == 40
    # the printed number is the re-score: reported-score-mismatch sees it too
    m = match_reported(t)[0]
    assert m.which == "last"


def test_rescoring_with_first_scores_printed_is_low():
    n = 9
    run = SyntheticRun(n)
    for nll in (2.0, 1.0):  # score every epoch (chunk, then train on it), print the first
        for a, b in ((1, 5), (5, n)):
            run.score("eval_ttt", 40, [(a, b)], nll=nll)
            run.update("eval_ttt", 45, [(a - 1, b)])
    run.report("final_exact", 2.0)
    fs = rescored(_trace(run))
    assert len(fs) == 1 and fs[0].severity.name == "LOW"


def test_eval_then_training_block_then_same_eval_is_two_passes():
    """Pre-quant TTT between two calls of one eval function: the second call's scores are the
    final ones, taken after training on them (not a re-score inside one eval)."""
    n = 9
    run = SyntheticRun(n)
    run.score("eval_val", 40, [(1, 5)], nll=3.0)
    run.score("eval_val", 40, [(5, n)], nll=3.0)
    run.update("train_on_val", 70, [(0, n)])
    run.score("eval_val", 40, [(1, 5)], nll=2.0)
    run.score("eval_val", 40, [(5, n)], nll=2.0)
    t = _trace(run)
    assert len(passes(t)) == 2, "false merge: a finished eval and a later one are one pass"
    assert premature_positions(t, t.of(Update)[0]).positions.tolist() == list(range(1, n))


def test_repeated_evals_without_training_are_separate_passes():
    n = 9
    run = SyntheticRun(n)
    for nll in (3.0, 2.9, 2.8):  # step validation, roundtrip, sliding
        run.score("eval_val", 40, [(1, n)], nll=nll)
    t = _trace(run)
    assert len(passes(t)) == 3 and rescored(t) == [], "false rescoring"


def test_calibration_on_val_is_val_data_in_training():
    n = 17
    run = SyntheticRun(n)
    run.score("eval_val", 40, [(1, n)], nll=3.0)  # last training step's validation
    run.update("gptq_calibrate", 700, [(0, n)], via="direct", target="blocks.0.mlp.fc.weight")
    run.score("eval_val", 40, [(1, n)], nll=2.9)  # the roundtrip eval, after calibration
    t = _trace(run)
    fs = vdit(t)
    assert len(fs) == 1 and fs[0].location.function == "gptq_calibrate", "leak undetected"
    assert tbs(t) == [], "a direct write is not training"


def test_update_before_any_score_is_val_data_in_training_only():
    n = 9
    run = SyntheticRun(n)
    run.update("train_loop", 500, [(0, n)])
    run.score("eval_val", 40, [(1, n)])
    t = _trace(run)
    assert len(vdit(t)) == 1 and "before any validation token was scored" in vdit(t)[0].message
    assert tbs(t) == []


def test_ema_copy_of_scored_positions_is_clean():
    n = 17
    run = SyntheticRun(n)
    run.score("eval_ttt", 40, [(1, 9)])
    run.update("eval_ttt", 45, [(0, 9)])
    run.update("eval_ttt", 47, [(0, 9)], via="direct", target="ema.weight", target_kind="buffer")
    run.score("eval_ttt", 40, [(9, 17)])
    assert vdit(_trace(run)) == [] and tbs(_trace(run)) == []


# ---------------------------------------------------------------- ranks
def test_two_ranks_ordered_by_collectives_is_clean():
    """Each rank scores its half of chunk k, all_reduce, then both train on the whole chunk."""
    n = 33
    run = SyntheticRun(n, world_size=2)
    for a in range(1, n, 8):
        b = min(a + 8, n)
        mid = (a + b) // 2
        run.score("eval_ttt", 80, [(a, mid)], rank=0)
        run.score("eval_ttt", 80, [(mid, b)], rank=1)
        run.collective()
        for r in (0, 1):
            run.update("eval_ttt", 90, [(a - 1, b)], rank=r)
        run.collective()
    t = _trace(run)
    assert tbs(t) == [], "false leak across ranks"
    assert len(passes(t)) == 1


def test_two_ranks_without_sync_is_a_leak():
    """Rank 1 trains on the chunk rank 0 has not been shown to score yet (no collective between)."""
    n = 17
    run = SyntheticRun(n, world_size=2)
    run.update("eval_ttt", 90, [(0, 9)], rank=1)
    run.score("eval_ttt", 80, [(1, 9)], rank=0)
    run.score("eval_ttt", 80, [(9, 17)], rank=1)
    run.collective()
    fs = tbs(_trace(run)) + vdit(_trace(run))
    assert fs, "leak undetected across ranks"


def test_happens_before():
    run = SyntheticRun(5, world_size=2)
    a = run.score("f", 1, [(1, 2)], rank=0)
    b = run.score("f", 1, [(2, 3)], rank=1)
    run.collective()
    c = run.score("f", 1, [(3, 4)], rank=1)
    tl = timeline(Trace(events=run.events))
    assert tl.happens_before(a, c) and not tl.happens_before(a, b) and not tl.happens_before(b, a)
    assert not tl.happens_before(c, a)


# ---------------------------------------------------------------- numbers
def test_reported_match_and_bpb():
    n = 5
    run = SyntheticRun(n)
    run.score("eval_val", 40, [(1, n)], nll=[1.0, 2.0, 3.0, 2.0])
    run.report("final_exact", 2.0, 8.0 / math.log(2) / 12)
    run.end(val_bytes_utf8=12)
    t = _trace(run)
    m = match_reported(t)[0]
    assert m.which == "first" and abs(m.loss_delta) < 1e-8 and abs(m.bpb_delta) < 1e-8
    nums = pass_numbers(t, passes(t)[0])
    assert nums.bytes == 12 and nums.n_tokens == 4


def test_position_bytes_from_tables(tmp_path):
    tokens = np.array([1, 5, 6, 1, 7], dtype=np.int64)
    np.save(tmp_path / "tok.npy", tokens)
    per = np.array([0, 3, 1, 0, 4])
    np.save(tmp_path / "bytes.npy", per)
    run = SyntheticRun(5)
    run.score("eval_val", 1, [(1, 5)])
    t = _trace(run, position_bytes_path=str(tmp_path / "bytes.npy"))
    assert bytes_of(t, np.array([1, 2, 4])) == 8


def test_tolerance():
    assert tolerance(8) == pytest.approx(1e-6)
    assert tolerance(4) == pytest.approx(5.1e-5)


def test_sliding_tail_scored_twice_is_one_pass_and_low():
    """The sliding-window eval of the 2026-03-19 records scores the last window's targets twice
    (no training between); the printed number includes the duplicates."""
    n = 17
    run = SyntheticRun(n)
    run.score("eval_val", 40, [(1, n)], nll=3.0)  # the roundtrip eval: a separate pass
    run.score("eval_val_sliding", 60, [(1, 9)], nll=2.0)
    run.score("eval_val_sliding", 60, [(9, 17)], nll=1.0)
    run.score("eval_val_sliding", 60, [(13, 17)], nll=1.0)  # tail window again
    run.report("final_sliding_window_exact", (8 * 2.0 + 12 * 1.0) / 20)
    t = _trace(run)
    ps = passes(t)
    assert len(ps) == 2 and bin(ps[1].dup_mask).count("1") == 4
    m = match_reported(t)[0]
    assert m.which == "all" and m.pass_ is ps[1]
    fs = rescored(t)
    assert len(fs) == 1 and fs[0].severity.name == "LOW", "double counting not reported as low"
    from rules.reported_score_mismatch import ReportedScoreMismatch
    assert list(ReportedScoreMismatch().judge(t)) == [], "false mismatch on a duplicated tail"


def test_incomplete_diagnostic_pass_is_low_when_the_claim_is_another_pass():
    """A diagnostic eval that truncates to whole batches (the April records' eval_val) is a real
    defect, but the claimed number comes from the TTT pass: low, not a failing finding."""
    from harness.core.registry import rule_by_name

    n = 41
    run = SyntheticRun(n)
    run.score("eval_val", 40, [(1, 11)], nll=3.0)
    run.score("eval_val", 40, [(31, n)], nll=3.0)  # 11..30 never scored
    run.report("diagnostic quantized", 3.0)
    run.score("eval_val_ttt_lora", 90, [(1, n)], nll=2.0)
    run.report("quantized_ttt_lora", 2.0)
    rule = rule_by_name("incomplete-scoring")
    unknown = list(rule.judge(_trace(run)))
    assert [f.severity.name for f in unknown] == ["HIGH"]
    claimed = list(rule.judge(_trace(run, claimed_label="quantized_ttt_lora")))
    assert [f.severity.name for f in claimed] == ["LOW"]
    assert any("claimed score comes from 'quantized_ttt_lora'" in e for e in claimed[0].evidence)


def test_short_print_follows_its_exact_sibling_when_passes_are_near_equal():
    """An untrained toy model gives every pass about the same mean NLL: `x` (4 decimals) must be
    paired with the pass its `x_exact` line reproduces, not with whichever pass is closest."""
    n = 9
    run = SyntheticRun(n)
    run.score("eval_val", 40, [(1, n)], nll=6.91930)  # pass 1
    run.score("eval_val_sliding", 80, [(1, n)], nll=6.91934)  # pass 2
    run.report("final_sliding_window_exact", 6.91934, decimals=8)
    run.report("final_sliding_window", 6.9193, decimals=4)
    ms = {m.reported.label: m for m in match_reported(_trace(run))}
    assert ms["final_sliding_window_exact"].pass_.index == 1
    assert ms["final_sliding_window"].pass_.index == 1 and not ms["final_sliding_window"].ambiguous
    run2 = SyntheticRun(n)
    run2.score("eval_val", 40, [(1, n)], nll=6.91930)
    run2.score("eval_val_sliding", 80, [(1, n)], nll=6.91934)
    run2.report("final_sliding_window", 6.9193, decimals=4)  # no exact line: cannot tell
    assert match_reported(_trace(run2))[0].ambiguous


def test_short_print_takes_its_exact_siblings_aggregation():
    """The sliding tail re-scores a few targets: `x_exact` is the sum of all scores; the 4-decimal
    `x` must be read the same way, not as the first scores (which differ by less than its rounding)."""
    n = 9
    run = SyntheticRun(n)
    run.score("eval_val_sliding", 80, [(1, n)], nll=6.9216)
    run.score("eval_val_sliding", 80, [(7, n)], nll=6.9300)  # the tail window again
    run.report("final_sliding_window_exact", (8 * 6.9216 + 2 * 6.93) / 10, decimals=8)
    run.report("final_sliding_window", round((8 * 6.9216 + 2 * 6.93) / 10, 4), decimals=4)
    ms = {m.reported.label: m for m in match_reported(_trace(run))}
    assert ms["final_sliding_window_exact"].which == "all"
    assert ms["final_sliding_window"].which == "all"


def test_printed_sum_with_a_doubled_tail_matches_all_scores_not_first():
    """At the 1e-6 floor, a mean that counts a few tail targets twice can sit within tolerance
    of the first scores as well: the closer aggregation ("all") is the one printed."""
    n = 2001
    run = SyntheticRun(n)
    nll = [6.0 + (i % 7) * 0.1 for i in range(n - 1)]
    run.score("eval_ttt", 80, [(1, n)], nll=nll)
    run.score("eval_ttt", 80, [(n - 3, n)], nll=nll[-3:])  # the tail window again, no training
    mean_all = (sum(nll) + sum(nll[-3:])) / (n - 1 + 3)
    assert abs(mean_all - sum(nll) / (n - 1)) < 1e-6  # both within the floor
    run.report("legal_ttt_exact", mean_all, decimals=8)
    m = match_reported(_trace(run))[0]
    assert m.which == "all"
