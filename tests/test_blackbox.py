"""The black-box code-length probe (harness/dynamic/blackbox.py) against evals simulated in plain
Python: it sees only the printed val_loss/val_bpb lines, as it does for a real submission."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.dynamic.blackbox import run_blackbox, stream_length
from harness.dynamic.trace.events import Reported

V = 16
BYTES = np.array([(t % 3) + 1 for t in range(V)], dtype=np.int64)  # every token 1-3 bytes


def target_bytes(stream: np.ndarray) -> np.ndarray:
    out = BYTES[np.asarray(stream, dtype=np.int64)]
    out[0] = 0
    return out


def stream(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, size=n)


def bigram_eval(kind: str, decimals: int = 8, truncate_to: int | None = None, noise: float = 0.0):
    """A cache-based eval over the stream in order. `kind`: "legal" (normalised add-1/2 bigram,
    counted after the score), "hit" (a bonus for a realised token seen in that context, no
    normaliser), "adapt" (adapt-then-score: the eval first fits each 64-token chunk, so a bigram
    pair present in the chunk -- the scored one included -- gets most of the mass)."""
    rng = np.random.default_rng(1)

    def run(s: np.ndarray, what: str, extra: dict) -> list[Reported]:
        s = np.asarray(s)
        if truncate_to and extra.get("TRAIN_SEQ_LEN") != "1":
            s = s[: ((len(s) - 1) // truncate_to) * truncate_to + 1]
        counts = np.zeros((V, V))
        total, nbytes = 0.0, 0
        for i in range(1, len(s)):
            prev, tgt = int(s[i - 1]), int(s[i])
            row = counts[prev]
            if kind == "adapt":
                lo = (i - 1) // 64 * 64
                chunk = set(zip(s[lo:lo + 64].tolist(), s[lo + 1:lo + 65].tolist()))
                q = (row[tgt] + 0.5) / (row.sum() + 0.5 * V)
                p = 0.9 * ((prev, tgt) in chunk) + 0.1 * q
            elif kind == "hit":
                p = min(1.0, 1.0 / V + (0.5 if row[tgt] > 0 else 0.0))
            else:
                p = (row[tgt] + 0.5) / (row.sum() + 0.5 * V)
            total += -math.log(p)
            nbytes += int(BYTES[tgt])
            counts[prev, tgt] += 1
        n = len(s) - 1
        loss = total / n + (rng.normal() * noise if noise else 0.0)
        bpb = loss / math.log(2) * n / nbytes
        return [Reported(seq=0, rank=0, label="final_exact", val_loss=round(loss, decimals),
                         val_bpb=round(bpb, decimals), line="", decimals=decimals)]
    return run


def probe(run_fn, decimals: int = 8, period: int = 64):
    return run_blackbox(stream(), run_fn, label="final_exact", decimals=decimals, target_bytes=target_bytes,
                        period=period, budget=6, workers=1)


def test_a_legal_cache_mix_sums_to_at_most_one():
    rep = probe(bigram_eval("legal"))
    assert not rep.not_run, rep.not_run
    assert rep.sum_p <= 1.0 + rep.tolerance
    assert all(x > 0 for x in rep.code_lengths)  # every candidate's code length is a real one
    assert len(rep.candidates) == 4 and len(rep.runs) == 6


def test_an_unnormalised_hit_bonus_sums_above_one():
    rep = probe(bigram_eval("hit"))
    assert not rep.not_run, rep.not_run
    assert rep.sum_p > 1.0 + rep.tolerance


def test_adapt_then_score_breaks_the_bound():
    rep = probe(bigram_eval("adapt"))
    assert not rep.not_run, rep.not_run
    assert rep.sum_p > 1.0 + rep.tolerance


def test_an_eval_that_drops_the_tail_is_not_judged():
    calls = []
    inner = bigram_eval("hit", truncate_to=128)

    def counted(s, what, extra):
        calls.append(what)
        return inner(s, what, extra)

    rep = run_blackbox(stream(), counted, label="final_exact", decimals=8,
                       target_bytes=target_bytes, period=64, workers=1, layouts=[("toy", {})])
    assert rep.not_run and "do not fit a score of all" in rep.not_run
    assert math.isnan(rep.sum_p)
    # the layout is given up after its first candidate and its shorter stream, not all six runs
    assert len(calls) == 2 and "without the last token" in calls


def test_a_loader_that_keeps_whole_windows_is_judged_with_one_token_sequences():
    # the records' load_validation_tokens keeps a multiple of TRAIN_SEQ_LEN tokens
    rep = probe(bigram_eval("hit", truncate_to=128), period=64)
    assert not rep.not_run, rep.not_run
    assert rep.sum_p > 1.0 + rep.tolerance
    assert any("one-token sequences" in n for n in rep.notes)
    assert rep.stream_tokens <= 1025  # a window per target: the capped stream


def test_a_nondeterministic_eval_is_not_judged():
    rep = probe(bigram_eval("legal", noise=1e-3))
    assert rep.not_run.startswith("the eval is not deterministic")


def test_few_printed_decimals_get_a_short_stream_and_a_wider_tolerance():
    assert stream_length(100_000, 64, 4) < stream_length(100_000, 64, 8)
    rep = probe(bigram_eval("legal", decimals=4), decimals=4)
    assert not rep.not_run, rep.not_run
    assert rep.rounding_nats > 1e-3 and rep.sum_p <= 1.0 + rep.tolerance
    assert (rep.stream_tokens - 1) % 64 == 0


def test_a_failed_run_is_reported_not_raised():
    def broken(s, what, extra):
        return []

    rep = probe(broken)
    assert "printed no 'final_exact' line" in rep.not_run


@pytest.mark.parametrize("kind", ["legal", "hit"])
def test_the_last_context_is_planted_with_seen_successors(kind):
    rep = probe(bigram_eval(kind))
    assert rep.position == rep.stream_tokens - 1 and rep.context_token >= 0


def test_a_bpb_only_line_is_judged_from_the_true_bytes():
    inner = bigram_eval("hit")

    def bpb_only(s, what, extra):
        return [Reported(seq=0, rank=0, label=r.label, val_loss=None, val_bpb=r.val_bpb, line="", decimals=r.decimals)
                for r in inner(s, what, extra)]

    rep = probe(bpb_only)
    assert not rep.not_run, rep.not_run
    assert rep.sum_p > 1.0 + rep.tolerance
    assert any("prints no val_loss" in n for n in rep.notes)


def test_an_unmatched_claim_the_probe_cannot_judge_is_low_not_a_mismatch():
    # PR #770's shape: the model scores in torch, a numpy mixer changes them, the printed total
    # matches no traced pass, and the probe cannot judge it (its sliding windows score the tail
    # twice): the rule says "not audited", it does not accuse the print of lying.
    from harness.core.findings import Severity
    from harness.core.registry import rule_by_name
    from harness.dynamic.judge.synthetic import SyntheticRun, TraceExample

    run = SyntheticRun(n=5)
    run.score("eval_val", 40, [(1, 5)], nll=[1.0, 2.0, 3.0, 2.0])
    run.report("final_exact", 1.5, decimals=8)
    run.end()
    rule = rule_by_name("reported-score-mismatch")
    unjudged = TraceExample(events=tuple(run.events)).trace()
    unjudged.meta["blackbox"] = {"label": "final_exact", "not_run": "the eval drops targets at this length"}
    [f] = list(rule.judge(unjudged))
    assert f.severity == Severity.LOW and any("could not judge" in e for e in f.evidence)
    plain = TraceExample(events=tuple(run.events)).trace()  # no probe tried: the mismatch stands at its severity
    [g] = list(rule.judge(plain))
    assert g.severity == Severity.HIGH


def windowed_eval(kind: str, L: int = 64, s: int = 32):
    """A sliding-window eval whose last window is aligned to the stream end (PR #779's and #813's
    `last_full_start`): the targets of the last window overlap the previous one's unless the
    stream length fits the stride, so a stream one token shorter is scored in another layout.
    Each target's "model" is a unigram cache over its window's context (normalised); "hit" adds
    an unnormalised bonus for a target seen in that context. EVAL_STRIDE=1 scores every target
    once, in its own full window, at any length."""

    def run(x: np.ndarray, what: str, extra: dict) -> list[Reported]:
        x = np.asarray(x)
        stride = int(extra.get("EVAL_STRIDE", s))
        T = len(x) - 1
        last = max(T - L, 0)
        starts = list(range(0, last + 1, stride))
        if starts[-1] != last:
            starts.append(last)
        total, nbytes, n = 0.0, 0, 0
        for ws in starts:
            wlen = min(L, T - ws)
            first = 0 if ws == 0 else max(wlen - stride, 0)
            for j in range(first, wlen):
                t = ws + j + 1  # target index
                ctx = x[ws:t]
                seen = np.bincount(ctx, minlength=V)
                p = (seen[x[t]] + 0.5) / (len(ctx) + 0.5 * V)
                if kind == "hit" and seen[x[t]] > 0:
                    p = min(1.0, p + 0.5)
                total += -math.log(p)
                nbytes += int(BYTES[x[t]])
                n += 1
        loss = total / n
        return [Reported(seq=0, rank=0, label="final_exact", val_loss=round(loss, 8),
                         val_bpb=round(loss / math.log(2) * n / nbytes, 8), line="", decimals=8)]
    return run


def test_an_end_aligned_last_window_is_judged_with_stride_one_windows():
    short = stream(700)
    only_toy = run_blackbox(short, windowed_eval("legal"), label="final_exact", decimals=8,
                            target_bytes=target_bytes, period=64, workers=1, layouts=[("toy", {})])
    assert only_toy.not_run and "do not fit a score of all" in only_toy.not_run  # a stream one shorter is laid out otherwise
    legal = run_blackbox(short, windowed_eval("legal"), label="final_exact", decimals=8,
                         target_bytes=target_bytes, period=64, workers=1)
    assert not legal.not_run, legal.not_run
    assert any("stride-1 windows" in n for n in legal.notes)
    assert legal.sum_p <= 1.0 + legal.tolerance
    hit = run_blackbox(short, windowed_eval("hit"), label="final_exact", decimals=8,
                       target_bytes=target_bytes, period=64, workers=1)
    assert not hit.not_run and hit.sum_p > 1.0 + hit.tolerance


def test_stride_one_windows_probe_a_shorter_stream():
    # a window per target: the network runs once per target, so that layout's stream is capped
    seen: dict[str, set[int]] = {}
    inner = windowed_eval("hit")

    def recorded(x, what, extra):
        seen.setdefault(extra.get("EVAL_STRIDE", "toy"), set()).add(len(x))
        return inner(x, what, extra)

    rep = run_blackbox(stream(3000), recorded, label="final_exact", decimals=8, target_bytes=target_bytes,
                       period=64, workers=1)
    assert not rep.not_run and any("stride-1 windows" in n for n in rep.notes)
    assert max(seen["toy"]) > 2000 and max(seen["1"]) <= 1025
    assert rep.stream_tokens <= 1025 and rep.sum_p > 1.0 + rep.tolerance


def test_a_layout_that_prints_no_result_line_passes_to_the_next():
    # PR #770's sliding eval runs only when EVAL_STRIDE < EVAL_SEQ_LEN: in a layout where it is
    # skipped the claimed line is missing, which says nothing about the next layout
    legal = bigram_eval("legal", truncate_to=128)

    def skips_at_stride_one(s, what, extra):
        return [] if extra.get("EVAL_STRIDE") == "1" and extra.get("TRAIN_SEQ_LEN") != "1" else legal(s, what, extra)

    rep = probe(skips_at_stride_one)
    assert not rep.not_run, rep.not_run
    assert any("stride-1 windows: candidate" in n and "printed no" in n for n in rep.notes)


def test_when_every_layout_fails_the_reason_names_each():
    # PR #770 again: the toy layout's totals miss targets and the one-token layout skips the
    # sliding eval; the report must say what each layout did, not only the last one
    def prints_nothing(s, what, extra):
        return []

    rep = probe(prints_nothing)
    assert rep.not_run.startswith("no layout gave totals to judge (3 tried; the toy profile: ")
    assert "stride-1 windows: " in rep.not_run and "one-token sequences: " in rep.not_run



def test_the_claim_is_the_print_the_trace_run_made_not_the_last():
    # PR #770 prints its claimed label again after a stride-64 eval that runs only when
    # EVAL_STRIDE != 64: in a layout that changes the stride, the last print is another eval's
    from harness.dynamic.blackbox import occurrences, pick_line

    def line(loss):
        return Reported(seq=0, rank=0, label="final_exact", val_loss=loss, val_bpb=loss, line="", decimals=8)

    trace_run = [line(2.0)]
    layout_run = [line(3.0), line(float("nan")), line(4.0)]
    assert occurrences(trace_run, "final_exact") == 1
    assert pick_line(layout_run, "final_exact", 1).val_loss == 3.0
    assert pick_line(layout_run, "final_exact").val_loss == 4.0
    assert pick_line(layout_run, "final_exact", 3) is None
