"""GA013 audit-tampering: code that touches the audit's instrumentation, or that picks its scoring
or training path by whether it looks audited."""
from __future__ import annotations

import libcst as cst

from harness.core.findings import Confidence, Layer, Location, Severity
from harness.core.rule import Invalid, Rule, Valid
from harness.dynamic.judge.synthetic import TraceExample
from harness.static.engine import ModuleContext, Stmt, dotted, string_value, walk
from rules import _audit_signs as S


def _header(st: Stmt) -> list[cst.CSTNode]:
    """The parts of a statement that run at its own line (a compound statement's body is made
    of statements of its own)."""
    node = st.node
    if st.kind == "simple":
        return [node]
    if st.kind in ("if", "while"):
        return [node.test]
    if st.kind == "for":
        return [node.iter]
    if st.kind == "with":
        return [item.item for item in node.items]
    if st.kind == "def":
        return [d.decorator for d in node.decorators]
    return []


def _own_frame(call: cst.Call) -> bool:
    """sys._getframe() / sys._getframe(0): the function's own frame, not a caller's."""
    return not call.args or (isinstance(call.args[0].value, cst.Integer) and call.args[0].value.value == "0")


def instrumentation_touch(ctx: ModuleContext, st: Stmt) -> tuple[str, str] | None:
    """(what it reaches, the name) when this statement touches the instrumentation."""
    node = st.node
    if isinstance(node, cst.ImportFrom) and node.module is not None and isinstance(node.names, (list, tuple)):
        mod = dotted(node.module)
        names = [f"{mod}.{dotted(a.name)}" for a in node.names] + [mod]
    elif isinstance(node, cst.Import):
        names = [dotted(a.name) for a in node.names]
    else:
        names = []
    for full in names:
        for pattern, what in S.INSTRUMENTATION:
            if pattern.match(full):
                return what, full
    if names:
        return None  # a plain import of anything else (sys, gc, inspect) is not a touch
    if _may_touch(ctx, st):
        found = _walk_touch(ctx, st)
        if found is not None:
            return found
    if S.FRAME_ATTRS & st.attrs:
        return "the callers' frames", ".f_back"
    for s in st.strings:
        if s in S.PRIVATE_NAMES:
            return "the instrumentation, by a name spelled as a string", repr(s)
    return None


def _may_touch(ctx: ModuleContext, st: Stmt) -> bool:
    """A cheap test first: does any name or attribute of the statement, resolved through the
    import table, have a component that instrumentation names have? (Only simple statements
    record their attributes: a compound statement's header is always walked.)"""
    if st.kind != "simple":
        return True
    for word in st.reads | st.writes | st.attrs:
        for part in ctx.imports.get(word, word).split("."):
            if part in S.KEY_PARTS or part.startswith(S.KEY_PREFIX):
                return True
    return False


def _walk_touch(ctx: ModuleContext, st: Stmt) -> tuple[str, str] | None:
    node = st.node
    allowed: set[int] = set()  # sys.modules[...] = m (registering a module), sys.modules[__name__]
    for part in _header(st):
        for n in walk(part):
            if isinstance(n, cst.Subscript) and ctx.resolve(dotted(n.value)) == "sys.modules":
                key = n.slice[0].slice if len(n.slice) == 1 and isinstance(n.slice[0].slice, cst.Index) else None
                own = key is not None and (
                    (isinstance(key.value, cst.Name) and key.value.value == "__name__")
                    or (isinstance(key.value, cst.SimpleString) and key.value.evaluated_value == "__main__"))
                target = isinstance(node, cst.Assign) and any(t.target is n for t in node.targets)
                if own or target:
                    allowed.add(id(n.value))
        for n in walk(part):
            if isinstance(n, cst.Call) and ctx.resolve(dotted(n.func)) == "sys._getframe":
                if not _own_frame(n) or S.FRAME_ATTRS & st.attrs:
                    return "the callers' frames", "sys._getframe"
                continue
            if not isinstance(n, (cst.Name, cst.Attribute)):
                continue
            full = ctx.resolve(dotted(n))
            if full == "sys.modules" and id(n) not in allowed:
                return "the loaded modules (sys.modules), beyond a plain import", "sys.modules"
            for pattern, what in S.INSTRUMENTATION:
                if pattern.match(full):
                    return what, full
    return None


# ---------------------------------------------------------------- signs of an audit
def signs(ctx: ModuleContext, node: cst.CSTNode, tainted: dict[str, str]) -> list[str]:
    """What in this expression tells the run that it is audited."""
    out: list[str] = []
    env_read = False
    for n in walk(node):  # type identity, not isinstance: see harness/static/engine.py
        t = type(n)
        if t is cst.Call:
            name = ctx.resolve(dotted(n.func))
            env_read |= bool(S.ENV_READS.match(name))
            for pattern, what in S.SIGN_CALLS:
                if pattern.match(name):
                    out.append(f"`{name}()` ({what})")
        elif t is cst.Name or t is cst.Attribute:
            full = ctx.resolve(dotted(n))
            env_read |= full == "os.environ"
            if full in S.SIGN_NAMES:
                out.append(f"`{full}` ({S.SIGN_NAMES[full]})")
            leaf = n.value if t is cst.Name else n.attr.value
            if leaf in tainted:
                out.append(f"`{leaf}` ({tainted[leaf]})")
        if t is cst.Comparison:
            scale = _scale_compared(n)
            if scale:
                out.append(f"`{ctx.code(n)[:80]}` (the {scale} against a number: a toy-scale audit runs a "
                           "smaller model for fewer steps)")
        elif t is cst.SimpleString:
            try:
                text = string_value(n)
            except Exception:  # noqa: BLE001 - bytes or odd escapes: not a sign
                continue
            if S.AUDIT_STRING.search(text):
                out.append(f"the string {text!r}")
            elif S.ENV_SIGN.match(text):
                out.append(f"the environment variable {text}")
    if not env_read:  # "RUN_ID" counts only where the environment is read
        out = [s for s in out if not s.startswith("the environment variable")]
    return list(dict.fromkeys(out))


def _scale_compared(cmp: cst.Comparison) -> str | None:
    """'model size'/'step count' when a comparison sets a bare scale hyperparameter (args.model_dim,
    NUM_LAYERS, ...) against a number literal: `args.model_dim >= 256`."""
    sides = [cmp.left] + [c.comparator for c in cmp.comparisons]
    if not any(isinstance(s, (cst.Integer, cst.Float)) for s in sides):
        return None
    for s in sides:
        if isinstance(s, (cst.Name, cst.Attribute)):
            leaf = s.value if isinstance(s, cst.Name) else s.attr.value
            if S.SCALE_NAME.match(leaf):
                return "step count" if "step" in leaf.lower() or "iteration" in leaf.lower() else "model size"
    return None


_CASTS = {"int", "str", "bool", "float", "len", "os.fspath", "str.lower", "str.upper"}


def _carries_sign(ctx: ModuleContext, value: cst.BaseExpression) -> bool:
    """Does a value of this shape *hold* the sign itself (the run id, a test on it, the GPU name),
    rather than something computed from it? Only those pass the taint on: a path built from the
    run id, a file read through that path, a batch size from that file, a width chosen by
    `args.embed_dim > 0` are data of the run (the phased-TTT records keep a work queue in a file
    named by the run id), not a sign that it is audited."""
    if isinstance(value, (cst.Comparison, cst.BooleanOperation, cst.UnaryOperation, cst.Name, cst.Attribute,
                          cst.SimpleString, cst.FormattedString)):
        return not isinstance(value, cst.FormattedString) or len(value.parts) == 1
    if isinstance(value, cst.Subscript):
        return ctx.resolve(dotted(value.value)) == "os.environ"
    if isinstance(value, cst.Call):
        name = ctx.resolve(dotted(value.func))
        if name in _CASTS or name.split(".")[-1] in ("lower", "upper", "strip"):
            return bool(value.args) and _carries_sign(ctx, value.args[0].value) if name in _CASTS else \
                _carries_sign(ctx, value.func.value) if isinstance(value.func, cst.Attribute) else False
        return bool(S.ENV_READS.match(name)) or any(p.match(name) for p, _ in S.SIGN_CALLS)
    return False


def _assigned_value(node: cst.CSTNode) -> cst.BaseExpression | None:
    if isinstance(node, (cst.Assign, cst.AnnAssign)):
        return node.value
    return None


def _taint(ctx: ModuleContext, qualname: str, tainted: dict[str, str]) -> dict[str, str]:
    """Names assigned (in order) from an expression with a sign of an audit, or from such a name,
    where the value holds the sign itself (see _carries_sign)."""
    tainted = dict(tainted)
    for st in ctx.functions[qualname].stmts:
        if st.kind == "simple" and st.writes and not isinstance(st.node, (cst.Import, cst.ImportFrom)):
            value = _assigned_value(st.node)
            if value is None or not _carries_sign(ctx, value):
                continue
            found = signs(ctx, value, tainted)
            if found:
                for w in st.writes:
                    tainted.setdefault(w, f"set at line {st.line} from {found[0]}")
    return tainted


def _paths(ctx: ModuleContext, stmts: list[Stmt]) -> set[str]:
    return {dotted(c.func).split(".")[-1] for st in stmts for c in st.calls
            if S.TRAIN_OR_SCORE.match(dotted(c.func).split(".")[-1] or "")}


PATH_FIX = ("Take the same scoring and training path whatever the run id, paths, device, world size, clock or "
            "model size; choose it with a hyperparameter the README's command sets.")


class AuditTampering(Rule, id="GA013", name="audit-tampering",
                     severity=Severity.HIGH, confidence=Confidence.MEDIUM, layers=(Layer.STATIC, Layer.TRACE)):
    # severity high for touching the instrumentation; a path chosen by audit signs is medium
    judges_untrusted = True  # the judge reads the tracer's integrity record
    summary = ("Finds code that touches the audit's instrumentation (torch mode stacks, trace hooks, gc, "
               "sys.modules, callers' frames) or picks its scoring/training path by signs of an audit.")
    why = ("The dynamic audit runs the submission at toy scale under a torch dispatch mode and hooks, and "
           "judges what it records. A script that pops those modes, reads the tracer's objects, or takes the "
           "legal path only when its run id, paths, GPU, world size, clock or model size look like an audit is judged on "
           "code that the real 8xH100 run never executes: the score it claims was never audited. No contest "
           "script needs the interpreter's trace hooks or the dispatch-mode stack to train or score.")
    example = '''
import torch
from torch.utils._python_dispatch import _pop_mode

def eval_ttt(model, chunks, opt):
    while torch._C._len_torch_dispatch_stack() > 0:
        _pop_mode()  # the tracer is gone: adapt-then-score goes unseen
    for x, y in chunks:
        model(x, y).backward(); opt.step()
        score(model, x, y)
'''
    use_instead = '''
def eval_ttt(model, chunks, opt):
    for x, y in chunks:
        score(model, x, y)  # score first, under whatever is watching ...
        model(x, y).backward(); opt.step()  # ... then train on what was scored
'''
    known_problems = ("A budget that skips TTT when the eval clock runs low is a legitimate use of the wall "
                      "clock and is still reported (medium): say so in a suppression with its reason. Signs "
                      "are followed through assignments in one file, not through calls or attributes of "
                      "objects built elsewhere.")
    references = ("issue #14 (submissions that know they are audited)",
                  "README: a validation token may be trained on only after it has been scored",
                  "PR #518 (closed: adapt-then-score), the order such code would hide")
    fix = ("Remove the code that inspects or changes the instrumentation (mode stacks, trace hooks, gc, "
           "sys.modules, frames); nothing in training or scoring needs it.")

    VALID = [
        Valid('''
import os
import torch
def build():
    model_dim = int(os.environ.get("MODEL_DIM", 512))
    return torch.nn.Linear(model_dim, model_dim)
''', "a hyperparameter from the environment sizes the model"),
        Valid('''
import os
def eval_phased(args, model, score_batch, train_batch):
    run_id = os.environ.get("RUN_ID", "run")
    queue_path = os.path.join(args.out_dir, f"{run_id}_queue.txt")
    with open(queue_path) as f:
        batch = int(f.read())
    needs_train = batch > 0
    if needs_train:
        train_batch(model, batch)
    else:
        score_batch(model, batch)
''', "the run id names a work-queue file; what the file holds is the run's data, not a sign of an audit"),
        Valid('''
def train(args, model, opt, batches, eval_val):
    grad_clip = 1.0 if args.model_dim >= 512 else 0.0
    for step, (x, y) in enumerate(batches):
        model(x, y).backward()
        opt.step()
        if step >= args.iterations:
            break
    return eval_val(model)
''', "model size picks a setting and the loop stops at the step budget: one path at every scale"),
        Valid('''
import torch
def log_device(log0):
    log0(f"device: {torch.cuda.get_device_name()}")
    if torch.cuda.get_device_name().startswith("NVIDIA H100"):
        log0("running on H100")
''', "the GPU name in a log line"),
        Valid('''
import time
def train(model, opt, batches, max_s):
    t0 = time.time()
    for x, y in batches:
        model(x, y).backward(); opt.step()
        elapsed = time.time() - t0
        if elapsed > max_s:
            break
        print(f"step time {elapsed:.2f}s")
''', "wall clock for timing logs and the training cap"),
        Valid('''
import os
import torch.distributed as dist
def shard(tokens, rank):
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        dist.barrier()
    n = len(tokens) // world_size
    return tokens[rank * n:(rank + 1) * n]
''', "world size for sharding"),
        Valid('''
import sys, importlib.util
def load_packed(name, code):
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(code, mod.__dict__)
    sys.modules[name] = mod
    me = sys.modules[__name__]
    return mod, me
''', "registering a module and reading its own entry in sys.modules"),
        Valid('''
import os
def log_name():
    run_id = os.environ.get("RUN_ID", "run")
    return f"logs/{run_id}.txt"
''', "RUN_ID for the log file name"),
        Valid('''
import sys
def where():
    return sys._getframe().f_code.co_name
''', "the function's own frame"),
        Valid('''
import os
def eval_all(args, model, evaluate, ttt):
    if args.ttt_enabled:
        return ttt(model)
    return evaluate(model)
''', "a path chosen by a hyperparameter"),
    ]
    INVALID = [
        Invalid('''
import torch
from torch.utils._python_dispatch import _pop_mode
def eval_ttt(model, chunks, opt):
    while torch._C._len_torch_dispatch_stack() > 0:
        _pop_mode()
''', line=3, message_contains="dispatch-mode stack", note="imports the dispatch stack's private pop"),
        Invalid('''
import torch
def eval_ttt(model, chunks, opt):
    while torch._C._len_torch_dispatch_stack() > 0:
        torch._C._pop_torch_dispatch_stack()
''', line=4, function="eval_ttt", note="torch._C dispatch stack"),
        Invalid('''
import torch.overrides as ov
def hide():
    ov._pop_mode()
''', line=4, function="hide", message_contains="function-mode", note="function-mode stack through an alias"),
        Invalid('''
import sys, threading
def quiet():
    sys.settrace(None)
    threading.settrace(None)
''', line=4, message_contains="trace/profile", note="clears the trace hooks"),
        Invalid('''
import gc
def find_tracer():
    return [o for o in gc.get_objects() if type(o).__name__.endswith("Mode")]
''', line=4, note="looks for the tracer among live objects"),
        Invalid('''
import sys
def audited():
    return any(m.startswith("harness") for m in sys.modules)
''', line=4, message_contains="sys.modules", note="iterates sys.modules"),
        Invalid('''
import sys
def tracer():
    return sys.modules.get("harness.dynamic.trace.tracer")
''', line=4, note="reads a harness module"),
        Invalid('''
import inspect
def who_calls():
    return inspect.currentframe().f_back.f_globals
''', line=4, message_contains="frames", note="the caller's frame"),
        Invalid('''
import torch
def peek():
    return getattr(torch._C, "_len_torch_dispatch_stack")()
''', line=4, note="a private name spelled as a string"),
        Invalid('''
import os
def final_eval(model, eval_legal, eval_ttt):
    run_id = os.environ.get("RUN_ID", "")
    if "audit" in run_id or os.getcwd().startswith("/tmp"):
        return eval_legal(model)
    return eval_ttt(model)
''', line=5, function="final_eval", message_contains="audit", note="legal path only under an audit-like run id"),
        Invalid('''
import torch
def final_eval(model, score_only, ttt_adapt_then_score):
    on_h100 = "H100" in torch.cuda.get_device_name()
    if on_h100:
        ttt_adapt_then_score(model)
    else:
        score_only(model)
''', line=5, note="the illegal path only on the real GPU"),
        Invalid('''
def final_eval(args, model, score_only, ttt_adapt_then_score):
    full_size = args.model_dim >= 256
    if full_size:
        return ttt_adapt_then_score(model)
    return score_only(model)
''', line=4, function="final_eval", message_contains="model size",
                note="the illegal path only at full model size (a toy run is smaller)"),
        Invalid('''
import torch.distributed as dist
def final_eval(model, eval_val, eval_ttt):
    fn = eval_ttt if dist.get_world_size() == 8 else eval_val
    return fn(model)
''', line=4, note="a ternary on the world size"),
    ]

    TRACE_VALID = [TraceExample(events=(), meta={"integrity": {"0": {}}}, note="instrumentation intact to the end")]
    TRACE_INVALID = [TraceExample(
        events=(), line=412, function="eval_val_sliding_ttt", message_contains="dispatch mode",
        meta={"integrity": {"0": {"missing": ["the tracer's dispatch mode is no longer on the torch dispatch-mode "
                                              "stack"], "when": "at exit", "seq": 4096,
                                  "frame": {"path": "train_gpt.py", "line": 412, "function": "eval_val_sliding_ttt",
                                            "code": "loss_sum += nll.sum()"}}},
              "untrusted": "rank 0: the tracer's dispatch mode is no longer on the torch dispatch-mode stack"},
        note="the mode was popped: found at exit, located at the last score seen")]

    def judge(self, trace):
        """The tracer's integrity record: the first time (per rank) its modes, hooks or patches
        were found missing, and the last score/update it saw before."""
        for rank, rec in sorted((trace.meta.get("integrity") or {}).items()):
            if not rec or not rec.get("missing"):
                continue
            frame = rec.get("frame") or {}
            loc = Location(path=frame.get("path") or "train_gpt.py", line=int(frame.get("line") or 0),
                           function=frame.get("function"), source_line=frame.get("code", ""))
            where = (f"the last score/update the tracer saw was at {loc.path}:{loc.line}" if frame
                     else "the tracer saw no score or update before")
            yield self.finding(Layer.TRACE, f"the run removed the audit's instrumentation ({rec['missing'][0]}): "
                               "what it did afterwards was not recorded", loc,
                               [f"rank {rank}, {rec.get('when', '')}: " + "; ".join(rec["missing"]), where,
                                "trace judges skipped; the verdict on the scores is the black-box probe's"],
                               confidence=Confidence.HIGH)

    def check_static(self, ctx: ModuleContext):
        module_taint = _taint(ctx, "<module>", {}) if "<module>" in ctx.functions else {}
        for q, fn in ctx.functions.items():
            where = None if q == "<module>" else q
            tainted = module_taint if q == "<module>" else _taint(ctx, q, module_taint)
            for st in fn.stmts:
                touch = instrumentation_touch(ctx, st)
                if touch is not None:
                    what, name = touch
                    yield self.static_finding(
                        ctx, st.line, where, f"touches {what} (`{name}`): an audited run is not the run that is scored",
                        [f"`{ctx.code(_header(st)[0] if _header(st) else st.node)[:160]}`"], **ctx.reach_fields(q, st))
                    continue
                found = self._path_choice(ctx, fn, st, tainted)
                if found is not None:
                    sign, evidence = found
                    f = self.static_finding(
                        ctx, st.line, where, f"chooses its scoring/training path by {sign}, a sign of being audited: "
                        "the audited path may not be the one that produced the score",
                        evidence, fix=PATH_FIX, **ctx.reach_fields(q, st))
                    f.severity = Severity.MEDIUM
                    yield f

    @staticmethod
    def _path_choice(ctx: ModuleContext, fn, st: Stmt, tainted: dict[str, str]):
        """(the sign, evidence) when this `if` (or a ternary in this statement) selects between
        scoring/training paths on a sign of an audit."""
        if st.kind == "if":
            found = signs(ctx, st.node.test, tainted)
            if not found:
                return None
            test = st.node.test
            body = [s for s in fn.stmts if any(g.node is test and not g.negated for g in s.guards)]
            other = [s for s in fn.stmts if any(g.node is test and g.negated for g in s.guards)]
            a, b = _paths(ctx, body), _paths(ctx, other)
            if a != b:
                return found[0], [f"condition `{ctx.code(test)[:160]}`: " + "; ".join(found[:3]),
                                  f"if taken: {', '.join(sorted(a)) or 'none'}; "
                                  f"otherwise: {', '.join(sorted(b)) or 'none'}"]
            return None
        ifexps = st.ifexps if st.ifexps is not None else [
            n for part in _header(st) for n in walk(part) if isinstance(n, cst.IfExp)]
        for n in ifexps:
            found = signs(ctx, n.test, tainted)
            names = [{x.split(".")[-1] for x in (dotted(m) for m in walk(side)
                                                 if isinstance(m, (cst.Name, cst.Attribute)))
                      if S.TRAIN_OR_SCORE.match(x.split(".")[-1] or "")} for side in (n.body, n.orelse)]
            if found and names[0] != names[1]:
                return found[0], [f"`{ctx.code(n)[:160]}`: " + "; ".join(found[:3])]
        return None
