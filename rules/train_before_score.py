"""GA001 train-before-score: eval-time training on validation tokens that were not scored first."""
from __future__ import annotations

import libcst as cst

from dataclasses import dataclass, field

from harness.static import dataflow as D
from harness.static import summaries as S
from harness.static.engine import Function, ModuleContext, dotted
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Invalid, Rule, Valid
from rules import _val_order_examples as X

_LEGAL_CHUNKED = Valid('''
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
''', "PR #461/#549: score chunk k, then train on it; last chunk never trained")

_LEGAL_LORA = Valid('''
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
''', "PR #77: per-document LoRA, score a chunk then step on it")

def adapt_then_score(name: str = "eval_ttt") -> str:
    """The adapt-then-score loop of PR #518 as a function `name`: each chunk is trained on
    (`opt.step()`, the body's sixth line) before it is scored (`nll = model(x, y)`, the ninth).
    The tests build their own cases around it too."""
    return f'''def {name}(model, val_tokens, opt, chunks):
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


_ADAPT_THEN_SCORE = Invalid("\nimport torch\n" + adapt_then_score(), line=9, function="eval_ttt",
    note="PR #518: train the chunk, then score it")

_LAST_EPOCH = Invalid('''
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
''', line=15, function="lora_ttt_eval", message_contains="epoch", note="PR #713: scores only on the final epoch")

_PRE_QUANT = Invalid('''
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
''', line=14, function="test_time_train", note="PR #713: pre-quant TTT")

_MANUAL = Invalid('''
import torch
def adapt(model, val_tokens, lr):
    for i in range(0, len(val_tokens) - 65, 64):
        loss = model(val_tokens[i:i + 64], val_tokens[i + 1:i + 65])
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
    return eval_val(model, val_tokens)
''', line=9, function="adapt", note="manual p.data update")


# the same loop, the update written as an in-place subtraction
_MANUAL_SUB = Invalid(_MANUAL.code.replace("p.data.add_(p.grad, alpha=-lr)", "p -= lr * p.grad"), line=9, function="adapt",
    note="`p -= lr * p.grad` under no_grad")

# adapt-then-score, its step taken through an alias of the optimizer
_ALIASED = Invalid("import torch\n" + adapt_then_score("ttt").replace("    loss_sum = 0.0\n", "    cur = opt\n    loss_sum = 0.0\n")
                   .replace("opt.step()", "cur.step()"), line=9, function="ttt",
    note="aliased optimizer, chunk re-scored after the step")


@dataclass
class _Judged:
    """A function with training steps on validation data that no earlier score covers."""

    ctx: ModuleContext
    fn: Function
    missing: list  # the uncovered steps (TrainEvent), in order
    scores: list  # its scores (ScoreEvent)
    tainted: set[str]
    sites: list = field(default_factory=list)  # (CallSite, caller scored first, caller judges the call)


# The order lives in one function, the steps and the scores in helpers it calls (the tests
# build their cross-file cases on these helpers too).
CHUNK_HELPERS = '''
import torch
def train_chunk(model, opt, tokens, start, end):
    for i in range(start, end - 64, 64):
        loss = model(tokens[i:i + 64], tokens[i + 1:i + 65])
        loss.backward()
        opt.step()
        opt.zero_grad()

def score_chunk(model, tokens, start, end, totals):
    with torch.inference_mode():
        nll = model(tokens[start:end], tokens[start + 1:end + 1])
    totals += nll.sum()
'''
_SCORE, _TRAIN = "score_chunk(model, {tokens}, s, e, totals)", "train_chunk(model, opt, {tokens}, s, e)"


def _chunk_eval(name: str, first: str, second: str, tokens: str = "val_tokens") -> str:
    """A TTT eval over the helpers: for each chunk, `first` then `second` (_SCORE / _TRAIN)."""
    return f'''
def {name}(model, {tokens}, opt, chunks):
    totals = torch.zeros(())
    for s, e in chunks:
        {first.format(tokens=tokens)}
        {second.format(tokens=tokens)}
    return totals
'''

_HELPERS_SCORE_FIRST = Valid(CHUNK_HELPERS + '''
def eval_val_ttt(model, val_tokens, opt, chunks):
    totals = torch.zeros(())
    for k, (s, e) in enumerate(chunks):
        score_chunk(model, val_tokens, s, e, totals)
        if k < len(chunks) - 1:
            train_chunk(model, opt, val_tokens, s, e)
    return totals
''', "score-first TTT written with helpers: score_chunk, then train_chunk")

_HELPERS_TRAIN_FIRST = Invalid(CHUNK_HELPERS + _chunk_eval("eval_val_ttt", _TRAIN, _SCORE),
    line=18, function="eval_val_ttt", message_contains="adapt-then-score",
    note="helpers: train_chunk (trains on its tokens) before score_chunk (scores into totals)")

_HELPERS_LAST_EPOCH = Invalid(CHUNK_HELPERS + '''
def eval_val_ttt(model, val_tokens, opt, chunks, epochs):
    totals = torch.zeros(())
    for epoch in range(epochs):
        for s, e in chunks:
            if epoch == epochs - 1:
                score_chunk(model, val_tokens, s, e, totals)
            train_chunk(model, opt, val_tokens, s, e)
    return totals
''', line=21, function="eval_val_ttt", message_contains="epoch == epochs - 1",
    note="helpers: every epoch trains, only the last one scores")

# main() hands the validation stream to a fine-tuning helper, which uses the chunk trainer that the
# legal score-first eval shares: the finding goes to the helper, not to the shared trainer.
_HELPER_PRE_QUANT = Invalid(_HELPERS_SCORE_FIRST.code + '''
def finetune_on(model, tokens, epochs):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        train_chunk(model, opt, tokens, 0, tokens.numel() - 1)

def main(model, opt, chunks):
    val_tokens = load_validation_tokens("fineweb_val_*.bin")
    finetune_on(model, val_tokens, 2)
    print(f"val_bpb:{eval_val_ttt(model, val_tokens, opt, chunks)}")
''', line=26, function="finetune_on",
    note="main() hands val tokens to a fine-tuning helper; the shared chunk trainer is not blamed")

# the eval is picked from a table and called with `*args`: the validation stream still reaches it
_DISPATCH = Invalid(CHUNK_HELPERS + _chunk_eval("ttt_legal", _SCORE, _TRAIN, "tokens")
                    + _chunk_eval("ttt_adapt_first", _TRAIN, _SCORE, "tokens") + '''
def run_eval(mode, model, val_tokens, opt, chunks):
    args = (model, val_tokens, opt, chunks)
    ttt = {"adapt": ttt_adapt_first}.get(mode, ttt_legal)
    return ttt(*args)
''', line=25, function="ttt_adapt_first",
    note="eval chosen from a table, called with *args: the val stream reaches its `tokens`")

# PR #1644's shape: one main() warms up on training batches named `x, y`, then runs a score-first
# TTT whose validation chunks are named `x, y` too. The warm-up step trains on the training
# loader's batch (the name is rebound just before it), not on validation data.
_REUSED_NAMES = Valid('''
import torch
def main(args, model, opt, train_loader, val_tokens, seq):
    for step in range(args.warmup_steps):
        x, y = train_loader.next_batch(8192, seq)
        warm = model(x, y)
        warm.backward()
        opt.step()
    total = torch.zeros(())
    for start in range(0, val_tokens.numel() - seq - 1, seq):
        chunk = val_tokens[start:start + seq + 1]
        x, y = chunk[:-1], chunk[1:]
        with torch.no_grad():
            nll = model(x, y)
        total += nll.sum()
        model(x, y).backward()
        opt.step()
    print(f"val_loss:{total.item():.4f}")
''', "PR #1644: warm-up batches and validation chunks share the names x, y")


# PR #181's shape: the training loop carries a recurrent state between chunks of a training batch
# (`loss, states = model(x, y, states)`), and the eval after it carries one of the same name
# between validation windows. The training state is computed from training batches only.
_RECURRENT_STATE = Valid('''
import torch
def main(model, opt, loader, val_tokens, seq, chunk, steps):
    for step in range(steps):
        x, y = loader.next_batch()
        states = None
        for i in range(0, seq, chunk):
            loss, states = model(x[:, i:i + chunk], y[:, i:i + chunk], states)
            loss.backward()
            states = [s.detach() for s in states]
        opt.step()
        opt.zero_grad()
    total = torch.zeros(())
    states = None
    for start in range(0, val_tokens.numel() - seq - 1, seq):
        window = val_tokens[start:start + seq + 1][None]
        with torch.no_grad():
            nll, states = model(window[:, :-1], window[:, 1:], states)
        total += nll
    print(f"val_loss:{total.item():.4f}")
''', "PR #181: a loop-carried recurrent state in training shares its name with the eval's")


class TrainBeforeScore(Rule, id="GA001", name="train-before-score",
                       severity=Severity.HIGH, confidence=Confidence.MEDIUM, layers=(Layer.STATIC, Layer.TRACE)):
    refuted_by = ("update",)  # the step at the flagged line ran, on scored positions only
    summary = ("Finds eval-time gradient steps on validation tokens that run before those tokens' "
               "scores are recorded.")
    why = ("The challenge lets you train on validation tokens only after you have been graded on them "
           "(README: 'you are only allowed to test-time train on validation set tokens you've already "
           "evaluated your model on'). A step on an unscored token lets the weights memorise it before "
           "it is graded: adapt-then-score (PR #518, closed), multi-epoch TTT that scores only on its "
           "last epoch (PR #713 lora_ttt_eval), and fine-tuning on the whole validation stream before the "
           "final eval (\"pre-quant TTT\", PR #713 test_time_train) all report a score taken after the "
           "model saw the answers.")
    example = _LAST_EPOCH.code
    use_instead = _LEGAL_CHUNKED.code
    known_problems = ("Static analysis follows names, not values: a step hidden behind getattr of a "
                      "computed string, exec, or a hook may be missed — the dynamic layer (`--dynamic`) "
                      "proves the order from a traced run. A loss accumulated only for logging before a "
                      "step is not taken as a score unless it reaches the returned or printed result. "
                      "Helpers are followed through their summaries (harness/static/summaries.py: a function that "
                      "trains on an argument, or scores an argument into an accumulator it is handed), "
                      "across the folder's files; a call the analyzer cannot name (a callback held in an "
                      "object, a method of an instance) is not followed.")
    references = ("README of openai/parameter-golf: test-time training rule",
                  "PR #518 (closed by a maintainer: adapt-then-score)",
                  "PR #713 (lora_ttt_eval final-epoch scoring; test_time_train pre-quant TTT)",
                  "PR #461 / #549 (legal score-first chunked TTT)", "PR #77 (legal per-document LoRA TTT)")
    fix = ("Score each chunk first (under torch.inference_mode()/no_grad), add its loss to the reported "
           "sum, and only then train on it; never train on a chunk whose score is taken later, and "
           "never fine-tune on validation tokens before the final eval.")

    VALID = [
        _LEGAL_CHUNKED,
        _LEGAL_LORA,
        Valid(_ALIASED.code.replace("""        with torch.no_grad():
            nll = model(x, y)
        loss_sum += nll.item()
""", """        loss_sum += loss.item()
"""), "the loss recorded is the one computed before the step: score-first in value"),
        Valid('''
def train(model, opt, train_loader, steps):
    for step in range(steps):
        x, y = train_loader.next_batch()
        loss = model(x, y)
        loss.backward()
        opt.step()
''', "ordinary training on training data"),
        _HELPERS_SCORE_FIRST,
        Valid(_DISPATCH.code.replace('{"adapt": ttt_adapt_first}', '{}'),
              "a dispatch table holding only the score-first eval"),
        _REUSED_NAMES,
        _RECURRENT_STATE,
        Valid(_LEGAL_CHUNKED.code.replace("""        loss_sum += nll.sum()
""", """        if cache is not None and ci > 0:
            if mix:
                loss_sum += (nll - cache).sum()
            else:
                loss_sum += nll.sum()
        else:
            loss_sum += nll.sum()
""").replace("chunks, seq_len):", "chunks, seq_len, cache=None, mix=True):"),
              "PR #797: every branch of the scoring if/else adds the chunk's score, then it is trained on"),
    ]
    INVALID = [
        Invalid(_REUSED_NAMES.code.replace("""        x, y = train_loader.next_batch(8192, seq)
""", """        x, y = val_tokens[:seq], val_tokens[1:seq + 1]
"""), line=8, function="main", note="the same warm-up, fed from the validation stream"),
        _ADAPT_THEN_SCORE,
        _LAST_EPOCH,
        _PRE_QUANT,
        _MANUAL,
        _MANUAL_SUB,
        _ALIASED,
        _HELPERS_TRAIN_FIRST,
        _HELPERS_LAST_EPOCH,
        _HELPER_PRE_QUANT,
        _DISPATCH,
    ]

    # ------------------------------------------------------------------ static
    def check_project(self, project) -> dict[int, list]:
        """Judged once for the whole project (the order often lives in one file and the steps
        in another); each file gets the findings located in it."""
        # pass 1: each function on its own: its training steps on validation data (its own, and
        # calls of functions that train on what they are handed) that no earlier score covers
        judged: dict[int, _Judged] = {}
        for ctx, fn in project.functions():
            tainted = D.val_taint(ctx).get(fn.qualname, set())
            if not tainted:
                continue
            # a training loop fed by a loader over validation shards is val-data-in-training's
            batches = D.val_loader_batches(ctx, fn, tainted)
            from_loader = D.tainted_names(ctx, fn, set(batches)) if batches else set()
            trains = [t for t in S.train_events(ctx, fn) if D.trains_on(ctx, fn, t, tainted)
                      and not self._discarded(ctx, fn, t)
                      and not (from_loader and D.trains_on(ctx, fn, t, from_loader))]
            if not trains:
                continue
            scores = self._scores(ctx, fn, tainted)
            missing = [t for t in trains if not self._covered(scores, t)]
            if missing:
                judged[id(fn)] = _Judged(ctx, fn, missing, scores, tainted)
        # pass 2: who carries each finding. A function that trains on data it is handed and
        # scores none of it defers to its callers: their call is a training step in their own
        # order. The caller with scores judges that order; a caller without scores that nobody
        # calls with validation data (main() handing val_tokens to a fine-tuning helper) hands
        # the finding to the helper it called, where the training loop is.
        events: dict[int, tuple[list, list]] = {}  # id(caller) -> (its scores, its training steps)
        for j in judged.values():
            for site in project.sites(j.fn):
                if site.fn is j.fn:
                    continue
                caller_taint = D.val_taint(site.ctx).get(site.fn.qualname, set())
                if not any({n.value for n in D._names(e)} & caller_taint for e in site.bound.values()):
                    continue
                if id(site.fn) not in events:
                    events[id(site.fn)] = (self._scores(site.ctx, site.fn, caller_taint),
                                           S.train_events(site.ctx, site.fn))
                caller_scores, caller_trains = events[id(site.fn)]
                ev = D.TrainEvent(site.stmt, f"call to {j.fn.name}(), which trains", site.ctx.code(site.call)[:120])
                covered = any(self._precedes(s, ev) for s in caller_scores)
                handled = any(t.callee is j.fn and t.stmt is site.stmt
                              and D.trains_on(site.ctx, site.fn, t, caller_taint) for t in caller_trains)
                j.sites.append((site, covered, handled))
        roots = {k for k, j in judged.items() if not j.scores and not any(h for _, _, h in j.sites)}
        delegated_to: dict[int, list] = {}  # callee -> call sites of scoreless roots handing it the finding
        for k in roots:
            j = judged[k]
            keep = []
            for t in j.missing:
                if t.callee is not None and id(t.callee) in judged and not judged[id(t.callee)].scores:
                    target, chain = self._descend(judged, judged[id(t.callee)])
                    delegated_to.setdefault(id(target.fn), []).extend(
                        [j.ctx.location(t.stmt.line, j.fn.qualname)] + chain)
                else:
                    keep.append(t)
            j.missing = keep
        plan: dict[int, list] = {}
        for k, j in judged.items():
            if not j.missing:
                continue
            related = delegated_to.get(k, [])
            if not j.scores:
                if any(h for _, _, h in j.sites) and not related:
                    continue  # every caller judges the call in its own order
                if j.sites and all(c for _, c, _ in j.sites) and not related:
                    continue  # every caller scores first: legal score-first (phased) TTT
            elif j.sites and all(c for _, c, _ in j.sites):
                continue
            unscored = related + [site.ctx.location(site.stmt.line, site.fn.qualname)
                                  for site, covered, handled in j.sites if not covered and not handled]
            f = self._finding(j.ctx, j.fn, j.missing[0], j.scores, j.tainted)
            for loc in unscored[:5]:
                f.related.append(loc)
                f.evidence.append(f"called at line {loc.line} in {loc.function}() with validation data "
                                  "that the caller has not scored")
            plan.setdefault(id(j.ctx), []).append(f)
        return plan

    @staticmethod
    def _descend(judged: dict[int, "_Judged"], j: "_Judged") -> tuple["_Judged", list]:
        """From a helper a scoreless caller hands validation data to, down the chain of helpers
        that only pass it on, to the one whose own code trains: stop at a helper that other
        functions call too (a shared `train_chunk` that a legal score-first eval also uses)."""
        seen = {id(j.fn)}
        chain = []  # the calls passed through on the way down
        while all(t.callee is not None for t in j.missing):
            callees = {id(t.callee) for t in j.missing}
            if len(callees) != 1:
                break
            nxt = judged.get(next(iter(callees)))
            if nxt is None or nxt.scores or id(nxt.fn) in seen:
                break
            if {id(site.fn) for site, _, handled in nxt.sites if handled} != {id(j.fn)}:
                break
            seen.add(id(nxt.fn))
            chain.append(j.ctx.location(j.missing[0].stmt.line, j.fn.qualname))
            j = nxt
        return j, chain

    def _scores(self, ctx: ModuleContext, fn: Function, tainted: set[str]) -> list:
        """Scores that count: added to what the function reports, or to an accumulator its caller
        handed it (`score_chunk(..., totals)`)."""
        reported = D.reported_names(ctx, fn) | S.summaries_of(ctx).accumulates.get(id(fn), set())
        return [s for s in S.score_events(ctx, fn, tainted) if s.accumulator in reported]

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
        score_orders = {s.stmt.order for s in S.score_events(ctx, fn, all_names)}
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

    @classmethod
    def _before(cls, s: D.ScoreEvent, t: D.TrainEvent) -> bool:
        if t.stmt.loops and cls._shared_loops(s, t) == 0:
            return False  # the score is in another loop: it does not grade this step's data first
        return not (s.value_order >= t.stmt.order and s.stmt.order >= t.stmt.order)

    def _covered(self, scores: list, t: D.TrainEvent) -> bool:
        """Scores taken before the step run whenever it does: one unguarded score, or branches
        that score on every path (`if mix: loss += mixed else: loss += plain`, PR #797)."""
        return D.guards_cover([s.stmt for s in scores if self._before(s, t)], t.stmt)

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
        return self.static_finding(ctx, t.stmt.line, fn.qualname, message, evidence, related=related,
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
    TRACE_VALID = X.legal_orders()
    TRACE_INVALID = [
        X.example(X.last_epoch, "multi-epoch TTT scored on the last epoch", "lora_ttt_eval", 1265),
        X.example(X.prequant, "full-model TTT on val, then eval", "test_time_train", 1003),
        X.lora_then_base_eval(later_eval_reads_lora=True),
    ]

    def judge(self, trace):
        """An optimizer/gradient update, made after evaluation began, used validation positions
        whose final score was taken after it (or never). One finding per offending function."""
        from harness.dynamic.judge.locations import update_frame
        from harness.dynamic.judge.updates import before_any_score, group_finding, is_training, premature_update_groups

        def select(u) -> bool:
            return is_training(u) and not before_any_score(trace, u)

        for g in premature_update_groups(trace, select):
            frame = update_frame(g.first.update)
            line = frame.line if frame is not None else 0
            yield group_finding(
                self, trace, g,
                f"{g.function}() trains on validation tokens before they are scored: the update at "
                f"line {line} used {len(g.first.positions)} positions whose score is taken afterwards"
                if g.first.later_pass else
                f"{g.function}() trains on validation tokens that are never scored: the update at "
                f"line {line} used {len(g.first.positions)} unscored positions",
            )
