"""The TorchDispatchMode the tracer runs under: a thin per-thread object that sees every aten
op, returns at once for ops whose inputs carry nothing, unions coarse masks for the bulk of
traced ops, and hands the rest to the Tracer's slow path (propagate.py). Also: when a composite
op must be decomposed (under inference_mode composite ops reach the mode whole)."""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch

from harness.dynamic.trace import provenance as P
from harness.dynamic.trace import torch_compat as C

if TYPE_CHECKING:
    from harness.dynamic.trace.tracer import Tracer

Tensor = torch.Tensor

# OpOverload -> is it CompositeImplicitAutograd (asked once per op)
_COMPOSITE: dict = {}


def needs_decompose(infos: dict, func, args, kwargs) -> bool:
    """Composite ops reach the mode whole only under inference_mode. Decompose them when
    a rule needs the primitives: loss/log-softmax ops, or inputs with position or score
    maps. Ops on coarse-only inputs (matmul, linear, layer_norm on activations) run whole:
    the coarse union is the same either way, and far cheaper."""
    if C.op_name(func) in P.MUST_DECOMPOSE:
        return True
    for a in itertools.chain(args, kwargs.values()):
        if isinstance(a, Tensor):
            i = infos.get(id(a.untyped_storage()))
            if i is not None and (i.pmap is not None or i.smap is not None or i.stag or i.mark):
                return True
        elif type(a) in (list, tuple):
            for b in a:
                if isinstance(b, Tensor):
                    i = infos.get(id(b.untyped_storage()))
                    if i is not None and (i.pmap is not None or i.smap is not None or i.stag or i.mark):
                        return True
    return False


def _flat(args: tuple) -> list:
    return [b for a in args for b in (a if type(a) in (list, tuple) else (a,))]


def _dispatch(self, func, types, args=(), kwargs=None):
    """`__torch_dispatch__` of both mode classes (one body; a class attribute, so no extra call)."""
    if kwargs is None:
        kwargs = {}
    tr = self.tracer
    if tr.paused:
        return func(*args, **kwargs)
    facts = self._ops.get(id(func))
    if facts is None or facts[0] is not func:
        facts = self._op_facts(func)
    comp = facts[1]
    if comp and needs_decompose(tr.infos, func, args, kwargs):
        with self:
            out = C.decompose(func, args, kwargs)
        if out is not NotImplemented:
            return out
    out = facts[4](*args, **kwargs)
    plan = facts[3]
    if (plan.is_view or plan.skip) and facts[2] is None:
        # a third of a step's ops are views (t, view, detach, slice...): they share their input's
        # storage, so there is nothing to record, and the op that uses one sees the same storage
        # (and records the read of written state there); c10d ops are the collective patches'
        return out

    # One pass over the tensor arguments: which carry provenance, and is it coarse only?
    infos = tr.infos
    hit = rich = False
    mask = 0
    grad = False
    in_ids = []
    try:
        # the tensors of a tensor list (cat, stack, index) are arguments like any other
        for a in (_flat(args) if facts[5] else args):
            if isinstance(a, Tensor):
                k = id(a.untyped_storage())
                in_ids.append(k)
                i = infos.get(k)
                if i is None:
                    continue
                hit = True
                if k in tr._watch and not tr._in_step:
                    tr._reads.add(tr._watch[k])
                if i.pmap is not None or i.smap is not None or i.stag or i.mark is not None:
                    rich = True
                else:
                    m = i.mask
                    if m and m is not mask:
                        mask = m if not mask else (mask | m)
                    grad = grad or i.grad
            elif type(a) in (list, tuple):  # not in the schema's tensor lists: the slow path looks
                for b in a:
                    if isinstance(b, Tensor) and id(b.untyped_storage()) in infos:
                        hit = rich = True
                        break
        if kwargs:
            for a in kwargs.values():
                if isinstance(a, Tensor) and id(a.untyped_storage()) in infos:
                    hit = rich = True
    except (RuntimeError, NotImplementedError):  # tensors without storage
        return out
    try:
        if not hit:
            special = facts[2]
            if special is not None:
                special(func, args, kwargs, out)
            return out
        if plan.skip or plan.is_view:
            return out  # a view with a special handler (lift_fresh) whose input already carries provenance
        outs = (out,) if isinstance(out, Tensor) else out if type(out) in (tuple, list) else None
        if plan.simple and not rich and outs is not None:
            # the bulk of traced ops: activations, logits, grads -- a mask union on each new output
            # (an attention's (out, logsumexp) as well); an output that is an input has it already
            grad = grad or C.in_backward()
            if (mask or grad) and not tr.scores_only:
                for o in outs:
                    if isinstance(o, Tensor) and id(o.untyped_storage()) not in in_ids:
                        info = tr._info_for(o, create=True)
                        info.mask = mask
                        info.grad = grad
                        info.gen += 1
            return out
        tr._on_op(func, args, kwargs, out, plan)
    except Exception as exc:  # a tracer bug must not change what the submission computes
        tr._internal_error(func, exc)
    return out


class TracerMode(C.TorchDispatchMode):
    """Thin per-thread mode object; all state lives in the Tracer."""

    def __init__(self, tracer: Tracer):
        super().__init__()
        self.tracer = tracer
        # id(op) -> (op, composite?, the tracer's special handler or None, its OpPlan, what runs it,
        # does it take a tensor list?). OpOverload.__hash__ is Python code, and the composite /
        # special / plan lookups hashed each op ~2 times (~30k Python calls per toy TTT run); an
        # int key hashes in C. The op is kept in the value and compared, so an id reused by
        # another object is never taken for it.
        self._ops: dict[int, tuple] = {}

    def _op_facts(self, func) -> tuple:
        comp = _COMPOSITE.get(func)
        if comp is None:
            comp = _COMPOSITE[func] = C.is_composite_implicit(func)
        facts = self._ops[id(func)] = (func, comp, self.tracer.special.get(func), self.tracer._plan(func),
                                       C.op_callable(func), C.takes_tensor_list(func))
        return facts

    __torch_dispatch__ = _dispatch  # torch wraps it in torch._dynamo.disable (see EagerTracerMode)

    @staticmethod
    def of(tracer: "Tracer") -> "TracerMode":
        """The mode for this tracer's config: without torch's per-op dynamo guard when the run
        is eager only (see EagerTracerMode)."""
        return (EagerTracerMode if tracer.cfg.eager_only else TracerMode)(tracer)


class EagerTracerMode(TracerMode):
    """The same mode without the `torch._dynamo.disable` wrapper torch puts around every
    `__torch_dispatch__` (three Python calls per op: ~0.1 of the eval's time at toy scale on
    the TTT path). Only for runs where torch.compile is shimmed to eager, so dynamo never
    evaluates a frame while the mode is active (the bootstrap sets `eager_only` then)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    __torch_dispatch__ = _dispatch
