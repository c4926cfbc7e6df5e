"""GA004 val-data-in-training: validation tokens reaching training, weight averaging or
quantization calibration before the final eval."""
from __future__ import annotations

import re

import libcst as cst

from harness.static import dataflow as D
from harness.static import summaries as S
from harness.static.engine import ModuleContext, dotted
from harness.core.findings import Confidence, Layer, Location, Severity
from harness.core.rule import Invalid, Rule, Valid
from rules import _val_order_examples as X

CALIBRATION = re.compile(r"hessian|calibrat|gptq|awq|collect_stats|quantiz|ema|swa|train_step|train_loop|"
                         r"fit|prefill|build_cache|ngram", re.I)
# the eval-time cache family: a cache or hint table built over the stream and consulted by the eval.
# Built *for* the eval it is the eval's own state (whether it only uses scored tokens is the dynamic
# layer's question: future-dependent-score, improper-distribution); the weight-changing family above
# (Hessians, EMA, fitting) stays a finding wherever it runs.
EVAL_CACHE = re.compile(r"prefill|build_cache|ngram|hint", re.I)
# Calls that compress or write data out: validation tokens through one of them can ride in the
# artifact ("paid prefix", PR #262). A re-tokenised validation shard (fineweb_val_*) is data prep.
STORE_CALL = re.compile(r"(^|\.)(compress|write_bytes|tofile|save|savez|savez_compressed|dump)$")
# Commands that make a training shard of a validation shard: `ln -s …/fineweb_val_000000.bin
# …/fineweb_train_000000.bin` (PR #44), `cp`, or a training path/glob set to validation files.
VAL_FILE = r"\S*(?:fineweb_val|_val_\d|/val_?\d*\.bin)\S*"
ALIAS_COMMAND = re.compile(rf"\b(?:ln|cp|mv|rsync)\b[^\n]*?\s{VAL_FILE}\s+\S*train\S*", re.I)
TRAIN_PATH_SET = re.compile(rf"\b(?:TRAIN_FILES|TRAIN_PATH|TRAIN_DATA\w*|--train[-_]files?)[= ]\s*[\"']?{VAL_FILE}", re.I)
VAL_SHARD_PATH = re.compile(r"fineweb_val|_val_\d|val_\d+\.bin", re.I)

_GPTQ_ON_VAL = Invalid('''
def main(args, model):
    val_tokens = load_validation_tokens(args.val_files, args.train_seq_len)
    hessians = collect_hessians(model, val_tokens, n_samples=128)
    state = quantize_state_dict_gptq(model.state_dict(), hessians)
    return eval_val(model, val_tokens)
''', line=4, function="main", note="GPTQ Hessians on val_tokens")

_GPTQ_ON_TRAIN = Valid('''
def main(args, model, train_loader):
    calib = train_loader.next_batch(131072, 2048)
    hessians = collect_hessians(model, calib, n_samples=128)
    state = quantize_state_dict_gptq(model.state_dict(), hessians)
    val_tokens = load_validation_tokens(args.val_files, args.train_seq_len)
    return eval_val(model, val_tokens)
''', "calibration on training data")


_TRAIN_LOOP = Invalid('''
import torch
def main(args, model):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    train_loader = DistributedTokenLoader(args.val_files, 0, 1)
    for step in range(args.iterations):
        x, y = train_loader.next_batch(8192, 1024)
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    val_tokens = load_validation_tokens(args.val_files, 1024)
    print(eval_val(model, val_tokens))
''', line=10, function="main", message_contains="loader", note="training loader built over the validation shards")

_EMA_ON_VAL = Invalid('''
def finalize(args, model, ema):
    val_tokens = load_validation_tokens(args.val_files, 1024)
    for i in range(0, 1 << 20, 1024):
        ema.update_ema(model, val_tokens[i:i + 1024])
    return eval_val(ema.model, val_tokens)
''', line=5, function="finalize", note="EMA/SWA statistics updated on val_tokens")


# the quantizer only receives what the calibration on val tokens returned: reported once, where the
# validation tokens go in
_HESSIANS_HANDED_ON = Invalid('''
def quantize_state(state, hessians):
    out = {}
    for name, w in state.items():
        h = hessians.get(name)
        out[name] = quantize_matrix(w, h)
    return out

def main(args, model):
    val_tokens = load_validation_tokens(args.val_files, 1024)
    hessians = collect_hessians(model, val_tokens[:131072])
    state = quantize_state(model.state_dict(), hessians)
    return eval_val(model, val_tokens)
''', line=11, function="main", note="Hessians from val tokens handed to the quantizer: reported at the calibration")

# a causal hint pass over the stream, built by a helper the eval calls (PR #2135 / #2140's shape):
# eval-time state, whose causality the dynamic layer judges
_HINTS_INSIDE_THE_EVAL = Valid('''
def build_ngram_hints(tokens, order):
    state = NgramState(order, seed_token=int(tokens[0]))
    return state.process_chunk(tokens)

def eval_val_hinted(model, val_tokens):
    hints = build_ngram_hints(val_tokens, 8)
    return score_with_hints(model, val_tokens, hints)

def main(args, model):
    val_tokens = load_validation_tokens(args.val_files, 1024)
    print(eval_val_hinted(model, val_tokens))
''', "an n-gram hint pass built by a helper of the eval: eval-time state")

# the cache is an object the eval builds and updates through its methods (PR #769's shape): the
# project does not resolve `cache.update(...)`, every call of a method of that name is in the eval
_CACHE_OBJECT_IN_THE_EVAL = Valid('''
import numpy as np
class CountCache:
    def __init__(self, buckets):
        self.counts = np.zeros(buckets, dtype=np.int64)

    def update(self, ctx, targets):
        keys = _hash_ngrams(ctx, targets, self.counts.size)
        np.add.at(self.counts, keys, 1)

def eval_val_cached(model, val_tokens, chunks):
    cache = CountCache(1 << 16)
    total = 0.0
    for s, e in chunks:
        total += score_chunk(model, val_tokens, s, e, cache)
        cache.update(val_tokens[s:e - 1], val_tokens[s + 1:e])
    return total

def main(args, model):
    val_tokens = load_validation_tokens(args.val_files, 1024)
    print(eval_val_cached(model, val_tokens, make_chunks(val_tokens)))
''', "PR #769's shape: a count cache the eval updates through its methods")

# the same table built from validation tokens and saved with the weights: graded text in the artifact
_NGRAM_TABLE_IN_ARTIFACT = Invalid('''
import torch
def main(args, model):
    val_tokens = load_validation_tokens(args.val_files, 1024)
    table = build_ngram_table(val_tokens, 3)
    torch.save({"model": model.state_dict(), "ngram": table}, "final_model.pt")
    print(eval_val(model, val_tokens))
''', line=5, function="main", note="an n-gram table over val tokens saved into the artifact")


# validation target tokens compressed and written out by a helper script: a paid prefix
_VAL_TOKENS_STORED = Invalid('''
import lzma
from pathlib import Path
def build_prefix(args):
    val_tokens = load_val_tokens(args.val_dir)
    stored = val_tokens[1:args.num_tokens + 1].astype("<u2").tobytes()
    blob = lzma.compress(stored)
    Path(args.output).write_bytes(blob)
''', line=7, function="build_prefix", message_contains="stores",
    note="val target tokens compressed into a blob (PR #262's paid prefix)")

# a data-prep script that re-tokenises the validation split into its shard name: legal
_VAL_SHARD_RETOKENISED = Valid('''
def retokenize(args, sp):
    val_tokens = encode_docs(load_val_docs(args.docs), sp)
    write_shard(f"{args.out}/fineweb_val_000000.bin", val_tokens)
    val_tokens.tofile(f"{args.out}/fineweb_val_000000.bin")
''', "the validation split re-tokenised into its own shard name (data prep)")


class ValDataInTraining(Rule, id="GA004", name="val-data-in-training",
                        severity=Severity.HIGH, confidence=Confidence.MEDIUM, layers=(Layer.STATIC, Layer.TRACE)):
    refuted_by = ("update",)
    counts_in_prep_scripts = True  # a prefix builder the README runs ships its blob with the run
    summary = ("Finds validation tokens (or their loader) passed to training, weight averaging, n-gram prefill or "
               "quantization calibration before the final eval.")
    why = ("README: 'You CANNOT access validation data during training'. Calibrating GPTQ Hessians on val_tokens, "
           "tuning on them or pre-filling a cache with them puts information about the graded text into the "
           "artifact before it is graded. Calibration on training data or self-generated text is fine.")
    example = _GPTQ_ON_VAL.code
    use_instead = _GPTQ_ON_TRAIN.code
    known_problems = ("Which callee trains or calibrates is judged by its name (hessian, calibrat, gptq, ema, swa, "
                      "prefill, ngram, train_step...); the dynamic layer sees the parameter writes themselves.")
    references = ("README: no access to validation data during training",
                  "rules.md: GPTQ calibration on val tokens is illegal; on training or generated data it is fine")
    fix = "Collect calibration statistics from training shards or self-generated text, never from val_tokens."

    VALID = [_GPTQ_ON_TRAIN,
             Valid(_TRAIN_LOOP.code.replace("DistributedTokenLoader(args.val_files", "DistributedTokenLoader(args.train_files"),
                   "training loop over the training shards"),
             _HINTS_INSIDE_THE_EVAL,
             _CACHE_OBJECT_IN_THE_EVAL,
             _VAL_SHARD_RETOKENISED]
    INVALID = [_GPTQ_ON_VAL, _TRAIN_LOOP, _EMA_ON_VAL, _HESSIANS_HANDED_ON, _NGRAM_TABLE_IN_ARTIFACT,
               _VAL_TOKENS_STORED]

    def check_project(self, project) -> dict[int, list]:
        """Judged once for the whole project: a function that only receives the *results* of a
        calibration on validation data (Hessians handed on to the quantizer) is downstream of the
        finding, not a second one."""
        plan: dict[int, list] = {}
        candidates: list[tuple] = []  # (ctx, fn, stmt, callee name, names of validation data)
        for ctx, fn in project.functions():
            tainted = D.val_taint(ctx).get(fn.qualname, set())
            if not tainted:
                continue
            loop_hit = self._training_loop(ctx, fn, tainted)
            if loop_hit is not None:
                plan.setdefault(id(ctx), []).append(loop_hit)
                continue
            before = len(candidates)
            for st in fn.stmts:
                for call in st.calls:
                    name = dotted(call.func).split(".")[-1]
                    if not CALIBRATION.search(name) or D.EVAL_FUNC.search(name):
                        continue
                    args = {n.value for a in call.args for n in D._names(a.value)}
                    hit = args & tainted
                    if not hit or not self._direct_val(call, hit, fn, ctx) or self._eval_time_state(fn, st):
                        continue
                    if EVAL_CACHE.search(name) and self._for_the_eval(project, fn):
                        continue
                    candidates.append((ctx, fn, st, name, hit))
            stored = self._stored(ctx, fn, tainted) if len(candidates) == before else None
            if stored is not None:  # a calibration call above is the finding where there is one
                plan.setdefault(id(ctx), []).append(stored)
        # id(fn) -> names holding what its calibration calls returned (and values computed from them)
        returned: dict[int, tuple] = {}
        for ctx, fn, st, _, _ in candidates:
            returned.setdefault(id(fn), (ctx, fn, set()))[2].update(st.writes)
        results = {k: D.tainted_names(ctx, fn, names) for k, (ctx, fn, names) in returned.items()}
        reported: set[int] = set()
        for ctx, fn, st, name, hit in candidates:
            if id(fn) in reported or self._downstream(project, ctx, fn, hit, results):
                continue
            reported.add(id(fn))
            plan.setdefault(id(ctx), []).append(self.static_finding(
                ctx, st.line, fn.qualname,
                f"{fn.qualname}() passes validation data ({', '.join(sorted(hit))}) to {name}() before the final eval",
                [f"`{ctx.code(st.node)[:160]}`"],
                **ctx.reach_fields(fn.qualname, st),
            ))
        return plan

    @staticmethod
    def _downstream(project, ctx: ModuleContext, fn, hit: set[str], results: dict[int, set[str]]) -> bool:
        """The validation-derived names reach `fn` only through parameters, and every caller that
        passes such data passes what one of its own calibration calls returned."""
        own = D._own_seeds(fn) | {p for p in fn.params if D.VAL_NAME.search(p)}
        if hit & D.tainted_names(ctx, fn, own):
            return False
        sites = []
        for site in project.sites(fn):
            taint = D.val_taint(site.ctx).get(site.fn.qualname, set())
            passed = {n.value for e in site.bound.values() for n in D._names(e)} & taint
            if passed:
                sites.append(passed <= results.get(id(site.fn), set()))
        return bool(sites) and all(sites)

    @classmethod
    def _for_the_eval(cls, project, fn, seen: frozenset = frozenset()) -> bool:
        """`fn` runs as part of the eval: an eval function itself, or a helper whose every caller
        is (a call inside an eval, a result handed to an eval, or a caller that is in turn)."""
        if D.EVAL_FUNC.search(fn.name):
            return True
        if id(fn) in seen:
            return False
        callers = [(site.fn, site.stmt) for site in project.sites(fn)] or cls._method_callers(project, fn)
        return bool(callers) and all(
            D.EVAL_FUNC.search(caller.name) or cls._eval_time_state(caller, st)
            or cls._for_the_eval(project, caller, seen | {id(fn)})
            for caller, st in callers)

    @staticmethod
    def _method_callers(project, fn) -> list:
        """(caller, statement) of `obj.method(...)` calls of a method the project does not resolve
        (an object it cannot trace to its class: a parameter, a factory's result; the project
        resolves `cache = NgramCache(...)`, then `cache.update(...)`, PR #769): every call of an
        attribute of that name in the files. Over-inclusive on purpose: one caller outside an eval
        keeps the finding."""
        if "." not in fn.qualname:
            return []
        out = []
        for _ctx, caller in project.functions():
            for st in caller.stmts:
                if any(isinstance(c.func, cst.Attribute) and c.func.attr.value == fn.name for c in st.calls):
                    out.append((caller, st))
        return out

    def _training_loop(self, ctx: ModuleContext, fn, tainted: set[str]):
        """A training loop whose batches come from a loader built over validation data."""
        batches = D.val_loader_batches(ctx, fn, tainted)
        if not batches:
            return None
        derived = D.tainted_names(ctx, fn, set(batches))
        for t in S.train_events(ctx, fn):
            stretch = fn.loop_body(t.stmt.loops[0]) if t.stmt.loops else fn.stmts
            if not D.backward_tainted(ctx, fn, derived, stretch):
                continue
            draw = next(iter(batches.values()))
            return self.static_finding(
                ctx, t.stmt.line, fn.qualname,
                f"{fn.qualname}() trains on batches drawn from a loader over validation data",
                [f"batches drawn at line {draw.line}: `{ctx.lines[draw.line - 1].strip()[:140]}`",
                 f"{t.what} at line {t.stmt.line}: `{t.code}` on a loss computed from those batches"],
                fix="Build the training loader over the training shards (train_files); validation shards may "
                    "only be read by the final eval.", **ctx.reach_fields(fn.qualname, t.stmt))
        return None

    def _stored(self, ctx: ModuleContext, fn, tainted: set[str]):
        """Validation tokens themselves (not scores of them) compressed or written out outside the
        eval: whatever is stored can be shipped in the artifact and read back as graded text."""
        if D.EVAL_FUNC.search(fn.name):
            return None
        # only what the function loads itself: data handed in (a state dict a caller trained, a
        # parameter named like `training_time_ms_val`) is judged where it was made
        handed = set(fn.params) & tainted
        # ... and scores are not tokens: a checkpoint that records best_val_bpb stores a number
        handed |= {n for n in tainted if D.LOSS_NAME.search(n) or "bpb" in n.lower()}
        from_params = D.tainted_names(ctx, fn, handed) if handed else set()
        own = D._own_seeds(fn)
        if not own:  # a weight dict quantised after a fine-tune is the other checks' to judge
            return None
        loaded = D.tainted_names(ctx, fn, own) - from_params
        for st in fn.stmts:
            for call in st.calls:
                name = ctx.resolve(dotted(call.func))
                if not STORE_CALL.search(name) or VAL_SHARD_PATH.search(ctx.code(st.node)):
                    continue
                args = {n.value for a in call.args for n in D._names(a.value)}
                if isinstance(call.func, cst.Attribute) and name.split(".")[-1] == "tofile":
                    args.add(D.base_name(call.func.value))
                hit = {n for n in args & loaded if not D.LOSS_NAME.search(n) and "bpb" not in n.lower()}
                if not hit:
                    continue
                return self.static_finding(
                    ctx, st.line, fn.qualname,
                    f"{fn.qualname}() stores validation tokens ({', '.join(sorted(hit))}) with {name}(): stored "
                    "graded text can ride in the artifact (a paid prefix)", [f"`{ctx.code(st.node)[:160]}`"],
                    fix="Store nothing derived from the validation tokens; the artifact may hold only what "
                        "training on the training shards produced.", **ctx.reach_fields(fn.qualname, st))
        return None

    def check_texts(self, texts: dict[str, str]):
        """The run instructions alias validation shards as training data: the training code is the
        baseline's, the data it reads is the graded text (PR #44 symlinked the val shard as the
        train shard)."""
        for path, text in texts.items():
            for i, line in enumerate(text.splitlines(), start=1):
                m = ALIAS_COMMAND.search(line) or TRAIN_PATH_SET.search(line)
                if m is None:
                    continue
                yield self.finding(
                    Layer.STATIC, f"the run instructions in {path} feed validation files to training: "
                    f"`{m.group(0).strip()[:120]}`", Location(path=path, line=i, source_line=line.strip()[:200]),
                    [f"{path}:{i}: `{line.strip()[:200]}`",
                     "the training loader reads whatever files the training path names"],
                    fix="Train on the training shards only (fineweb_train_*); the validation shard may be read "
                        "only by the final eval.", confidence=Confidence.HIGH)

    @staticmethod
    def _eval_time_state(fn, st) -> bool:
        """`state = NgramTiltState(val_tokens=...)` handed to the eval that scores: an eval-time
        cache, not training. Whether it only uses already-scored tokens is the dynamic layer's
        question (future-dependent-score, improper-distribution)."""
        if not isinstance(st.node, cst.Assign) or not st.writes:
            return False
        for later in fn.stmts[st.order + 1:]:
            for call in later.calls:
                if D.EVAL_FUNC.search(dotted(call.func).split(".")[-1]) and any(
                        D.base_name(a.value) in st.writes for a in call.args):
                    return True
        return False

    @staticmethod
    def _direct_val(call: cst.Call, hit: set[str], fn, ctx) -> bool:
        """The argument is the validation data itself, not a score computed from it."""
        for a in call.args:
            for n in D._names(a.value):
                if n.value in hit and not D.LOSS_NAME.search(n.value) and "bpb" not in n.value:
                    return True
        return False

    # synthetic traces the judge is tested on (tests/test_rules_trace_examples.py)
    TRACE_VALID = X.legal_orders()
    TRACE_INVALID = [
        X.example(X.calibrate, "calibration statistics from val", "gptq_calibrate", 700),
        X.example(X.train_on_val, "val tokens trained on before any score", "main", 500),
    ]

    def judge(self, trace):
        """Validation positions reached persistent state (a) before any token was scored, by any
        write, or (b) through a non-training write (calibration statistics, buffers, copies)
        before their final score."""
        from harness.dynamic.judge.locations import update_frame
        from harness.dynamic.judge.updates import (
            artifact_news,
            before_any_score,
            group_finding,
            is_training,
            premature_update_groups,
        )

        news = artifact_news(trace)

        def select(u) -> bool:
            if u.target_kind == "artifact" and not news.get(id(u)):
                return False  # the saved weights hold what an update already put there (judged there)
            return before_any_score(trace, u) or not is_training(u)

        for g in premature_update_groups(trace, select):
            u = g.first.update
            frame = update_frame(u)
            what = ("before any validation token was scored" if before_any_score(trace, u)
                    else "into the saved artifact (torch.save), before those tokens were scored"
                    if u.target_kind == "artifact"
                    else f"through a {u.via} write to a {u.target_kind}, before those tokens were scored")
            yield group_finding(
                self, trace, g,
                f"{g.function}() puts validation data into the model {what} "
                f"({len(g.first.positions)} positions, first write at line {frame.line if frame else 0})",
            )
