"""golf-eval: the log parser and the t-test, on log snippets we wrote in the challenge's formats."""
from __future__ import annotations

import math

import pytest

from harness.evaluation.logs import parse_log_text
from harness.evaluation.significance import betainc, one_sample_one_sided, t_cdf, welch_one_sided

OLD_STYLE = """\
W0323 15:55:54.099000 115438 torch/distributed/run.py:803] *****
logs/abc.txt
val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=./tok.model
seed:42
warmup_step:1/20
step:0/20000 val_loss:6.9323 val_bpb:4.1057 train_time:0ms step_avg:0.01ms
step:100/20000 train_loss:3.1000 train_time:9000ms step_avg:90.00ms
step:5831/20000 val_loss:1.9505 val_bpb:1.1552 train_time:599993ms step_avg:102.90ms
stopping_early: wallclock_cap train_time:599993ms step:5831/20000
peak memory allocated: 19298 MiB reserved: 19506 MiB
Serialized model: 98443473 bytes
Code size: 74463 bytes
Total submission size: 98517936 bytes
Serialized model int6+zstd: 15829315 bytes
Total submission size int8+zlib: 15903778 bytes
final_eval_mode:sliding_window stride:64 batch_seqs:32
  sliding_eval [  0.0%] 32/1000 windows running_bpb=1.2
  sliding_eval [ 50.0%] 500/1000 windows running_bpb=1.15
  sliding_eval [ 99.0%] 990/1000 windows running_bpb=1.15
final_int8_zlib_roundtrip val_loss:1.9377 val_bpb:1.1476 eval_time:180000ms
final_int8_zlib_roundtrip_exact val_loss:1.93771149 val_bpb:1.14762493
lora_ttt_batched: short=2393 long=3857 batch=64
  lora_ttt_batch [50.0%] docs=64/128 running_bpb=1.26
ttt_final val_loss:1.8843 val_bpb:1.1160 time:495125ms
ttt_improvement: 0.031632 bpb
ttt:starting lr=0.01 epochs=3
ttt:epoch=1/3 loss=3.4932
  sliding_eval [  0.0%] 32/1000 windows running_bpb=1.6
  sliding_eval [ 25.0%] 250/1000 windows running_bpb=1.6
this line is not in any format we know
"""


def test_old_style_numbers():
    log = parse_log_text(OLD_STYLE, "train_seed42.log")
    assert log.seed == 42 and log.seed_source.startswith("log line")
    assert log.train_time_s == pytest.approx(599.993)
    assert log.stopped_early and log.last_step == 5831 and log.total_steps == 20000
    # The artifact is the labelled (compressed) total, not the raw checkpoint's total.
    assert log.artifact is not None and log.artifact.value == 15903778 and log.artifact.label == "int8+zlib"
    assert log.code_bytes == 74463
    assert [r.label for r in log.results if r.after_training] == [
        "final_int8_zlib_roundtrip", "final_int8_zlib_roundtrip_exact", "ttt_final"]
    # The step:0 validation line is training-time, not a result.
    assert not [r for r in log.results if r.label.startswith("step")]
    assert log.lines_unknown >= 1  # tolerated, counted
    assert log.missing == []


def test_phases_sum_and_unmeasured_extra_pass():
    log = parse_log_text(OLD_STYLE)
    labels = [(p.label, p.status) for p in log.phases]
    assert labels == [("final_int8_zlib_roundtrip", "logged"), ("ttt_final", "logged"),
                      ("ttt:starting", "unmeasured")]
    # _exact is the same pass, not a second one.
    assert log.phases[0].aliases and "final_int8_zlib_roundtrip_exact" in log.phases[0].aliases[0]
    assert log.eval_logged_s == pytest.approx(180.0 + 495.125)
    extra = log.phases[2]
    assert extra.result is None  # the log ends inside the pass
    # Lower bound from progress: 25% of the sliding pass that took 180 s.
    assert extra.estimate_kind == "lower bound from progress"
    assert extra.estimate_s == pytest.approx(0.25 * 180.0)


def test_new_style_lines_and_twin_results():
    text = """\
Hyperparameters:
  seed: 1234
  vocab_size: 8192
0/20000 val_loss: 9.0076 val_bpb: 4.1159
4000/20000 train_loss: 2.4 train_time: 9.8m tok/s: 7000000
stopping_early: wallclock_cap train_time: 599623ms step: 4900/20000
GPTQ:collected 67 Hessians in 3.5s
Serialized model quantized+brotli: 15920836 bytes
Code size (uncompressed): 151766 bytes
Code size (compressed): 31250 bytes
Total submission size quantized+brotli: 15952086 bytes
diagnostic quantized val_loss:2.35058660 val_bpb:1.07405660 eval_time:63234ms
ttt_sliding:start chunks=100
ttt_sliding:done val_loss=2.795171 val_bpb=1.082098 elapsed=293.2s
legal_ttt_exact val_loss:2.79517119 val_bpb:1.08209788 eval_time:293430ms
total_eval_time:356.7s
"""
    log = parse_log_text(text)
    assert log.seed == 1234
    assert log.train_time_s == pytest.approx(599.623)
    assert log.post_loop_train_s == pytest.approx(3.5)  # GPTQ Hessians count as training time
    assert log.train_total_s == pytest.approx(603.123)
    assert log.code_bytes == 31250  # the compressed code size is what counts
    assert log.artifact.value == 15952086
    # ttt_sliding:done and legal_ttt_exact report one pass (same numbers, same time).
    assert [p.label for p in log.phases] == ["diagnostic quantized", "ttt_sliding:done"]
    assert log.eval_logged_s == pytest.approx(63.234 + 293.2)
    assert log.script_total_eval_s == pytest.approx(356.7)


def test_result_without_time_is_unmeasured_and_timestamps_estimate():
    text = """\
seed:7
step:10/10 train_loss:2.0 train_time:1000ms step_avg:100ms
[12:00:00] final_roundtrip val_loss:2.0 val_bpb:1.2 eval_time:10000ms
[12:00:01] ttt:starting epochs=2
[12:00:31] ttt:epoch=2/2 loss=1.9
[12:01:05] final_ttt val_loss:1.9 val_bpb:1.1
"""
    log = parse_log_text(text)
    assert [(p.label, p.status) for p in log.phases] == [("final_roundtrip", "logged"), ("final_ttt", "unmeasured")]
    p = log.phases[1]
    assert p.estimate_kind == "timestamps" and p.estimate_s == pytest.approx(65.0)


def test_code_dump_lines_do_not_match():
    text = '''\
def main():
    log0(f"step:{step}/{args.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} train_time:{t:.0f}ms")
    log0(f"final_int8_zlib_roundtrip val_loss:{q:.4f} val_bpb:{b:.4f} eval_time:{e:.0f}ms")
    seed = int(os.environ.get("SEED", 1337))
'''
    log = parse_log_text(text)
    assert log.results == [] and log.last_step is None and log.seed is None
    assert "step lines" in log.missing and "seed" in log.missing


def test_seed_from_file_name():
    log = parse_log_text("step:1/1 train_loss:1 train_time:5ms\n", "logs/train_seed2025.log")
    assert log.seed == 2025 and log.seed_source == "file name"


# ---- the t distribution ----------------------------------------------------------------------


def test_t_cdf_closed_forms():
    """df=1 is Cauchy: F(t) = 1/2 + atan(t)/pi, so F(1) = 0.75 exactly.
    df=2: F(t) = 1/2 + t / (2 sqrt(t^2 + 2)); F(-2) = 1/2 - 2/(2 sqrt 6) = 0.0917517."""
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)
    assert t_cdf(-3.0, 1) == pytest.approx(0.5 + math.atan(-3.0) / math.pi, abs=1e-12)
    assert t_cdf(-2.0, 2) == pytest.approx(0.0917517, abs=1e-7)
    assert t_cdf(0.0, 7) == pytest.approx(0.5)


@pytest.mark.parametrize("t,df,upper_tail", [
    # Critical values from a printed t-table (one-sided upper-tail probabilities).
    (2.015, 5, 0.05), (3.365, 5, 0.01), (2.776, 4, 0.025), (1.812, 10, 0.05), (2.457, 30, 0.01),
    (6.965, 2, 0.01), (31.821, 1, 0.01),
])
def test_t_cdf_matches_t_table(t, df, upper_tail):
    assert 1.0 - t_cdf(t, df) == pytest.approx(upper_tail, abs=2e-4)
    assert t_cdf(-t, df) == pytest.approx(upper_tail, abs=2e-4)


def test_betainc_symmetry_and_uniform():
    assert betainc(1.0, 1.0, 0.3) == pytest.approx(0.3)
    assert betainc(2.5, 1.5, 0.4) == pytest.approx(1.0 - betainc(1.5, 2.5, 0.6), abs=1e-12)


def test_welch_hand_example():
    """new = 1.0, 1.2, 1.1 (mean 1.1, s 0.1); record = 1.3, 1.5, 1.4 (mean 1.4, s 0.1); margin 0.05.
    diff = 1.1 - (1.4 - 0.05) = -0.25; se = sqrt(0.01/3 + 0.01/3) = 0.0816497; t = -3.0619;
    Welch df = (2 * 0.01/3)^2 / (2 * (0.01/3)^2 / 2) = 4.
    For df = 4 the CDF has a closed form, F(t) = 1/2 + (3/8) u (1 - t^2 / (12 (1 + t^2/4))) with
    u = t / sqrt(1 + t^2/4): F(-3.0619) = 0.01879 (between the table's 0.01 at 3.747 and 0.025 at 2.776)."""
    res = welch_one_sided([1.0, 1.2, 1.1], [1.3, 1.5, 1.4], margin=0.05, alpha=0.01)
    assert res.t == pytest.approx(-3.0619, abs=1e-4)
    assert res.df == pytest.approx(4.0)
    t = res.t
    u = t / math.sqrt(1 + t * t / 4)
    closed = 0.5 + 3.0 / 8.0 * u * (1 - t * t / (12 * (1 + t * t / 4)))
    assert res.p_value == pytest.approx(closed, abs=1e-9)
    assert res.p_value == pytest.approx(0.01879, abs=5e-5)
    assert res.significant is False  # 0.0188 is not < 0.01
    assert welch_one_sided([1.0, 1.2, 1.1], [1.3, 1.5, 1.4], margin=0.05, alpha=0.05).significant is True


def test_one_sample_hand_example():
    """new = 1.0, 1.2, 1.1 against a record constant 1.4, margin 0.05: t = -0.25 / (0.1/sqrt 3)
    = -4.3301, df 2. Closed form df=2: F = 1/2 + t/(2 sqrt(t^2+2)) = 0.0247."""
    res = one_sample_one_sided([1.0, 1.2, 1.1], 1.4, margin=0.05, alpha=0.01)
    assert res.test == "one-sample" and res.df == 2.0
    assert res.t == pytest.approx(-4.3301, abs=1e-4)
    assert res.p_value == pytest.approx(0.5 + res.t / (2 * math.sqrt(res.t ** 2 + 2)), abs=1e-12)
    assert res.p_value == pytest.approx(0.0247, abs=1e-4)
    assert "one-sample" in res.test and "one number" in res.note


def test_tests_need_two_runs():
    assert welch_one_sided([1.0], [1.1, 1.2], 0.005, 0.01).significant is None
    assert one_sample_one_sided([1.0], 1.2, 0.005, 0.01).p_value is None
