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

_EVERY_EPOCH = Invalid('''
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
''', line=10, function="ttt_eval", note="accumulator reset every epoch: last epoch reported")

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
_MIN_SELECT = Invalid(_EPOCH_SELECT.format(init="epoch_losses = []", keep="epoch_losses.append(total_loss)",
                                   result="min(epoch_losses)"), line=14, function="ttt_eval", message_contains="min",
    note="min over epochs")
_BEST_SO_FAR = Invalid(_EPOCH_SELECT.format(init='best_loss = float("inf")', keep="best_loss = min(best_loss, total_loss)",
                                    result="best_loss"), line=13, function="ttt_eval", message_contains="min",
    note="running best over epochs")

_LEGAL = Valid('''
import torch
def eval_val(model, val_tokens, chunks):
    loss_sum = 0.0
    for s, e in chunks:
        with torch.no_grad():
            loss = model(val_tokens[s:e], val_tokens[s + 1:e + 1])
        loss_sum += loss.item()
    return loss_sum / len(chunks)
''', "one pass, each token scored once")


_FIRST_PASS_ONLY = Valid('''
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
''', "multi-epoch TTT on already-scored chunks, scored once in the first pass")


# scores kept per position across epochs through a scoring helper, the lowest one reported
_HELPER_MIN_PER_POSITION = Invalid('''
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
''', line=22, function="ttt_eval", message_contains="min",
    note="helpers score every epoch; each position keeps its lowest NLL")

_HELPER_SCORED_ONCE = Valid(_HELPER_MIN_PER_POSITION.code.split("def ttt_eval")[0] + '''def ttt_eval(model, val_tokens, opt, chunks, epochs):
    totals = torch.zeros(())
    for s, e in chunks:
        positions, nll = score_chunk(model, val_tokens, s, e, totals)
        for epoch in range(epochs):
            train_chunk(model, opt, val_tokens, s, e)
    return totals
''', "scoring helper called once per chunk, then several epochs on the scored chunk")


# per-token oracle between two experts: each position keeps whichever score is lower on its own target
_ORACLE_IF = Invalid('''
import math
import torch
import torch.nn.functional as F
def eval_mix(model, val_tokens, cache_logprob, lam):
    loss_sum = 0.0
    x, y = val_tokens[:-1], val_tokens[1:]
    with torch.no_grad():
        log_sm = F.log_softmax(model(x), dim=-1)
    scored_nll = -log_sm.gather(-1, y[:, None]).squeeze(-1)
    for t in range(len(y)):
        cache_lp = cache_logprob(x[: t + 1], y[t])
        mixed_nll = -math.log((1 - lam) * math.exp(-scored_nll[t].item()) + lam * math.exp(cache_lp))
        old_nll = scored_nll[t].item()
        if mixed_nll < old_nll:
            scored_nll[t] = mixed_nll
    loss_sum += scored_nll.sum().item()
    return loss_sum / len(y)
''', line=16, function="eval_mix", message_contains="oracle",
    note="PR #659: `if new_nll < old_nll: scored_nll[t] = new_nll` (mixture kept only where it wins)")

_ORACLE_ELEMENTWISE = Invalid('''
import torch
import torch.nn.functional as F
def eval_two_models(model_a, model_b, val_tokens):
    x, y = val_tokens[:-1], val_tokens[1:]
    with torch.no_grad():
        nll_a = F.cross_entropy(model_a(x), y, reduction="none")
        nll_b = F.cross_entropy(model_b(x), y, reduction="none")
    best = torch.minimum(nll_a, nll_b)
    val_loss = best.mean().item()
    print(f"val_loss:{val_loss:.4f}")
    return val_loss
''', line=9, function="eval_two_models", message_contains="oracle",
    note="torch.minimum of two experts' per-token NLL")

_ORACLE_STACK = Invalid('''
import torch
import torch.nn.functional as F
def eval_experts(models, val_tokens):
    x, y = val_tokens[:-1], val_tokens[1:]
    with torch.no_grad():
        nlls = [F.cross_entropy(m(x), y, reduction="none") for m in models]
    per_token = torch.stack(nlls).min(dim=0).values
    return per_token.mean().item()
''', line=8, function="eval_experts", message_contains="oracle", note="min over a stack of experts' per-token NLL")

# legal: a fixed mixture of both experts (no choice by the target's loss), and a gate chosen from the
# prefix (the model's own confidence), not from which expert scored the target better
_MIXED_NOT_CHOSEN = Valid(_ORACLE_IF.code.replace('''        old_nll = scored_nll[t].item()
        if mixed_nll < old_nll:
            scored_nll[t] = mixed_nll
''', '''        scored_nll[t] = mixed_nll
'''), "every position takes the mixture, whichever expert did better")

# legal: log-sum-exp of a fixed two-expert mixture, shifted by the larger log-probability
_LOGSUMEXP_MIX = Valid('''
import numpy as np
def mix_nll(model_lp, ngram_lp, w=0.3):
    max_lp = np.maximum(model_lp, ngram_lp)
    mix_lp = max_lp + np.log((1 - w) * np.exp(model_lp - max_lp) + w * np.exp(ngram_lp - max_lp))
    loss_sum = float(-mix_lp.sum())
    return loss_sum
''', "np.maximum of two log-probabilities as the log-sum-exp shift of a fixed mixture")

_GATE_FROM_PREFIX = Valid('''
import torch
import torch.nn.functional as F
def eval_two_models(model_a, model_b, val_tokens):
    x, y = val_tokens[:-1], val_tokens[1:]
    with torch.no_grad():
        lp_a = F.log_softmax(model_a(x), dim=-1)
        lp_b = F.log_softmax(model_b(x), dim=-1)
    ent_a = -(lp_a.exp() * lp_a).sum(-1)
    ent_b = -(lp_b.exp() * lp_b).sum(-1)
    nll_a = -lp_a.gather(-1, y[:, None]).squeeze(-1)
    nll_b = -lp_b.gather(-1, y[:, None]).squeeze(-1)
    per_token = torch.where(ent_a < ent_b, nll_a, nll_b)
    val_loss = per_token.mean().item()
    print(f"val_loss:{val_loss:.4f}")
    return val_loss
''', "expert chosen per token by the prefix (entropy), not by the target's loss")

# lower of two losses; a max of two log-probabilities is how log-sum-exp mixtures are written
# (`m = np.maximum(lp_a, lp_b); m + log(w_a exp(lp_a - m) + w_b exp(lp_b - m))`), so max is not read
# a whole-tensor minimum (a pruning threshold) next to per-token losses: no choice per token
_THRESHOLD_MIN = Valid('''
import torch
import torch.nn.functional as F
def eval_pruned(model, val_tokens, k):
    x, y = val_tokens[:-1], val_tokens[1:]
    norms = torch.stack([p.norm() for p in model.parameters()])
    thresh = torch.topk(norms.flatten(), k).values.min()
    with torch.no_grad():
        nll = F.cross_entropy(model(x), y, reduction="none")
    per_token = nll.min() + nll - nll.min()
    return per_token.mean().item(), thresh
''', "`.values.min()` with no dim: a whole-tensor threshold (PR #1867 crashed the check)")

_ELEMENTWISE = ("minimum", "fmin")
_REDUCE = ("min", "amin")


class RescoredTokens(Rule, id="GA002", name="rescored-tokens",
                     severity=Severity.HIGH, confidence=Confidence.MEDIUM, layers=(Layer.STATIC, Layer.TRACE)):
    refuted_by = ("score",)
    summary = "Finds evals that score the same validation tokens in several passes and report a later or the best pass."
    why = ("A token's first score is its only legal score. Scoring every epoch of a TTT loop and reporting the "
           "last epoch, or the minimum over epochs, reports a number taken after the weights trained on those "
           "very tokens (score-every-epoch, min-NLL epoch selection: PRs #614 and #642 were closed for it). "
           "Scoring each token with two predictors and keeping the lower loss is the same selection per token: "
           "the choice looks at the target, so the kept probabilities are no distribution (PR #659).")
    example = _MIN_SELECT.code
    use_instead = _LEGAL.code
    known_problems = ("A diagnostic second pass that is printed but not reported is still flagged when its result "
                      "is returned; the dynamic layer matches the printed number to the pass it came from. The "
                      "per-token oracle check needs both compared values to be loss values (names computed from a "
                      "loss, log_softmax or cross_entropy) and the kept value to reach what the function reports; "
                      "an oracle over log-probabilities written as `torch.maximum(lp_a, lp_b)` is not reported "
                      "(max of log-probabilities is also how log-sum-exp mixtures are written).")
    references = ("PR #614 (closed: score-every-epoch)", "PR #642 (closed: min-NLL epoch selection)",
                  "PR #659 (per-token `if new_nll < old_nll: scored_nll[t] = new_nll` between the model and an n-gram mix)",
                  "README: test-time training on already-evaluated tokens only")
    fix = "Record each token's score once, in the first pass, and report the sum of those first scores."

    VALID = [_LEGAL, _MIXED_NOT_CHOSEN, _THRESHOLD_MIN, _GATE_FROM_PREFIX, _LOGSUMEXP_MIX, _FIRST_PASS_ONLY,
             _HELPER_SCORED_ONCE]
    INVALID = [_EVERY_EPOCH, _MIN_SELECT, _BEST_SO_FAR, _HELPER_MIN_PER_POSITION, _ORACLE_IF,
               _ORACLE_ELEMENTWISE, _ORACLE_STACK]

    def check_static(self, ctx: ModuleContext):
        taint = D.val_taint(ctx)
        for q, fn in ctx.functions.items():
            tainted = taint.get(q, set())
            f = self._check(ctx, fn, tainted) if tainted else None
            if f is not None:
                yield f
            oracle = self._oracle(ctx, fn)
            # a selection over passes already reported at that line is the same violation
            if oracle is not None and (f is None or f.location.line != oracle.location.line):
                yield oracle

    # ------------------------------------------------------------------ per-token oracle
    def _oracle(self, ctx: ModuleContext, fn: Function):
        """Per position, the lower of two scores of the same target kept: `if a < b: s[t] = a`,
        `torch.minimum(a, b)`, `torch.where(a < b, a, b)`, `stack([a, b]).min(0)`, where a and b
        are both loss values (their own expert's or pass's NLL of the target) and the kept value
        reaches what the function reports. Choosing by the target's own loss is an oracle: the
        reported code length is shorter than any single predictor's, and no distribution gives it."""
        losses = set(D.loss_names(ctx, fn))
        if len(losses) < 1:
            return None
        lossy = D.tainted_names(ctx, fn, losses)
        reported = None
        for st in fn.stmts:
            node = st.node
            if not isinstance(node, cst.Assign) or len(node.targets) != 1:
                continue
            hit = self._oracle_shape(ctx, st, node, lossy)
            if hit is None:
                continue
            if reported is None:
                reported = D.reported_names(ctx, fn)
            if not st.writes & reported:
                continue
            a, b, how = hit
            return self.static_finding(
                ctx, st.line, fn.qualname,
                f"{fn.qualname}() keeps, per token, the lower of two scores of the same target ({how}): an "
                "oracle choice between predictors by their loss on the token itself",
                [f"`{ctx.code(node)[:160]}`",
                 f"both compared values are losses of the target: `{ctx.code(a)[:80]}` and `{ctx.code(b)[:80]}`",
                 "the reported score sums the kept values: each token gets whichever predictor was right about "
                 "it, which no single probability distribution over the vocabulary gives"],
                fix="Score every token with one predictor fixed before its target is seen: a mixture with "
                    "weights from the prefix (confidence, entropy), never the lower of two losses.",
                **ctx.reach_fields(fn.qualname, st),
            )
        return None

    @staticmethod
    def _both_lossy(a, b, lossy: set[str]) -> bool:
        na = {n.value for n in D._names(a)}
        nb = {n.value for n in D._names(b)}
        return bool(na & lossy) and bool(nb & lossy) and na != nb

    def _oracle_shape(self, ctx: ModuleContext, st, node: cst.Assign, lossy: set[str]):
        """(a, b, how) when the assignment keeps the lower/higher of two loss values."""
        target, value = node.targets[0].target, node.value
        # `if a < b: s[t] = a` -- a per-position write guarded by comparing two losses
        if isinstance(target, cst.Subscript):
            written = {n.value for n in D._names(value)}
            for g in st.guards:
                cmp = g.node
                if not isinstance(cmp, cst.Comparison) or len(cmp.comparisons) != 1:
                    continue
                op = cmp.comparisons[0].operator
                if not isinstance(op, (cst.LessThan, cst.GreaterThan, cst.LessThanEqual, cst.GreaterThanEqual)):
                    continue
                a, b = cmp.left, cmp.comparisons[0].comparator
                if not self._both_lossy(a, b, lossy):
                    continue
                sides = [{n.value for n in D._names(x)} for x in (a, b)]
                if written and any(written <= side for side in sides):
                    return a, b, f"`if {ctx.code(cmp)}` around the write"
        if isinstance(value, cst.Call):
            name = dotted(value.func).split(".")[-1]
            args = [x.value for x in value.args if x.keyword is None and not x.star]
            # torch.minimum(a, b) / np.fmin(a, b); min(a, b) on per-position values
            if name in _ELEMENTWISE + ("min",) and len(args) == 2 and self._both_lossy(args[0], args[1], lossy):
                if name != "min" or isinstance(target, cst.Subscript):
                    return args[0], args[1], f"`{name}(...)`"
            # torch.where(a < b, a, b)
            if name == "where" and len(args) == 3 and isinstance(args[0], cst.Comparison) \
                    and len(args[0].comparisons) == 1:
                a, b = args[0].left, args[0].comparisons[0].comparator
                picks = {ctx.code(args[1]), ctx.code(args[2])}
                if picks == {ctx.code(a), ctx.code(b)} and self._both_lossy(a, b, lossy):
                    return a, b, "`where(a < b, a, b)`"
        # torch.stack([a, b]).min(dim=0) / np.min(np.stack([a, b]), axis=0)
        inner = value
        while isinstance(inner, cst.Attribute) or (isinstance(inner, cst.Call) and isinstance(inner.func, cst.Attribute)
                                                   and inner.func.attr.value in ("values", "indices")):
            inner = inner.func.value if isinstance(inner, cst.Call) else inner.value
        if isinstance(inner, cst.Call) and isinstance(inner.func, cst.Attribute) and inner.func.attr.value in _REDUCE:
            stacked = inner.func.value
        elif isinstance(inner, cst.Call) and dotted(inner.func).split(".")[-1] in _REDUCE and inner.args \
                and dotted(inner.func) not in ("min", "max"):
            stacked = inner.args[0].value
        else:
            return None
        # a reduction over a dimension: `dim=`/`axis=`, or a positional argument after the input
        # (`x.min()` of a method call has none: a whole-tensor minimum, no per-token choice)
        first = 1 if inner.args and stacked is inner.args[0].value else 0
        has_dim = any(x.keyword is not None and x.keyword.value in ("dim", "axis") for x in inner.args) or \
            any(x.keyword is None for x in inner.args[first:])
        if not has_dim or not isinstance(stacked, cst.Call) or \
                dotted(stacked.func).split(".")[-1] not in ("stack", "vstack", "cat", "concatenate") or not stacked.args:
            return None
        items = stacked.args[0].value
        if isinstance(items, (cst.List, cst.Tuple)) and len(items.elements) >= 2:
            a, b = items.elements[0].value, items.elements[1].value
            if self._both_lossy(a, b, lossy):
                return a, b, "a min/max over a stack of per-token losses"
        elif isinstance(items, (cst.Name, cst.ListComp)):
            names = {n.value for n in D._names(items)}
            if names & lossy:
                return items, items, "a min/max over a stack of per-token losses"
        return None

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
                    return self.static_finding(
                        ctx, select.line, fn.qualname,
                        f"{fn.qualname}() scores the validation tokens in every pass of the loop at "
                        f"line {loop.line} and reports a selection over passes (min/max)",
                        [f"score recorded at line {s.stmt.line}: `{s.code}` in every iteration",
                         f"selection at line {select.line}: `{ctx.lines[select.line - 1].strip()}`"],
                        **ctx.reach_fields(fn.qualname, s.stmt))
                if reset:
                    return self.static_finding(
                        ctx, s.stmt.line, fn.qualname,
                        f"{fn.qualname}() re-scores the validation tokens in every pass of the loop at "
                        f"line {loop.line}; the reported sum is the last pass's, taken after training "
                        "on them",
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
            f = self.trace_finding(
                Layer.TRACE, trace, second.frame,
                f"{function_of(second.frame)}() scores validation tokens {what}; the printed "
                f"'{used.reported.label}' uses the {used.which} scores",
                evidence=ev,
                related=[location(trace, first.frame)] if first is not None and first.frame else [],
                confidence=Confidence.HIGH,
            )
            f.severity = severity
            yield f
