"""OpPlan: the per-op facts the dispatch mode and the slow path need, computed once per
OpOverload (namespace, provenance rule, which arguments it mutates, view or not) and cached
by the Tracer."""
from __future__ import annotations

from typing import Any, NamedTuple

from harness.dynamic.trace import provenance as P
from harness.dynamic.trace import torch_compat as C


class OpPlan(NamedTuple):
    skip: bool  # not an aten/prims op (c10d: the collective patches), or shape-only
    name: str  # "aten::add", ...
    rule: Any  # the provenance rule (provenance.rule_for)
    mut_pos: tuple  # positions of the arguments the op writes in place
    mut_kw: tuple  # names of the keyword arguments it writes in place
    is_view: bool  # a view op: the output shares its input's storage, nothing to do
    simple: bool  # no writes, no loss / host-read / mark handling: the coarse fast path may do


def make_plan(func) -> OpPlan:
    name = C.op_name(func)
    skip = C.namespace(func) not in ("aten", "prims") or name in P.SHAPE_ONLY
    rule = P.rule_for(name, C.is_pointwise(func))
    mut_pos, mut_kw = C.mutated_args(func)
    try:
        is_view = bool(func.is_view) and not (mut_pos or mut_kw)
    except AttributeError:
        is_view = False
    # a mark transform (clone, neg, exp...) of unmarked inputs is a mask union: marked inputs are
    # not coarse, so they still take the slow path
    simple = (not (mut_pos or mut_kw) and rule.kind not in ("loss",) and name not in P.LOOKUP_LOSS_OPS
              and name not in P.HOST_READ_OPS and name not in P.MARK_PRODUCERS)
    return OpPlan(skip, name, rule, mut_pos, mut_kw, is_view, simple)
