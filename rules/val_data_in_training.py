"""GA004 val-data-in-training: validation tokens reaching training, weight averaging or
quantization calibration before the final eval."""
from __future__ import annotations

import re

import libcst as cst

from harness import dataflow as D
from harness.engine import ModuleContext, dotted
from harness.findings import Confidence, Layer, Severity
from harness.rule import Invalid, Rule, Valid

CALIBRATION = re.compile(r"hessian|calibrat|gptq|awq|collect_stats|quantiz|ema|swa|train_step|train_loop|"
                         r"fit|prefill|build_cache|ngram", re.I)

_GPTQ_ON_VAL = '''
def main(args, model):
    val_tokens = load_validation_tokens(args.val_files, args.train_seq_len)
    hessians = collect_hessians(model, val_tokens, n_samples=128)
    state = quantize_state_dict_gptq(model.state_dict(), hessians)
    return eval_val(model, val_tokens)
'''

_GPTQ_ON_TRAIN = '''
def main(args, model, train_loader):
    calib = train_loader.next_batch(131072, 2048)
    hessians = collect_hessians(model, calib, n_samples=128)
    state = quantize_state_dict_gptq(model.state_dict(), hessians)
    val_tokens = load_validation_tokens(args.val_files, args.train_seq_len)
    return eval_val(model, val_tokens)
'''


class ValDataInTraining(Rule):
    id = "GA004"
    name = "val-data-in-training"
    severity = Severity.HIGH
    confidence = Confidence.MEDIUM
    layers = (Layer.STATIC, Layer.TRACE)
    summary = ("Finds validation tokens (or their loader) passed to training, weight averaging, n-gram prefill or "
               "quantization calibration before the final eval.")
    why = ("README: 'You CANNOT access validation data during training'. Calibrating GPTQ Hessians on val_tokens, "
           "tuning on them or pre-filling a cache with them puts information about the graded text into the "
           "artifact before it is graded. Calibration on training data or self-generated text is fine.")
    example = _GPTQ_ON_VAL
    use_instead = _GPTQ_ON_TRAIN
    known_problems = ("Which callee trains or calibrates is judged by its name (hessian, calibrat, gptq, ema, swa, "
                      "prefill, ngram, train_step...); the dynamic layer sees the parameter writes themselves.")
    references = ("README: no access to validation data during training",
                  "rules.md: GPTQ calibration on val tokens is illegal; on training or generated data it is fine")
    fix = "Collect calibration statistics from training shards or self-generated text, never from val_tokens."

    VALID = [Valid(_GPTQ_ON_TRAIN, "calibration on training data")]
    INVALID = [Invalid(_GPTQ_ON_VAL, line=4, function="main", note="GPTQ Hessians on val_tokens")]

    def check_static(self, ctx: ModuleContext):
        taint = D.val_taint(ctx)
        reported: set[str] = set()
        for q, fn in ctx.functions.items():
            tainted = taint.get(q, set())
            if not tainted:
                continue
            for st in fn.stmts:
                for call in st.calls:
                    name = dotted(call.func).split(".")[-1]
                    if not CALIBRATION.search(name) or D.EVAL_FUNC.search(name):
                        continue
                    args = {n.value for a in call.args for n in D._names(a.value)}
                    hit = args & tainted
                    if not hit or not self._direct_val(call, hit, fn, ctx):
                        continue
                    if q in reported:
                        continue
                    reported.add(q)
                    yield self.finding(
                        Layer.STATIC,
                        f"{q}() passes validation data ({', '.join(sorted(hit))}) to {name}() before the final eval",
                        ctx.location(st.line, q),
                        [f"`{ctx.code(st.node)[:160]}`"],
                    )

    @staticmethod
    def _direct_val(call: cst.Call, hit: set[str], fn, ctx) -> bool:
        """The argument is the validation data itself, not a score computed from it."""
        for a in call.args:
            for n in D._names(a.value):
                if n.value in hit and not D.LOSS_NAME.search(n.value) and "bpb" not in n.value:
                    return True
        return False

    def judge(self, trace):
        from harness.dynamic.judging import judge_val_data_in_training

        return judge_val_data_in_training(self, trace)
