"""The reference model as a submission folder, for the dynamic harness: which folder to run,
with which environment, for each legal eval mode and each broken variant."""
from __future__ import annotations

from pathlib import Path

from .hyperparams import BROKEN_NAMES, EVAL_MODES

LEGAL_MODES = list(EVAL_MODES)
BROKEN = list(BROKEN_NAMES)
# The eval mode in which each broken variant shows.
BROKEN_MODE = {
    "train-before-score": "ttt-sgd",
    "train-before-score-multi-epoch": "ttt-sgd",
    "rescored-tokens": "ttt-sgd",
    "val-data-in-training": "standard",
    "val-data-in-training-calibration": "standard",
    "hash-key-reads-target": "standard",
    "improper-distribution": "sliding",
}
# The golf-audit rule each variant breaks (several variants share a rule).
EXPECTED_RULE = {
    "train-before-score": "train-before-score",
    "train-before-score-multi-epoch": "train-before-score",
    "rescored-tokens": "rescored-tokens",
    "val-data-in-training": "val-data-in-training",
    "val-data-in-training-calibration": "val-data-in-training",
    "hash-key-reads-target": "hash-key-reads-target",
    "improper-distribution": "improper-distribution",
}
# What the dynamic layer (static off) may name instead: pre-quant TTT after the training loop's
# own validation pass trains on tokens that were scored once already but whose final score comes
# after, which the trace names train-before-score (as for PR #713's test_time_train).
DYNAMIC_ALSO = {
    "val-data-in-training": {"train-before-score"},
}


def folder() -> str:
    """The folder holding train_gpt.py (this package's own folder)."""
    return str(Path(__file__).resolve().parent)


def env(mode: str | None = None, broken: str | None = None) -> dict[str, str]:
    """Environment for one run: a legal eval mode, or a broken variant in the mode it shows in."""
    if broken is not None and broken not in BROKEN_NAMES:
        raise ValueError(f"unknown broken variant {broken!r}")
    if mode is not None and mode not in EVAL_MODES:
        raise ValueError(f"unknown eval mode {mode!r}")
    return {"EVAL_MODE": mode or (BROKEN_MODE[broken] if broken else "all"), "BROKEN": broken or "",
            "TTT_ENABLED": "1"}
