"""GA002 rescored-tokens: a token's score recorded more than once, the reported number taken from
a later pass or a selection over passes."""
from __future__ import annotations

import libcst as cst

from harness.static import dataflow as D
from harness.static import summaries as S
from harness.static.engine import Function, ModuleContext, dotted
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Invalid, Rule, Valid
from rules import _val_order_examples as X

_EVERY_EPOCH = '''
import torch
def ttt_eval(model, val_tokens, opt, epochs, chunks):
    for epoch in range(epochs):
        loss_sum = 0.0
        for s, e in chunks:
            x, y = val_tokens[s:e], val_tokens[s + 1:e + 1]
            with torch.no_grad():
                nll = model(x, y)
            loss_sum += nll.item()
            loss = model(x, y)
            loss.backward()
            opt.step()
    return loss_sum
'''

# min-NLL epoch selection, written two ways: a list of epoch totals, and a running best
_EPOCH_SELECT = '''
import torch
def ttt_eval(model, val_tokens, opt, epochs, chunks):
    {init}
    for epoch in range(epochs):
        total_loss = 0.0
        for s, e in chunks:
            x, y = val_tokens[s:e], val_tokens[s + 1:e + 1]
            loss = model(x, y)
            total_loss += loss.item()
            loss.backward()
            opt.step()
        {keep}
    return {result}
'''
_MIN_SELECT = _EPOCH_SELECT.format(init="epoch_losses = []", keep="epoch_losses.append(total_loss)",
                                   result="min(epoch_losses)")
_BEST_SO_FAR = _EPOCH_SELECT.format(init='best_loss = float("inf")', keep="best_loss = min(best_loss, total_loss)",
                                    result="best_loss")

_LEGAL = '''
import torch
def eval_val(model, val_tokens, chunks):
    loss_sum = 0.0
    for s, e in chunks:
        with torch.no_grad():
            loss = model(val_tokens[s:e], val_tokens[s + 1:e + 1])
        loss_sum += loss.item()
    return loss_sum / len(chunks)
'''


_FIRST_PASS_ONLY = '''
import torch
def ttt_eval(model, val_tokens, opt, epochs, chunks):
    loss_sum = 0.0
    for ci, (s, e) in enumerate(chunks):
        x, y = val_tokens[s:e], val_tokens[s + 1:e + 1]
        with torch.inference_mode():
            nll = model(x, y)
        loss_sum += nll.item()
        for epoch in range(epochs):
            loss = model(x, y)
            loss.backward()
            opt.step()
    return loss_sum
'''


# scores kept per position across epochs through a scoring helper, the lowest one reported
_HELPER_MIN_PER_POSITION = '''
import math
import torch
def score_chunk(model, tokens, start, end, totals):
    with torch.inference_mode():
        nll = model(tokens[start:end], tokens[start + 1:end + 1])
    totals += nll.sum()
    return torch.arange(start + 1, end + 1), nll

def train_chunk(model, opt, tokens, start, end):
    loss = model(tokens[start:end], tokens[start + 1:end + 1]).mean()
    loss.backward()
    opt.step()

def ttt_eval(model, val_tokens, opt, chunks, epochs):
    best = {}
    for epoch in range(epochs):
        epoch_totals = torch.zeros(())
        for s, e in chunks:
            positions, nll = score_chunk(model, val_tokens, s, e, epoch_totals)
            for p, v in zip(positions.tolist(), nll.tolist()):
                best[p] = min(v, best.get(p, math.inf))
            train_chunk(model, opt, val_tokens, s, e)
        print(f"epoch {epoch} val_loss:{epoch_totals.item()}")
    return sum(best.values())
'''

_HELPER_SCORED_ONCE = _HELPER_MIN_PER_POSITION.split("def ttt_eval")[0] + '''def ttt_eval(model, val_tokens, opt, chunks, epochs):
    totals = torch.zeros(())
    for s, e in chunks:
        positions, nll = score_chunk(model, val_tokens, s, e, totals)
        for epoch in range(epochs):
            train_chunk(model, opt, val_tokens, s, e)
    return totals
'''


class RescoredTokens(Rule):
    id = "GA002"
    name = "rescored-tokens"
    severity = Severity.HIGH
    confidence = Confidence.MEDIUM
    layers = (Layer.STATIC, Layer.TRACE)
    refuted_by = ("score",)
    summary = "Finds evals that score the same validation tokens in several passes and report a later or the best pass."
    why = ("A token's first score is its only legal score. Scoring every epoch of a TTT loop and reporting the "
           "last epoch, or the minimum over epochs, reports a number taken after the weights trained on those "
           "very tokens (score-every-epoch, min-NLL epoch selection: PRs #614 and #642 were closed for it).")
    example = _MIN_SELECT
    use_instead = _LEGAL
    known_problems = ("A diagnostic second pass that is printed but not reported is still flagged when its result "
                      "is returned; the dynamic layer matches the printed number to the pass it came from.")
    references = ("PR #614 (closed: score-every-epoch)", "PR #642 (closed: min-NLL epoch selection)",
                  "README: test-time training on already-evaluated tokens only")
    fix = "Record each token's score once, in the first pass, and report the sum of those first scores."

    VALID = [Valid(_LEGAL, "one pass, each token scored once"),
             Valid(_FIRST_PASS_ONLY, "multi-epoch TTT on already-scored chunks, scored once in the first pass"),
             Valid(_HELPER_SCORED_ONCE, "scoring helper called once per chunk, then several epochs on the scored chunk")]
    INVALID = [
        Invalid(_EVERY_EPOCH, line=10, function="ttt_eval", note="accumulator reset every epoch: last epoch reported"),
        Invalid(_MIN_SELECT, line=14, function="ttt_eval", message_contains="min", note="min over epochs"),
        Invalid(_BEST_SO_FAR, line=13, function="ttt_eval", message_contains="min", note="running best over epochs"),
        Invalid(_HELPER_MIN_PER_POSITION, line=22, function="ttt_eval", message_contains="min",
                note="helpers score every epoch; each position keeps its lowest NLL"),
    ]

    def check_static(self, ctx: ModuleContext):
        taint = D.val_taint(ctx)
        for q, fn in ctx.functions.items():
            tainted = taint.get(q, set())
            if not tainted:
                continue
            f = self._check(ctx, fn, tainted)
            if f is not None:
                yield f

    def _check(self, ctx: ModuleContext, fn: Function, tainted: set[str]):
        reported = D.reported_names(ctx, fn)
        scores = [s for s in S.score_events(ctx, fn, tainted) if s.accumulator in reported]
        if not scores:
            return None
        trains = S.train_events(ctx, fn)
        for s in scores:
            for loop_id in s.stmt.loops[:-1] or ():
                loop = fn.loops[loop_id]
                # the score runs in every iteration of an outer loop (no guard on its variable)...
                if any(g.names & loop.targets for g in s.stmt.guards):
                    continue
                inner = [x for x in s.stmt.loops if x != loop_id and fn.loops[x].start > loop.start]
                if not inner:
                    continue
                body = fn.loop_body(loop_id)
                # ...over the same data again after training on it
                if not any(t.stmt.loops and loop_id in t.stmt.loops for t in trains):
                    continue
                reset = [st for st in body if s.accumulator in st.writes and isinstance(st.node, cst.Assign)
                         and st.loops[-1] == loop_id]
                select = self._selection(ctx, fn, loop_id)
                if select is not None:
                    return self.finding(Layer.STATIC,
                                        f"{fn.qualname}() scores the validation tokens in every pass of the loop at "
                                        f"line {loop.line} and reports a selection over passes (min/max)",
                                        ctx.location(select.line, fn.qualname),
                                        [f"score recorded at line {s.stmt.line}: `{s.code}` in every iteration",
                                         f"selection at line {select.line}: `{ctx.lines[select.line - 1].strip()}`"],
                                        **ctx.reach_fields(fn.qualname, s.stmt))
                if reset:
                    return self.finding(Layer.STATIC,
                                        f"{fn.qualname}() re-scores the validation tokens in every pass of the loop at "
                                        f"line {loop.line}; the reported sum is the last pass's, taken after training "
                                        "on them",
                                        ctx.location(s.stmt.line, fn.qualname),
                                        [f"`{s.accumulator}` reset at line {reset[0].line} each pass",
                                         f"score recorded at line {s.stmt.line}: `{s.code}`"],
                                        **ctx.reach_fields(fn.qualname, s.stmt))
        return None

    @staticmethod
    def _selection(ctx: ModuleContext, fn: Function, loop_id: int):
        """`min(per_pass_losses)` over a list filled once per pass, or `best = min(best, loss)`."""
        loop = fn.loops[loop_id]
        losses = set(D.loss_names(ctx, fn))
        # values read out of a pass's scores: `for p, v in zip(positions, nll.tolist())`
        from_losses = D.tainted_names(ctx, fn, losses)
        per_pass = set()
        for st in fn.loop_body(loop_id):
            for call in st.calls:
                if isinstance(call.func, cst.Attribute) and call.func.attr.value == "append":
                    if {n.value for a in call.args for n in D._names(a.value)} & losses:
                        per_pass.add(D.base_name(call.func.value))
        for st in fn.stmts:
            if st.order < loop.start:
                continue
            for call in st.calls:
                if dotted(call.func) not in ("min", "max", "sorted", "np.min", "torch.min", "numpy.min", "np.argmin"):
                    continue
                args = [{n.value for n in D._names(a.value)} for a in call.args]
                if any(a & per_pass for a in args):
                    return st
                if len(args) == 2 and all(a & losses for a in args) and st.writes & (args[0] | args[1]):
                    return st
                # a running selection kept per position: `best[p] = min(v, best.get(p, inf))`
                mentioned = set().union(*args) if args else set()
                if st.loops and loop_id in st.loops and st.writes & mentioned and mentioned & from_losses - st.writes:
                    return st
        return None

    # synthetic traces the judge is tested on (tests/test_rules_trace_examples.py)
    TRACE_VALID = X.legal_orders() + [
        X.example(X.last_epoch, "adapt-then-score is not a re-score (train-before-score)"),
    ]
    TRACE_INVALID = [
        X.example(X.every_epoch, "score every epoch, print the last", "eval_ttt", 40),
    ]

    def judge(self, trace):
        """Inside one evaluation pass a position was scored again. Reported only when a printed
        number comes from the repeated scores (re-scores nothing prints from are not a reported
        score: e.g. a training loss logged with .item()). High: the printed number uses scores
        taken after the model trained on those tokens (last, minimum, or all of them). Low: the
        printed number counts positions twice with no training between (the tail window of a
        sliding eval), or re-scores exist but the printed number is the first scores."""
        from harness.dynamic.judge.locations import function_of, location, where
        from harness.dynamic.judge.passes import first_score_event, rescored_passes
        from harness.dynamic.judge.positions import describe_positions, mask_positions
        from harness.dynamic.judge.reported import pass_numbers, report_for_pass

        for p in rescored_passes(trace):
            matches = report_for_pass(trace, p)
            adapted = [m for m in matches if m.which in ("last", "min", "all") and p.rescored_mask]
            doubled = [m for m in matches if m.which == "all" and not p.rescored_mask]
            proper = [m for m in matches if m.which == "first"]
            if adapted:
                severity, mask, what = Severity.HIGH, p.rescored_mask, "after training on them"
            elif doubled:
                severity, mask, what = Severity.LOW, p.dup_mask, "a second time (no training between)"
            elif proper and p.rescored_mask:
                severity, mask, what = Severity.LOW, p.rescored_mask, "after training on them (unused)"
            else:
                continue
            pos = mask_positions(mask)
            again_idx = p.later_event[pos]
            again_idx = again_idx[again_idx >= 0]
            second = p.events[int(again_idx.min())] if len(again_idx) else p.events[-1]
            first = first_score_event(trace, p, pos)
            nums = pass_numbers(trace, p)
            ev = [
                f"{len(pos)} positions scored {what} in {p.label()}: {describe_positions(pos)}",
                f"first score at {where(first.frame if first else None)}; scored again at "
                f"{where(second.frame)} (loss op {second.loss_op})",
                "mean NLL of that pass: " + ", ".join(f"{w} scores {v:.6f}" for w, v in nums.loss.items()),
            ]
            for m in matches:
                ev.append(f"printed '{m.reported.label}' = the {m.which} scores: {m.reported.line.strip()}")
            used = (adapted or doubled or proper)[0]
            f = self.finding(
                Layer.TRACE,
                f"{function_of(second.frame)}() scores validation tokens {what}; the printed "
                f"'{used.reported.label}' uses the {used.which} scores",
                location(trace, second.frame),
                evidence=ev,
                related=[location(trace, first.frame)] if first is not None and first.frame else [],
                confidence=Confidence.HIGH,
            )
            f.severity = severity
            yield f
