"""GA008 reported-score-mismatch: a printed val_loss is not what the captured first scores of
any evaluation pass give. Dynamic only (trace layer)."""
from __future__ import annotations

import math

from harness.dynamic.judge.passes import passes
from harness.dynamic.judge.reported import base_label, find_print_line, match_reported, pass_numbers, tolerance
from harness.dynamic.judge.synthetic import SyntheticRun, TraceExample
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Rule


def _example(printed: float, nll=(1.0, 2.0, 3.0, 2.0), decimals: int = 8, rescore=None, note: str = "",
             line: int | None = None) -> TraceExample:
    n, half = len(nll) + 1, len(nll) // 2 + 1
    run = SyntheticRun(n=n)
    if rescore is None:
        run.score("eval_val", 40, [(1, n)], nll=list(nll))
    else:  # two epochs of score-then-train over two chunks: each epoch scores every position
        for scores in (nll, rescore):
            for a, b in ((1, half), (half, n)):
                run.score("eval_val", 40, [(a, b)], nll=list(scores[a - 1:b - 1]))
                run.update("eval_val", 44, [(a - 1, b)])
    run.report("final_exact", printed, decimals=decimals)
    run.end()
    return TraceExample(events=tuple(run.events), note=note, line=line)


class ReportedScoreMismatch(Rule, id="GA008", name="reported-score-mismatch",
                            severity=Severity.HIGH, confidence=Confidence.HIGH, layers=(Layer.TRACE,)):
    summary = "Checks that every printed val_loss equals the mean of the first scores of one evaluation pass."
    why = """
The submission's number is what the leaderboard compares. Proper accounting makes it the sum of each
target's first (final) score divided by the number of targets. The trace layer captures each position's
first score and recomputes every pass's mean; a printed number that matches no pass was computed from
something else: scores taken after training on the tokens (the last or minimum of several passes), a
weighted or subset mean, or a constant factor on the loss.
"""
    example = """
best = min(best, epoch_loss)          # keep the best epoch's score
print(f"final_exact val_loss:{best:.8f}")
"""
    use_instead = """
loss_sum += nll.sum(); count += nll.numel()   # each target's first score, once
print(f"final_exact val_loss:{loss_sum / count:.8f}")
"""
    known_problems = """
Printed numbers are matched by value to passes, within half a unit in the last printed place (never
below 1e-6: per-token float32 losses summed in another order). Numbers printed with few decimals may
match a pass by chance. Progress lines that print a running partial mean are not val_loss/val_bpb
reports and are not parsed as such.
"""
    references = (
        "Challenge README: 'prove with certainty that the val_bpb is correctly calculated'",
        "PR #614, PR #642 (closed: min-NLL / score-every-epoch selection)",
    )
    fix = "Print the mean of each target's first score over the whole stream, computed once."

    TRACE_VALID = [
        _example(2.0, note="mean of first scores, 8 decimals"),
        _example(2.00004, decimals=4, note="4 printed decimals: within rounding"),
        _example(2.0, rescore=(0.5, 0.5, 0.5, 0.5), note="re-scores exist but the first scores are printed"),
    ]
    TRACE_INVALID = [
        _example(2.1, note="matches no pass", line=40),
        _example(0.5, rescore=(0.5, 0.5, 0.5, 0.5), note="printed the re-score after training"),
        _example(1.5, rescore=(0.5, 2.5, 3.5, 0.5), note="printed the per-position minimum"),
    ]

    def judge(self, trace):
        if not passes(trace):
            return
        bb = trace.meta.get("blackbox") or {}
        probed = base_label(bb["label"]) if bb.get("label") else None
        outside = probed if not bb.get("not_run") else None
        for m in match_reported(trace):
            r = m.reported
            if m.which is None and outside and base_label(r.label) == outside:
                continue  # computed outside torch: the black-box probe judged these printed totals
            if m.which == "first" or (m.which == "all" and not m.pass_.rescored_mask):
                continue  # the pass's own scores (double counting without training: rescored-tokens)
            if any(v is not None and math.isnan(v) for v in (r.val_loss, r.val_bpb)):
                continue  # a NaN print at toy scale says nothing about the scores (noted by the audit)
            frame = find_print_line(trace, r.label)
            if frame is None and m.pass_ is not None and m.pass_.events:
                frame = m.pass_.events[0].frame
            ev = [f"printed: {r.line.strip()}"]
            if m.pass_ is not None and m.loss_delta is not None:
                nums = pass_numbers(trace, m.pass_)
                ev.append(f"closest pass: {m.pass_.label()}: mean of first scores {nums.loss['first']:.8f} "
                          f"over {nums.n_tokens} targets (printed - recomputed = {m.loss_delta:+.3g}, "
                          f"tolerance {tolerance(r.decimals):.1g})")
            if m.which in ("last", "min", "all"):
                nums = pass_numbers(trace, m.pass_)
                ev.append(f"it equals the {m.which} scores of that pass ({nums.loss[m.which]:.8f}): "
                          f"scores taken after the model trained on those tokens")
                kind = {"last": "the last", "min": "the minimum", "all": "the sum of all"}[m.which]
                msg = f"printed '{r.label}' is {kind} of several scores per token, not the first"
            else:
                msg = f"printed '{r.label}' matches no captured evaluation pass"
                if m.pass_ is None:
                    ev.append("no pass's scores could be compared (bytes unknown for a bpb-only line)")
                    if r.val_loss is None:
                        continue  # nothing comparable: not evidence of a mismatch
            if m.which is None:
                ev.append("either the printed number is not the mean of per-token NLLs (an extra term such as "
                          "a z-loss, another token count), or its eval computes the loss in a form the tracer "
                          "does not recognise as scores")
            claimed = trace.meta.get("claimed_label")
            f = self.trace_finding(Layer.TRACE, trace, frame, msg, evidence=ev)
            if m.which is None and probed and base_label(r.label) == probed:
                # no traced pass gives it: the eval computes it outside torch (numpy, Python), and
                # the black-box probe that judges such totals could not run: not audited, not a lie
                f.evidence.append(f"the black-box code-length probe could not judge these printed totals: "
                                  f"{bb['not_run']}; the claim is not audited (see the audit's not-audited reasons)")
                f.severity = Severity.LOW
            if m.which is None and m.loss_delta is not None and not math.isnan(m.loss_delta):
                f.confidence = Confidence.MEDIUM if r.decimals < 6 else Confidence.HIGH
            if claimed and m.which is None and base_label(r.label) != base_label(claimed):
                f.evidence.append(f"the submission's claimed score comes from '{claimed}' (its logs), "
                                  "not from this line: a diagnostic number")
                f.severity = Severity.LOW
            yield f
