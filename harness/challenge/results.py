"""The result-line grammar: `<label> ... val_loss:X val_bpb:Y` lines, as the records print them.

One home for the grammar that both `golf-eval` (training logs, harness/evaluation/logs.py) and
the dynamic layer (a toy run's stdout -> trace.Reported) read.

Known labels include final_int8_zlib_roundtrip(_exact), final_int6_roundtrip(_exact),
final_sliding_window(_exact), final_int6_sliding_window(_s64)(_exact), ttt_final,
legal_ttt(_exact), final_ttt(_exact), quantized_ttt..., and training-time
`step:N/M val_loss:... val_bpb:...` lines (label "step:N/M"). The label is the text
before `val_loss` (after log decorations such as "[rank0]" or a timestamp), without key:value
details: "final_sliding_window_eval_exact stride:64 val_loss:..." -> "final_sliding_window_eval_exact",
"DIAGNOSTIC post_ema val_loss:..." -> "DIAGNOSTIC post_ema".
The number of printed decimals is kept: judges compare at that precision.
"""
from __future__ import annotations

import re


# A printed number; NaN and inf appear when a run diverges (the dynamic layer reports them).
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUM = r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
_LOSS = re.compile(r"\bval_loss\s*[:=]\s*" + _NUM)
_BPB = re.compile(r"\bval_bpb\s*[:=]\s*" + _NUM)
# Finite values only, not followed by a word or an f-string brace: training logs often begin with
# the script's own source (`f"val_loss:{val_loss:.4f}"`), which must not read as a result.
VAL_LOSS = re.compile(r"\bval_loss[:=]\s*(" + NUM + r")(?![\w{])")
VAL_BPB = re.compile(r"\bval_bpb[:=]\s*(" + NUM + r")(?![\w{])")
# leading log decorations: "[rank0]", "[12:00:01]", "2026-04-01", "12:00:01", "|", "INFO:"
_DECORATION = re.compile(r"^(\[.*\]|\d{4}-\d\d-\d\d.*|\d\d:\d\d(:\d\d)?[.,\d]*|\||-|INFO:?|rank\d+:?)$")


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text and "e" not in text.lower() else 0


def parse_line(line: str) -> tuple[str, float | None, float | None, int] | None:
    """(label, val_loss, val_bpb, decimals) for a result line, else None."""
    loss = _LOSS.search(line)
    bpb = _BPB.search(line)
    if bpb is None and loss is None:
        return None
    first = bpb or loss
    head = line[: (loss or bpb).start()]
    words = head.split()
    while words and _DECORATION.match(words[0]):
        words.pop(0)
    # "DIAGNOSTIC post_ema val_loss:..." -> "DIAGNOSTIC post_ema"; key:value words after the
    # first ("stride:64", "eval_time:...") are details, not part of the label.
    label_words = words[:1] + [w for w in words[1:] if ":" not in w and "=" not in w]
    label = " ".join(label_words) if label_words else "val"
    if label.startswith("val_bpb:") or label.startswith("val_loss:"):
        label = "val"
    decimals = _decimals(first.group(1))
    vl = float(loss.group(1)) if loss else None
    vb = float(bpb.group(1)) if bpb else None
    return label, vl, vb, decimals
