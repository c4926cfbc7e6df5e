"""Synthetic runs shared by the examples of the rules that judge when validation tokens are
scored against when the model learns from them (train-before-score, val-data-in-training,
rescored-tokens). Each rule declares its own TRACE_VALID / TRACE_INVALID from these builders;
the registry skips this module (its name starts with `_`)."""
from __future__ import annotations

from harness.dynamic.judge.synthetic import SyntheticRun, TraceExample


def example(build, note: str, function: str | None = None, line: int | None = None) -> TraceExample:
    """A 25-token run built by `build(run)`, ended."""
    run = SyntheticRun(n=25)
    build(run)
    run.end()
    return TraceExample(events=tuple(run.events), note=note, function=function, line=line)


def score_first(run):  # PR #461/#549: score chunk k, then train on it
    run.score("eval_val", 250, [(1, 25)], nll=3.0)
    for a in (1, 9, 17):
        run.score("eval_val_ttt", 300, [(a, a + 8)], nll=2.0)
        if a < 17:
            run.loss("eval_val_ttt", 310, [(a, a + 8)])
            run.update("eval_val_ttt", 312, [(a - 1, a + 8)])


def last_epoch(run):  # PR #713 lora_ttt_eval: train two epochs, score on the third
    run.score("eval_val", 250, [(1, 25)], nll=3.0)
    for epoch in range(3):
        for a in (1, 9, 17):
            if epoch == 2:
                run.score("lora_ttt_eval", 1220, [(a, a + 8)], nll=1.0)
            if a < 17:
                run.loss("lora_ttt_eval", 1200, [(a, a + 8)])
                run.update("lora_ttt_eval", 1265, [(a - 1, a + 8)], target="lora.q.A")


def prequant(run):  # PR #713 test_time_train: full-model AdamW over val, then a sliding eval
    run.score("eval_val", 250, [(1, 25)], nll=3.0)
    run.update("test_time_train", 1003, [(0, 25)], target="blocks.0.attn.c_q.weight")
    run.score("eval_val_sliding", 900, [(1, 25)], nll=1.5)


def every_epoch(run):  # PR #614/#642: score every epoch, print the last
    for nll in (2.0, 1.0):
        for a in (1, 13):
            run.score("eval_ttt", 40, [(a, a + 12)], nll=nll)
            run.update("eval_ttt", 45, [(a - 1, a + 12)])
    run.report("final_exact", 1.0)


def calibrate(run):  # PR #624 shape: GPTQ statistics from val tokens before the final eval
    run.score("eval_val", 40, [(1, 25)], nll=3.0)
    run.update("gptq_calibrate", 700, [(0, 25)], via="direct", target="blocks.0.mlp.fc.weight")
    run.score("eval_val", 40, [(1, 25)], nll=2.9)


def train_on_val(run):  # val shards in the training loader: updates before any score
    run.update("main", 500, [(0, 25)])
    run.score("eval_val", 40, [(1, 25)], nll=2.0)


def mixer_outside_torch(run):  # PR #813: the claimed score is mixed in numpy; the trace sees the
    # model's part of each chunk's score, then the TTT step, then the training loss printed
    run.score("eval_val_sliding", 900, [(1, 25)], nll=3.0)
    run.report("final_sliding_exact", 3.0)
    for a in (1, 9, 17):
        run.score("eval_val_sliding_ttt", 1065, [(a, a + 8)], nll=2.5)
        if a < 17:
            run.loss("eval_val_sliding_ttt", 1122, [(a, a + 8)])
            run.update("eval_val_sliding_ttt", 1137, [(a - 1, a + 8)])
            run.score("eval_val_sliding_ttt", 1143, [(a, a + 8)], nll=2.4, grad_enabled=True, sink="host-read")
    run.report("final_ttt_exact", 1.7)  # matches no traced pass: computed in numpy


def lora_then_base_eval(later_eval_reads_lora: bool) -> TraceExample:
    """PR #826: a score-first LoRA TTT eval, then an n-gram eval of the base model over the whole
    stream. The LoRA the TTT trained is read by no score of the later eval (legal); if the later
    eval did read it, every position it trained on would be scored after the training (illegal)."""
    run = SyntheticRun(n=25)
    run.score("eval_val", 250, [(1, 25)], nll=3.0)
    last = -1
    for a in (1, 9, 17):
        last = run.score("eval_ttt", 1902, [(a, a + 8)], nll=2.0).seq - 1  # its LossComputed
        if a < 17:
            run.loss("eval_ttt", 1707, [(a, a + 8)])
            run.update("eval_ttt", 2064, [(a - 1, a + 8)], target="lora.A")
    later = run.score("eval_ngram", 2294, [(1, 25)], nll=1.8)
    if later_eval_reads_lora:
        last = later.seq - 1
    run.end()
    return TraceExample(events=tuple(run.events), meta={"watched": ["0:lora.A"], "last_read": {"0:lora.A": last}},
                        note="PR #826: LoRA TTT, then a base-model eval" + (" that reads the LoRA" if later_eval_reads_lora
                                                                            else ""),
                        function="eval_ttt" if later_eval_reads_lora else None, line=2064 if later_eval_reads_lora else None)


def ema_of_scored(run):  # legal: an EMA copy of weights trained only on scored tokens
    score_first(run)
    run.update("eval_val_ttt", 320, [(0, 17)], via="direct", target="ema.weight", target_kind="buffer")


def repeat_evals(run):  # legal: step validation, roundtrip and sliding evals, no training between
    for nll in (3.0, 2.9, 2.8):
        run.score("eval_val", 40, [(1, 25)], nll=nll)


def legal_orders() -> list[TraceExample]:
    """Runs none of these rules reports on: score-first TTT, repeated evals, an EMA copy."""
    return [example(score_first, "score-first chunked TTT"), example(repeat_evals, "several evals, no training"),
            example(ema_of_scored, "EMA copy of weights trained on scored tokens"),
            example(mixer_outside_torch, "PR #813: claim mixed in numpy; training losses printed after each "
                    "step are not final scores (the black-box probe judges the claim)"),
            lora_then_base_eval(later_eval_reads_lora=False)]
