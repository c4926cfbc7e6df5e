"""The static layer on the reference model (reference_model/): each broken variant is reported
under its rule, at a line inside the code that implements it, and the legal code (eval.py, ttt.py,
quantize.py, train.py's legal path) has no finding.

The reference model keeps the order of an eval in one file and the steps and scores in helpers of
another (`broken.ttt_sgd_train_before_score` calls `_train_chunk_k` -> `ttt.train_chunk` and
`ttt.score_chunk`), picks the eval through a table called with `*args`, and wires its hashed
embedding through `self.bigram(...)`: these tests fail when the analyzer stops following calls
across functions and files ("leak undetected"), or when a shared legal helper such as
`ttt.train_chunk` gets blamed for a caller's order ("false leak").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.static.audit import audit_folder_static, audit_source
from reference_model import variants
from tests.helpers import CHUNK_HELPERS

REFERENCE = Path(variants.folder())


@dataclass(frozen=True)
class Where:
    """A finding the static layer must give: rule, file, enclosing function, and a piece of the
    reported line where the function is legal code hosting one broken line."""

    path: str
    function: str
    line_contains: str | None = None


# Where each variant's code is (the functions the BROKEN switch selects). The rule expected there is
# variants.EXPECTED_RULE's, or one of STATIC_ALSO's.
VARIANT_CODE = {
    "train-before-score": [Where("broken.py", "ttt_sgd_train_before_score"),
                           Where("broken.py", "ttt_lora_train_before_score")],
    "train-before-score-multi-epoch": [Where("broken.py", "ttt_sgd_multi_epoch")],
    "rescored-tokens": [Where("broken.py", "ttt_sgd_rescored")],
    "val-data-in-training": [Where("broken.py", "train_on_val")],
    # the calibration happens at the call site, in the branch BROKEN selects
    "val-data-in-training-calibration": [Where("train.py", "write_artifact", "val_calibration_batches")],
    # the model's legal logits() with the one broken line that wires the target into the hash
    "hash-key-reads-target": [Where("model.py", "GPT.logits", "self.bigram(input_ids, target_ids)")],
    "improper-distribution": [Where("broken.py", "ngram_cache_transform.transform")],
}
# Pre-quant TTT over the validation stream is fine-tuning on unscored tokens: train-before-score
# names it as well as val-data-in-training does.
STATIC_ALSO = {"val-data-in-training": {"train-before-score"}}
LEGAL_FILES = ("eval.py", "ttt.py", "quantize.py", "data.py", "hyperparams.py", "train_gpt.py")


def _rules_for(variant: str) -> set[str]:
    return {variants.EXPECTED_RULE[variant]} | STATIC_ALSO.get(variant, set())


def _matches(f, rules: set[str], where: Where) -> bool:
    return (f.rule in rules and f.location.path == where.path and f.location.function == where.function
            and (where.line_contains is None or where.line_contains in f.location.source_line))


@pytest.fixture(scope="module")
def result():
    return audit_folder_static(REFERENCE)


def test_every_variant_has_a_static_expectation():
    assert set(VARIANT_CODE) == set(variants.BROKEN)


def test_reference_model_is_fully_audited(result):
    assert not result.not_audited, [n.reason for n in result.not_audited]


@pytest.mark.parametrize("variant", sorted(VARIANT_CODE))
def test_variant_reported_in_its_own_code(result, variant):
    rules = _rules_for(variant)
    for where in VARIANT_CODE[variant]:
        hits = [f for f in result.findings if _matches(f, rules, where)]
        assert hits, (f"leak undetected: {variant} ({sorted(rules)}) not reported in {where.path}:{where.function}; "
                      f"findings: {[(f.rule, f.location.path, f.location.function) for f in result.findings]}")
        f = hits[0]
        assert f.evidence and f.fix and f.location.source_line


def test_no_finding_outside_the_variants(result):
    expected = [(_rules_for(v), w) for v, places in VARIANT_CODE.items() for w in places]
    stray = [f for f in result.findings if not any(_matches(f, rules, w) for rules, w in expected)]
    assert stray == [], "false leak: " + "; ".join(
        f"{f.rule} at {f.location.path}:{f.location.line} in {f.location.function}: {f.message}" for f in stray)
    assert not [f for f in result.findings if f.location.path in LEGAL_FILES]


def test_one_finding_per_variant_site(result):
    """A shared helper (ttt.train_chunk, quantize.quantize_state_dict) is not reported a second time
    for what its caller did."""
    keys = [(f.rule, f.location.path, f.location.function) for f in result.findings]
    assert len(keys) == len(set(keys)), keys


# ---------------------------------------------------------------- calls across files, in small
HELPERS = CHUNK_HELPERS  # train_chunk and score_chunk, in a file of their own

TRAIN = '''import torch
from ttt_helpers import score_chunk, train_chunk
import ttt_helpers


def ttt_eval(model, tokens, opt, chunks):
    totals = torch.zeros(())
    for s, e in chunks:
        {first}
        {second}
    return totals


def main(model, opt, chunks):
    val_tokens = load_validation_tokens("fineweb_val_*.bin")
    print(f"val_loss:{{ttt_eval(model, val_tokens, opt, chunks).item()}}")


if __name__ == "__main__":
    main(None, None, [])
'''
SCORE = "score_chunk(model, tokens, s, e, totals)"
STEP = "ttt_helpers.train_chunk(model, opt, tokens, s, e)"


def _folder(tmp_path: Path, first: str, second: str) -> Path:
    (tmp_path / "ttt_helpers.py").write_text(HELPERS)
    (tmp_path / "train_gpt.py").write_text(TRAIN.format(first=first, second=second))
    return tmp_path


def test_helpers_in_another_file_train_first(tmp_path):
    result = audit_folder_static(_folder(tmp_path, STEP, SCORE))
    found = [(f.rule, f.location.path, f.location.function) for f in result.findings]
    assert found == [("train-before-score", "train_gpt.py", "ttt_eval")], found


def test_helpers_in_another_file_score_first(tmp_path):
    result = audit_folder_static(_folder(tmp_path, SCORE, STEP))
    assert result.findings == [], [(f.rule, f.location.path, f.message) for f in result.findings]


def test_calibration_results_handed_on_are_reported_once():
    from rules.val_data_in_training import _HESSIANS_HANDED_ON

    result = audit_source(_HESSIANS_HANDED_ON.code)
    assert [(f.rule, f.location.function) for f in result.findings] == [("val-data-in-training", "main")]
