"""GA009 byte-accounting: the byte count implied by the submission's own printed val_loss and
val_bpb is not the true UTF-8 byte count of the scored text. Dynamic only (trace layer)."""
from __future__ import annotations

import math

from harness.dynamic.judge.locations import location
from harness.dynamic.judge.reported import find_print_line, match_reported, pass_numbers, tolerance
from harness.dynamic.judge.synthetic import SyntheticRun, TraceExample
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Rule
from harness.challenge.bpb import implied_bytes


def _example(script_bytes: float, true_bytes: int = 10, decimals: int = 8, note: str = "") -> TraceExample:
    run = SyntheticRun(n=5)
    run.score("eval_val", 50, [(1, 5)], nll=2.0)
    loss = 2.0
    run.report("final_exact", loss, loss / math.log(2.0) * 4 / script_bytes, decimals=decimals)
    run.end(val_bytes_utf8=true_bytes)
    return TraceExample(events=tuple(run.events), note=note, function="eval_val", line=50)


class ByteAccounting(Rule):
    id = "GA009"
    name = "byte-accounting"
    severity = Severity.HIGH
    confidence = Confidence.HIGH
    layers = (Layer.TRACE,)

    summary = "Checks that the bytes behind the printed val_bpb are the true UTF-8 bytes of the scored text."
    why = """
val_bpb divides total bits by the UTF-8 bytes of the text, which makes scores comparable across
tokenizers. A script that counts bytes itself can over-count them (a leading space counted after a
document boundary, a byte-fallback token counted as its 6-character piece, a custom tokenizer's
normaliser changing the text) and so print a lower bpb for the same loss. The trace layer takes the
script's own printed val_loss and val_bpb, derives the byte count they imply
(tokens x loss / (bpb x ln 2), tokens from the captured scores) and compares it with the true bytes of
the scored targets, computed by golf-audit from the validation tokens and the tokenizer.
"""
    example = """
token_bytes = base_bytes_lut[tgt] + has_leading_space_lut[tgt]   # counts a space after BOS too
"""
    use_instead = """
token_bytes = base_bytes_lut[tgt] + (has_leading_space_lut[tgt] & ~is_boundary_token_lut[prev])
"""
    known_problems = """
Needs both val_loss and val_bpb on one printed line, and the true bytes (the runner's decoded byte
count, or the validation shards plus the SentencePiece model). Other tokenizer formats are not audited.
The comparison allows the rounding of the printed numbers only.
"""
    references = (
        "Challenge README: 'prove with certainty that the val_bpb is correctly calculated'",
        "A custom-tokenizer submission over-counted bytes by 4.13% (see shared/rules.md, byte accounting)",
    )
    fix = ("Count bytes as the UTF-8 length of each target token's decoded piece, with its leading space "
           "only when the previous token is not a boundary token.")

    TRACE_VALID = [
        _example(10, note="implied bytes equal the true bytes"),
        _example(10.0004, decimals=4, note="4 decimals: within rounding"),
    ]
    TRACE_INVALID = [
        _example(10.5, note="5% over-count"),
        _example(9, note="under-count"),
    ]

    def judge(self, trace):
        for m in match_reported(trace):
            r = m.reported
            if m.pass_ is None or m.which is None or r.val_loss is None or not r.val_bpb or m.ambiguous:
                continue
            nums = pass_numbers(trace, m.pass_)
            true = nums.bytes_by.get(m.which)
            if not true:
                continue  # true bytes unknown: the orchestrator reports this as not audited
            count = nums.counts.get(m.which, nums.n_tokens)
            script = implied_bytes(count, r.val_loss, r.val_bpb)
            tol = script * (tolerance(r.decimals) / max(r.val_loss, 1e-12)
                            + tolerance(r.decimals) / max(r.val_bpb, 1e-12))
            diff = script - true
            if abs(diff) <= tol:
                continue
            frame = find_print_line(trace, r.label)
            if frame is None and m.pass_.events:
                frame = m.pass_.events[0].frame
            yield self.finding(
                Layer.TRACE,
                f"printed '{r.label}' divides by {script:,.1f} bytes; the scored text has {true:,} "
                f"UTF-8 bytes ({100.0 * diff / true:+.2f}%)",
                location(trace, frame),
                evidence=[
                    f"printed: {r.line.strip()}",
                    f"{count} scores summed in {m.pass_.label()}; implied bytes = tokens x val_loss / "
                    f"(val_bpb x ln 2) = {script:,.2f} (rounding allows ±{tol:.2f})",
                    f"true UTF-8 bytes of those targets: {true:,}; val_bpb with true bytes: "
                    f"{nums.bpb.get(m.which, float('nan')):.8f}",
                ],
            )
