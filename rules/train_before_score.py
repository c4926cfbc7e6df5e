"""GA001 train-before-score: eval-time training on validation tokens that were not scored first."""
from __future__ import annotations

import libcst as cst

from harness import dataflow as D
from harness.engine import Function, ModuleContext, dotted
from harness.findings import Confidence, Layer, Severity
from harness.rule import Invalid, Rule, Valid
from harness.dynamic.judging import shared_trace_examples

_LEGAL_CHUNKED = '''
import torch
def eval_val_ttt(model, val_tokens, opt, chunks, seq_len):
    loss_sum = torch.zeros(())
    for ci, (s, e) in enumerate(chunks):
        x = val_tokens[s:e].view(-1, seq_len)
        y = val_tokens[s + 1:e + 1].view(-1, seq_len)
        with torch.inference_mode():
            nll = model(x, y)
        loss_sum += nll.sum()
        if ci < len(chunks) - 1:
            for epoch in range(3):
                loss = model(x, y)
                loss.backward()
                opt.step()
                opt.zero_grad()
    return loss_sum / len(chunks)
'''

_LEGAL_LORA = '''
import torch
def lora_eval(model, lora, val_tokens, docs, chunk):
    total_loss = 0.0
    for start, length in docs:
        lora.reset()
        opt = torch.optim.Adam(lora.parameters(), lr=1e-2)
        for c in range(0, length, chunk):
            x = val_tokens[start + c:start + c + chunk]
            y = val_tokens[start + c + 1:start + c + chunk + 1]
            per_token_loss = model(x, y, lora=lora)
            total_loss += per_token_loss.detach().sum().item()
            if c + chunk < length:
                per_token_loss.mean().backward()
                opt.step()
                opt.zero_grad()
    return total_loss
'''

_ADAPT_THEN_SCORE = '''
import torch
def eval_ttt(model, val_tokens, opt, chunks):
    loss_sum = 0.0
    for s, e in chunks:
        x, y = val_tokens[s:e], val_tokens[s + 1:e + 1]
        loss = model(x, y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            nll = model(x, y)
        loss_sum += nll.item()
    return loss_sum
'''

_LAST_EPOCH = '''
import torch
def lora_ttt_eval(model, lora, val_tokens, n_chunks, epochs):
    loss_sum = torch.zeros(())
    opt = torch.optim.Adam(lora.parameters(), lr=0.01)
    for epoch in range(epochs):
        for ci in range(n_chunks):
            x = val_tokens[ci * 256:(ci + 1) * 256]
            y = val_tokens[ci * 256 + 1:(ci + 1) * 256 + 1]
            per_token_loss = model(x, y, lora=lora)
            if epoch == epochs - 1:
                loss_sum += per_token_loss.detach().sum()
            if ci < n_chunks - 1:
                per_token_loss.mean().backward()
                opt.step()
    return loss_sum
'''

_PRE_QUANT = '''
import copy
import torch
def test_time_train(args, base_model, val_tokens):
    ttt_model = copy.deepcopy(base_model)
    opt = torch.optim.AdamW(ttt_model.parameters(), lr=args.ttt_lr)
    for epoch in range(args.ttt_epochs):
        epoch_loss = 0.0
        for i in range(0, val_tokens.numel() - 1025, 1024):
            x = val_tokens[i:i + 1024]
            y = val_tokens[i + 1:i + 1025]
            loss = ttt_model(x, y)
            loss.backward()
            opt.step()
            epoch_loss += loss.item()
        print(f"ttt:epoch loss={epoch_loss}")
    return eval_val_sliding(args, ttt_model, val_tokens)
'''

_MANUAL = '''
import torch
def adapt(model, val_tokens, lr):
    for i in range(0, len(val_tokens) - 65, 64):
        loss = model(val_tokens[i:i + 64], val_tokens[i + 1:i + 65])
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
    return eval_val(model, val_tokens)
'''


_MANUAL_SUB = '''
import torch
def adapt(model, val_tokens, lr):
    for i in range(0, len(val_tokens) - 65, 64):
        loss = model(val_tokens[i:i + 64], val_tokens[i + 1:i + 65])
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return eval_val(model, val_tokens)
'''

_ALIASED = '''
import torch
def ttt(model, val_tokens, chunks):
    base_opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    cur = base_opt
    total_nll = 0.0
    for s, e in chunks:
        x, y = val_tokens[s:e], val_tokens[s + 1:e + 1]
        loss = model(x, y)
        loss.backward()
        cur.step()
        cur.zero_grad()
        with torch.no_grad():
            nll = model(x, y)
        total_nll += nll.item()
    print(f"val_loss:{total_nll / len(chunks):.4f}")
'''


class TrainBeforeScore(Rule):
    id = "GA001"
    name = "train-before-score"
    severity = Severity.HIGH
    confidence = Confidence.MEDIUM
    layers = (Layer.STATIC, Layer.TRACE)
    summary = ("Finds eval-time gradient steps on validation tokens that run before those tokens' "
               "scores are recorded.")
    why = ("The challenge lets you train on validation tokens only after you have been graded on them "
           "(README: 'you are only allowed to test-time train on validation set tokens you've already "
           "evaluated your model on'). A step on an unscored token lets the weights memorise it before "
           "it is graded: adapt-then-score (PR #518, closed), multi-epoch TTT that scores only on its "
           "last epoch (PR #713 lora_ttt_eval), and fine-tuning on the whole validation stream before the "
           "final eval (\"pre-quant TTT\", PR #713 test_time_train) all report a score taken after the "
           "model saw the answers.")
    example = _LAST_EPOCH
    use_instead = _LEGAL_CHUNKED
    known_problems = ("Static analysis follows names, not values: a step hidden behind getattr of a "
                      "computed string, exec, or a hook may be missed — the dynamic layer (`--dynamic`) "
                      "proves the order from a traced run. A loss accumulated only for logging before a "
                      "step is not taken as a score unless it reaches the returned or printed result.")
    references = ("README of openai/parameter-golf: test-time training rule",
                  "PR #518 (closed by a maintainer: adapt-then-score)",
                  "PR #713 (lora_ttt_eval final-epoch scoring; test_time_train pre-quant TTT)",
                  "PR #461 / #549 (legal score-first chunked TTT)", "PR #77 (legal per-document LoRA TTT)")
    fix = ("Score each chunk first (under torch.inference_mode()/no_grad), add its loss to the reported "
           "sum, and only then train on it; never train on a chunk whose score is taken later, and "
           "never fine-tune on validation tokens before the final eval.")

    VALID = [
        Valid(_LEGAL_CHUNKED, "PR #461/#549: score chunk k, then train on it; last chunk never trained"),
        Valid(_LEGAL_LORA, "PR #77: per-document LoRA, score a chunk then step on it"),
        Valid(_ALIASED.replace("""        with torch.no_grad():
            nll = model(x, y)
        total_nll += nll.item()
""", """        total_nll += loss.item()
"""), "the loss recorded is the one computed before the step: score-first in value"),
        Valid('''
def train(model, opt, train_loader, steps):
    for step in range(steps):
        x, y = train_loader.next_batch()
        loss = model(x, y)
        loss.backward()
        opt.step()
''', "ordinary training on training data"),
    ]
    INVALID = [
        Invalid(_ADAPT_THEN_SCORE, line=9, function="eval_ttt", note="PR #518: train the chunk, then score it"),
        Invalid(_LAST_EPOCH, line=15, function="lora_ttt_eval", message_contains="epoch",
                note="PR #713: scores only on the final epoch"),
        Invalid(_PRE_QUANT, line=14, function="test_time_train", note="PR #713: pre-quant TTT"),
        Invalid(_MANUAL, line=9, function="adapt", note="manual p.data update"),
        Invalid(_MANUAL_SUB, line=9, function="adapt", note="`p -= lr * p.grad` under no_grad"),
        Invalid(_ALIASED, line=11, function="ttt", note="aliased optimizer, chunk re-scored after the step"),
    ]

    # ------------------------------------------------------------------ static
    def check_static(self, ctx: ModuleContext):
        taint = D.val_taint(ctx)
        # pass 1: each function on its own
        uncovered: dict[str, tuple[D.TrainEvent, list]] = {}
        for q, fn in ctx.functions.items():
            tainted = taint.get(q, set())
            if not tainted:
                continue
            # a training loop fed by a loader over validation shards is val-data-in-training's
            batches = D.val_loader_batches(ctx, fn, tainted)
            from_loader = D.tainted_names(ctx, fn, set(batches)) if batches else set()
            trains = [t for t in D.train_events(ctx, fn) if self._on_val(ctx, fn, t, tainted)
                      and not self._discarded(ctx, fn, t)
                      and not (from_loader and self._on_val(ctx, fn, t, from_loader))]
            if not trains:
                continue
            scores = self._scores(ctx, fn, tainted)
            miss = self._first_uncovered(trains, scores)
            if miss is not None:
                uncovered[q] = (miss, scores)
        # pass 2: a function that trains on data it is handed (phased/global TTT) is judged at its
        # call sites: legal when every caller recorded scores before handing the data over
        trainers = set(uncovered)
        by_name = {ctx.functions[q].name: q for q in trainers}
        call_sites: dict[str, list[bool]] = {q: [] for q in trainers}
        unscored_calls: dict[str, list] = {q: [] for q in trainers}
        for q, fn in ctx.functions.items():
            tainted = taint.get(q, set())
            calls = []
            for st in fn.stmts:
                for call in st.calls:
                    callee = by_name.get(dotted(call.func).split(".")[-1])
                    if callee and callee != q and {n.value for a in call.args for n in D._names(a.value)} & tainted:
                        calls.append((callee, D.TrainEvent(st, f"call to {ctx.functions[callee].name}(), which trains",
                                                           ctx.code(call)[:120])))
            if not calls:
                continue
            scores = self._scores(ctx, fn, tainted)
            for callee, ev in calls:
                # the caller chooses the data (e.g. "scored_docs"): it must have recorded scores
                # earlier in the same loop iteration; their guards may differ from the call's
                covered = any(self._precedes(s, ev) for s in scores)
                call_sites[callee].append(covered)
                if not covered:
                    # the callee's own finding stands; the call site is listed with it, not twice
                    unscored_calls[callee].append(ctx.location(ev.stmt.line, q))
        for q, (t, scores) in uncovered.items():
            sites = call_sites.get(q)
            if sites and all(sites):
                continue  # every caller scores first: legal score-first (phased) TTT
            f = self._finding(ctx, ctx.functions[q], t, scores, taint.get(q, set()))
            for loc in unscored_calls.get(q, [])[:5]:
                f.related.append(loc)
                f.evidence.append(f"called at line {loc.line} in {loc.function}() with validation data "
                                  "that the caller has not scored")
            yield f

    def _scores(self, ctx: ModuleContext, fn: Function, tainted: set[str]) -> list:
        reported = D.reported_names(ctx, fn)
        return [s for s in D.score_events(ctx, fn, tainted) if s.accumulator in reported]

    def _first_uncovered(self, trains, scores):
        for t in trains:
            if not any(self._covers(s, t) for s in scores):
                return t
        return None

    @staticmethod
    def _precedes(s: D.ScoreEvent, t: D.TrainEvent) -> bool:
        if t.stmt.loops and not (s.stmt.loops and s.stmt.loops[0] == t.stmt.loops[0]):
            return False
        return s.value_order < t.stmt.order

    @staticmethod
    def _discarded(ctx: ModuleContext, fn: Function, t: D.TrainEvent) -> bool:
        """A step on a throwaway object: the optimizer holds the parameters of a local built here
        (`wl = Adapter(...)`, `wo = AdamW(wl.parameters())`) that is deleted without ever reaching a
        score, e.g. a torch.compile warm-up. Its updates cannot change any reported number."""
        step = [c for c in t.stmt.calls if dotted(c.func).endswith(".step")]
        if t.what != "optimizer step" or not step or not isinstance(step[0].func, cst.Attribute):
            return False
        opt = D.base_name(step[0].func.value)
        ctor = next((st for st in fn.stmts if opt in st.writes and isinstance(st.node, cst.Assign)
                     and isinstance(st.node.value, cst.Call) and st.node.value.args), None)
        if ctor is None:
            return False
        first = ctor.node.value.args[0].value
        if not (isinstance(first, cst.Call) and dotted(first.func).endswith("parameters")):
            return False
        obj = D.base_name(first.func)
        made = next((st for st in fn.stmts if obj in st.writes and isinstance(st.node, cst.Assign)
                     and isinstance(st.node.value, cst.Call)), None)
        if obj is None or made is None or not D.OPTIMIZER_CTOR.search(ctx.resolve(dotted(ctor.node.value.func))):
            return False
        if not any(isinstance(st.node, cst.Del) and obj in st.reads for st in fn.stmts):
            return False
        if not D.ctor_keeps_no_model(ctx, made.node.value):
            return False
        all_names = set().union(*[st.reads for st in fn.stmts])
        score_orders = {s.stmt.order for s in D.score_events(ctx, fn, all_names)}
        for st in fn.stmts:
            if obj not in st.reads or st is made or st is ctor or isinstance(st.node, cst.Del):
                continue
            if isinstance(st.node, cst.Return) or st.order in score_orders:
                return False
            if any(D.EVAL_FUNC.search(dotted(c.func)) for c in st.calls):
                return False
            if isinstance(st.node, cst.Assign) and any(
                    isinstance(tg.target, (cst.Attribute, cst.Subscript)) for tg in st.node.targets):
                return False  # stored somewhere that outlives the loop
        return True

    @staticmethod
    def _on_val(ctx: ModuleContext, fn: Function, t: D.TrainEvent, tainted: set[str]) -> bool:
        outer = t.stmt.loops[0] if t.stmt.loops else None
        stretch = fn.loop_body(outer) if outer is not None else fn.stmts
        if D.backward_tainted(ctx, fn, tainted, stretch):
            return True
        return t.what == "manual parameter update" and bool(set(t.stmt.reads) & tainted)

    @staticmethod
    def _covers(s: D.ScoreEvent, t: D.TrainEvent) -> bool:
        common = 0
        for a, b in zip(s.stmt.loops, t.stmt.loops):
            if a != b:
                break
            common += 1
        if t.stmt.loops and common == 0:
            return False  # the score is in another loop: it does not grade this step's data first
        if s.value_order >= t.stmt.order and s.stmt.order >= t.stmt.order:
            return False
        return D.guard_cover(s.stmt, t.stmt)

    def _finding(self, ctx: ModuleContext, fn: Function, t: D.TrainEvent, scores, tainted):
        evidence = [f"{t.what} at line {t.stmt.line}: `{t.code}` on validation-derived data"]
        # the scores that matter are the ones inside the same loops as the step
        scores = sorted(scores, key=lambda s: -self._shared_loops(s, t))
        shared = [s for s in scores if self._shared_loops(s, t) > 0] or scores
        guarded = [s for s in shared if not D.guard_cover(s.stmt, t.stmt)]
        later = [s for s in shared if s.stmt.order > t.stmt.order and s.value_order > t.stmt.order]
        related = []
        if guarded:
            s = guarded[0]
            own = [g for g in s.stmt.guards
                   if (g.code, g.negated) not in {(x.code, x.negated) for x in t.stmt.guards}]
            conds = " and ".join(("not " if g.negated else "") + g.code for g in own)
            loop_vars = set().union(*[fn.loops[i].targets for i in s.stmt.loops]) if s.stmt.loops else set()
            on_loop = any(g.names & loop_vars for g in own)
            when = "on the final epoch/pass only" if on_loop else f"only when `{conds}`"
            evidence.append(f"{t.what} at line {t.stmt.line} (`{t.code}`) precedes scoring at line "
                            f"{s.stmt.line} (`{s.code}`), which runs {when} (`{conds}`): earlier "
                            "epochs/passes train on tokens whose score is taken afterwards")
            message = (f"{fn.qualname}() trains on validation tokens before they are scored: the score is "
                       f"recorded only when `{conds}`, after steps on the same tokens")
            related.append(ctx.location(s.stmt.line, fn.qualname))
        elif later:
            s = later[0]
            evidence.append(f"{t.what} at line {t.stmt.line} (`{t.code}`) precedes scoring of the same data "
                            f"at line {s.stmt.line}: `{s.code}`")
            message = f"{fn.qualname}() trains on each validation chunk and scores it afterwards (adapt-then-score)"
            related.append(ctx.location(s.stmt.line, fn.qualname))
        else:
            evals = [st for st in fn.stmts if st.order > t.stmt.order and
                     any(D.is_eval_call(ctx, c, tainted) for c in st.calls)]
            if evals:
                evidence.append(f"after training, line {evals[0].line} evaluates on the validation data: "
                                f"`{ctx.lines[evals[0].line - 1].strip()}`")
                message = (f"{fn.qualname}() fine-tunes on validation tokens before the eval that scores them "
                           "(pre-quant TTT)")
            else:
                message = f"{fn.qualname}() trains on validation tokens that it never scores first"
        loc = ctx.location(t.stmt.line, fn.qualname)
        return self.finding(Layer.STATIC, message, loc, evidence, related=related,
                            **ctx.reach_fields(fn.qualname, t.stmt))

    @staticmethod
    def _shared_loops(s: D.ScoreEvent, t: D.TrainEvent) -> int:
        n = 0
        for a, b in zip(s.stmt.loops, t.stmt.loops):
            if a != b:
                break
            n += 1
        return n

    # ------------------------------------------------------------------ dynamic
    # synthetic traces the judge is tested on (tests/test_rules_trace_examples.py)
    TRACE_VALID, TRACE_INVALID = shared_trace_examples("train-before-score")

    def judge(self, trace):
        from harness.dynamic.judging import judge_train_before_score

        return judge_train_before_score(self, trace)
