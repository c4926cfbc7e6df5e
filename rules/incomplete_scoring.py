"""GA007 incomplete-scoring: a target position of the validation stream was never scored by
the eval whose number the submission printed. Dynamic only (trace layer)."""
from __future__ import annotations

from harness.dynamic.judge.coverage import coverage
from harness.dynamic.judge.positions import describe_positions
from harness.dynamic.judge.reported import is_claimed_pass, judged_passes, match_reported
from harness.dynamic.judge.synthetic import SyntheticRun, TraceExample
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Rule


def _example(scored: list, n: int = 12, val_tokens=None, env=None, note: str = "") -> TraceExample:
    run = SyntheticRun(n=n)
    for a, b in scored:
        run.score("eval_val", 30, [(a, b)], nll=1.5)
    k = sum(b - a for a, b in scored)
    run.report("final_exact", 1.5 if k else None, decimals=8)
    run.end()
    meta = {"env": env or {"TRAIN_SEQ_LEN": "4"}}
    if val_tokens is not None:
        meta["val_tokens"] = val_tokens
        meta["bos_id"] = 1
    return TraceExample(events=tuple(run.events), meta=meta, note=note, function="eval_val", line=30)


class IncompleteScoring(Rule, id="GA007", name="incomplete-scoring",
                        severity=Severity.HIGH, confidence=Confidence.HIGH, layers=(Layer.TRACE,)):
    summary = "Checks that the printed score covers every target position 1..N-1 of the validation stream."
    why = """
val_bpb is the total NLL of the validation split divided by its total bytes: every token after the
first must be predicted and scored once. An eval that skips positions (hard documents, the part of a
chunk a TTT loop does not reach, the targets at document boundaries) reports the average over an easier
subset. The trace layer records every position that reached a score sink and compares the union over
ranks with the stream the submission loaded.
"""
    example = """
# per-document eval that only scores documents long enough for TTT
for ds, dl in docs:
    if dl < 512:
        continue  # short documents never scored
    loss_sum += score_doc(model, tokens[ds:ds + dl])
"""
    use_instead = """
for ds, dl in docs:  # every document, and every position in it
    loss_sum += score_doc(model, tokens[ds:ds + dl + 1])  # include the next document's BOS target
"""
    known_problems = """
The official baseline's `load_validation_tokens` truncates the stream to a whole number of sequences,
so up to `seq_len - 1` tokens at the very end are never scored; every record inherits this and the
maintainers accept it. A trailing unscored run shorter than the configured sequence length
(`EVAL_SEQ_LEN`/`TRAIN_SEQ_LEN`) is therefore not reported, only counted in the coverage statistics.
Unscored positions that hold a document-start (BOS) token — a per-document eval that does not predict
the next document's BOS — are reported at low severity: the merged LoRA-TTT record (PR #77) includes
that target ("to match continuous-stream eval"), so skipping it changes the denominator slightly.
"""
    references = (
        "Challenge README: val_bpb is computed over the full fixed validation split (first 50k documents)",
        "PR #77 (merged LoRA TTT record): per-document eval includes the next document's BOS target",
        "Baseline records/track_10min_16mb/2026-03-17_NaiveBaseline: load_validation_tokens drops the tail",
    )
    fix = "Score every target position 1..N-1 exactly once and divide by the total token and byte counts."

    TRACE_VALID = [
        _example([(1, 12)], note="every target scored"),
        _example([(1, 6), (6, 12)], note="two batches cover the stream"),
        _example([(1, 9)], note="tail of 3 < TRAIN_SEQ_LEN=4 dropped, as the baseline's loader does"),
    ]
    TRACE_INVALID = [
        _example([(1, 4), (8, 12)], note="a hole in the middle", val_tokens=[1, 5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5]),
        _example([(1, 5)], env={"TRAIN_SEQ_LEN": "2"}, note="tail longer than one sequence"),
        _example([(1, 6), (7, 12)], note="document-start target skipped",
                 val_tokens=[1, 5, 6, 7, 8, 9, 1, 6, 7, 8, 9, 5]),
    ]

    def judge(self, trace):
        for p in judged_passes(trace):
            cov = coverage(trace, p)
            if not len(cov.other) and not len(cov.bos):
                continue
            first = p.events[0] if p.events else None
            ev = [f"{p.label()} scored {cov.scored} of {cov.targets} target positions "
                  f"({cov.percent:.3f}% coverage, union of ranks)"]
            if len(cov.other):
                ev.append(f"{len(cov.other)} target positions never scored: {describe_positions(cov.other)}")
            if len(cov.bos):
                ev.append(f"{len(cov.bos)} document-start (BOS) targets never scored: "
                          f"{describe_positions(cov.bos)}")
            if cov.tail:
                ev.append(f"trailing {cov.tail} positions unscored"
                          + (" (shorter than one sequence: the baseline loader's truncation, not counted)"
                             if cov.tail_allowed else ""))
            for m in match_reported(trace):
                if m.pass_ is p and m.which is not None:
                    ev.append(f"printed '{m.reported.label}' is the mean over the scored subset only")
            f = self.trace_finding(
                Layer.TRACE, trace, first.frame if first else None,
                f"{(first.frame.function if first and first.frame else '?')}() leaves "
                f"{len(cov.other) + len(cov.bos)} of {cov.targets} validation targets unscored "
                f"({cov.percent:.2f}% coverage)",
                evidence=ev,
            )
            claimed = is_claimed_pass(trace, p)
            if claimed is False:
                f.evidence.append(f"the submission's claimed score comes from '{trace.meta['claimed_label']}' "
                                  "(its logs), not from this pass: a diagnostic number")
            if not len(cov.other) or claimed is False:
                f.severity = Severity.LOW
            yield f
