"""The tracer's slow path: how provenance flows through one op whose inputs carry more than
a coarse mask (position maps, score maps, score tags, marks) or that writes in place -- the
maps of fresh outputs (replayed per provenance.RULES), the masks / maps / tags of in-place
destinations, and the hand-off to loss ops, updates and score sinks."""
from __future__ import annotations

from typing import Any

import torch

from harness.dynamic.trace import provenance as P
from harness.dynamic.trace import torch_compat as C
from harness.dynamic.trace.tracer.losses import KEYED_LOOKUPS, score_state
from harness.dynamic.trace.tracer.storage import Info, union_stags

Tensor = torch.Tensor


class PropagationMixin:
    """Tracer methods called from the dispatch mode (`_on_op`) for ops it cannot settle."""

    def _on_op(self, func, args, kwargs, out, plan) -> None:
        """`plan`: the op's OpPlan, from the mode, which has returned for views and c10d ops."""
        if plan.simple and self._coarse_only(args, kwargs, out):
            return
        if plan.mut_pos == (0,) and not plan.mut_kw and plan.rule.kind == "pointwise" \
                and self._inplace_coarse(args, kwargs):
            return
        name, rule = plan.name, plan.rule

        # tensor inputs and their infos: (argument position / (position, list slot) / keyword, tensor, info)
        ins: list[tuple[Any, Tensor, Info | None]] = []
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                ins.append((i, a, self.infos.get(id(a.untyped_storage()))))
            elif isinstance(a, (list, tuple)):
                for j, b in enumerate(a):
                    if isinstance(b, Tensor):
                        ins.append(((i, j), b, self.infos.get(id(b.untyped_storage()))))
        for k, a in kwargs.items():
            if isinstance(a, Tensor):
                ins.append((k, a, self.infos.get(id(a.untyped_storage()))))

        if name in P.HOST_READ_OPS:
            t, info = ins[0][1], ins[0][2]
            self._host_read(t, info, "item")
            return

        dest_ids = set(plan.mut_pos) | set(plan.mut_kw)
        dests = [(k, t, info) for (k, t, info) in ins
                 if (k in dest_ids) or (isinstance(k, tuple) and k[0] in dest_ids)]
        in_storages = {id(t.untyped_storage()) for _, t, _ in ins}
        outs = [o for o in (out if isinstance(out, (list, tuple)) else (out,)) if isinstance(o, Tensor)]
        fresh = [o for o in outs if id(o.untyped_storage()) not in in_storages]

        if rule.kind == "loss" or (name in P.LOOKUP_LOSS_OPS and ins and ins[0][2] is not None
                                   and ins[0][2].mark is not None):
            if self._loss_op(func, name, rule, args, kwargs, out, ins):
                return

        if dests:
            self._on_write(func, name, rule, args, kwargs, ins, dests)
        if fresh:
            self._on_fresh(func, name, rule, args, kwargs, ins, fresh)
        if name in KEYED_LOOKUPS and not self.scores_only:
            self._note_lookup(rule, args)

    def _coarse_only(self, args, kwargs, out) -> bool:
        """Fast path for the bulk of traced ops (activations, logits, grads): every tagged input
        carries only a coarse mask. Sets the output's mask; False when a richer rule is needed."""
        infos = self.infos
        mask = 0
        grad = False
        in_ids = set()
        for a in args:
            if isinstance(a, Tensor):
                k = id(a.untyped_storage())
                in_ids.add(k)
                i = infos.get(k)
            elif type(a) in (list, tuple):
                return False
            else:
                continue
            if i is None:
                continue
            if i.pmap is not None or i.smap is not None or i.stag or i.mark is not None:
                return False
            m = i.mask
            if m and m is not mask:
                mask = m if not mask else (mask | m)
            grad = grad or i.grad
        for a in kwargs.values():
            if isinstance(a, Tensor):
                return False
        if isinstance(out, Tensor):
            o = out
        elif isinstance(out, (list, tuple)) and len(out) == 1 and isinstance(out[0], Tensor):
            o = out[0]
        else:
            return False
        st = o.untyped_storage()
        if id(st) in in_ids:
            return True  # aliases an input: nothing new
        grad = grad or C.in_backward()
        if not mask and not grad:
            return True
        if self.scores_only:
            return True
        info = self._info_for(o, create=True)
        info.mask = mask
        info.grad = grad
        info.gen += 1
        return True

    def _inplace_coarse(self, args, kwargs) -> bool:
        """Fast path for an in-place pointwise op on coarse-only tensors (an optimizer's per-
        parameter `p.add_(buf)`, `buf.mul_(m)`: most of the slow-path ops of a TTT step). Does
        what `_on_write` does for that case; False when any input carries more than a mask."""
        infos = self.infos
        d = args[0]
        if not isinstance(d, Tensor):
            return False
        dk = id(d.untyped_storage())
        dinfo = infos.get(dk)
        if dinfo is not None and (dinfo.pmap is not None or dinfo.smap is not None or dinfo.stag
                                  or dinfo.mark is not None):
            return False
        mask = 0
        src_grad = False
        tagged = False
        for a in args[1:]:
            if isinstance(a, Tensor):
                i = infos.get(id(a.untyped_storage()))
                if i is None:
                    continue
                if i.pmap is not None or i.smap is not None or i.stag or i.mark is not None:
                    return False
                tagged = True
                mask |= i.mask
                src_grad = src_grad or i.grad
            elif type(a) in (list, tuple):
                return False
        for a in kwargs.values():
            if isinstance(a, Tensor):
                return False
        src_grad = C.in_backward() or src_grad
        reg = None
        if self.scores_only:
            mask = 0
        else:
            reg = self.registry.get(dk)
            if reg is not None and mask:
                self._update(reg, mask, src_grad, dk)
        if dinfo is None:
            if not (tagged or reg is not None):
                return True
            dinfo = self._info_for(d, create=True)
        dinfo.gen += 1
        dinfo.mask |= mask
        dinfo.grad = src_grad if reg is not None else (dinfo.grad or src_grad)
        return True

    # -- outputs in new storages
    def _on_fresh(self, func, name, rule, args, kwargs, ins, fresh) -> None:
        tagged = [(k, t, i) for (k, t, i) in ins if i is not None]
        grad_pass = C.in_backward()  # a gradient is not a score: score tags stop here
        grad = grad_pass or any(i.grad for _, _, i in tagged)
        map_of = lambda x: self._pmap(x, self.infos.get(id(x.untyped_storage())))  # noqa: E731
        smap_of = lambda x: self._smap(x, self.infos.get(id(x.untyped_storage())))  # noqa: E731
        has_pmap = any(i.pmap is not None for _, _, i in tagged)
        has_smap = any(i.smap is not None for _, _, i in tagged)
        has_coarse = any((i.pmap is None and i.mask) for _, _, i in tagged)
        single = len(fresh) == 1
        for o in fresh:
            pm = None
            sm = None
            if single and has_pmap and P.is_token_dtype(o.dtype):
                pm = self._derive_map(func, name, rule, args, kwargs, o, map_of)
            if single and has_smap and not grad_pass:
                sm = self._derive_smap(func, name, rule, args, kwargs, o, smap_of, ins)
            info = self._info_for(o, create=True)
            info.gen += 1
            info.grad = grad
            if pm is not None:
                info.pmap = P.new_flat(o, C.storage_nelems(o), pm)
                info.itemsize = o.element_size()
                extra = 0
                if not self.scores_only:
                    for _, t, i in tagged:
                        extra |= i.mask if i.pmap is not None else self._mask_of(t, i)
                info.mask = extra
            elif not self.scores_only:
                m = 0
                for _, t, i in tagged:
                    mi = self._mask_of(t, i)
                    if mi and mi is not m:
                        m = mi if not m else (m | mi)
                info.mask = m
            if sm is not None:
                info.smap = P.new_flat(o, C.storage_nelems(o), sm)
                info.itemsize = o.element_size()
                info.pstate = score_state(name, args, ins)
                if info.pstate == "rescore":
                    info.pstate = None
                    self._rescore(o, info)
                rest = [(t, i) for _, t, i in tagged if i.smap is None and i.stag]
                if rest:
                    info.stag = union_stags(self._stag_of(t, i) for t, i in rest)
            elif (has_smap or any(i.stag for _, _, i in tagged)) and not grad_pass:
                info.stag = union_stags(self._stag_of(t, i) for _, t, i in tagged if i.smap is not None or i.stag)
            if name in P.MARK_PRODUCERS:
                info.mark = P.MARK_PRODUCERS[name]
            trans = P.MARK_TRANSFORMS.get(name)
            if trans and tagged and tagged[0][2].mark in trans and tagged[0][0] == 0:
                info.mark = trans[tagged[0][2].mark]
            if info.pmap is None and info.smap is None and not info.mask and not info.stag and not info.mark \
                    and not info.grad:
                self.infos.pop(id(o.untyped_storage()), None)
        del has_coarse

    def _derive_map(self, func, name, rule, args, kwargs, o, map_of) -> Tensor | None:
        try:
            if rule.kind in ("struct", "copy", "pad"):
                return P.replay(func, rule, args, kwargs, map_of)
            if rule.kind == "lookup":
                data_tagged = any(isinstance(args[i], Tensor) and map_of(args[i]) is not None
                                  for i in rule.data if i < len(args))
                m = P.index_map(func, rule, args, o, map_of)
                if data_tagged:
                    r = P.replay(func, rule, args, kwargs, map_of)
                    if r is None:
                        return None
                    m = r if m is None else torch.maximum(r, m)
                return m
            if rule.kind == "pointwise":
                # coarse-only inputs (float activations) make the result coarse
                for a in list(args) + list(kwargs.values()):
                    if isinstance(a, Tensor) and a.dim() > 0:
                        i = self.infos.get(id(a.untyped_storage()))
                        if i is not None and i.pmap is None and i.mask:
                            return None
                if name == "aten::where" and len(args) == 3 and isinstance(args[0], Tensor):
                    return P.where_map(args, o, map_of)
                return P.pointwise_max(args, kwargs, o, map_of)
        except Exception as exc:
            self._internal_error(func, exc)
        return None

    def _derive_smap(self, func, name, rule, args, kwargs, o, smap_of, ins) -> Tensor | None:
        try:
            if rule.kind in ("struct", "copy", "pad", "lookup"):
                if rule.kind == "lookup":
                    # only the data side may carry scores
                    if any(isinstance(args[i], Tensor) and smap_of(args[i]) is not None
                           for i in rule.index if i < len(args) and isinstance(args[i], Tensor)):
                        return None
                return P.replay(func, rule, args, kwargs, smap_of)
            if rule.kind == "pointwise":
                scored = [a for a in list(args) + list(kwargs.values())
                          if isinstance(a, Tensor) and smap_of(a) is not None]
                if len(scored) != 1:
                    return None
                src = scored[0]
                sm = smap_of(src).expand(o.shape).clone()
                if name in P.MASKING_OPS:
                    sm = _drop_masked(name, args, src, sm, o)
                return sm
        except Exception as exc:
            self._internal_error(func, exc)
        return None

    # -- in-place writes
    def _on_write(self, func, name, rule, args, kwargs, ins, dests) -> None:
        grad = C.in_backward()
        # sources of a destination: every other tensor input; for a foreach op's list slot j,
        # the inputs in slot j and the plain ones. Grouped once: an optimizer step's foreach
        # ops have a slot per parameter, and a scan of all inputs per slot is quadratic.
        slots: dict[Any, list] = {}
        for e in ins:
            slots.setdefault(e[0][1] if isinstance(e[0], tuple) else None, []).append(e)
        plain = slots.get(None, [])
        for dk, d, dinfo in dests:
            if isinstance(dk, tuple):
                srcs = [e for e in slots.get(dk[1], []) if e[0] != dk] + plain
            else:
                srcs = [e for e in ins if e[0] != dk]
            src_tagged = [(k, t, i) for k, t, i in srcs if i is not None]
            src_mask = 0
            if not self.scores_only:
                for _, t, i in src_tagged:
                    mi = self._mask_of(t, i)
                    if mi and mi is not src_mask:
                        src_mask = mi if not src_mask else (src_mask | mi)
            src_grad = grad or any(i.grad for _, _, i in src_tagged)
            src_stag = None
            if not grad:
                src_stag = union_stags(self._stag_of(t, i) for _, t, i in src_tagged
                                             if i.smap is not None or i.stag)
            reg = self.registry.get(id(d.untyped_storage())) if not self.scores_only else None
            if reg is not None:
                src_stag = None  # an update is not a score record

            # a write carrying validation positions into persistent state: an Update
            if reg is not None and src_mask:
                self._update(reg, src_mask, src_grad, id(d.untyped_storage()))

            # accumulation of scores into a plain tensor: a score sink
            if src_stag and rule.accumulate and reg is None and not d.requires_grad:
                self._sink(src_stag, "accumulate")

            if dinfo is None and not (src_tagged or reg is not None):
                continue
            if dinfo is None:
                dinfo = self._info_for(d, create=True)
            dinfo.gen += 1
            full = d.numel() * d.element_size() == d.untyped_storage().nbytes()
            if rule.kind in ("fill", "copy_") and full and not src_mask:
                dinfo.mask = 0
                dinfo.stag = None
            if rule.kind == "copy_" and full:
                dinfo.mask = src_mask
                dinfo.stag = None
            else:
                dinfo.mask |= src_mask
            dinfo.grad = dinfo.grad or src_grad
            if reg is not None:
                dinfo.grad = src_grad
            self._write_maps(func, name, rule, args, kwargs, d, dinfo, srcs, src_stag)
            if src_stag and not (dinfo.smap is not None and rule.kind in ("copy_", "index_put")):
                dinfo.stag = union_stags([dinfo.stag or {}, src_stag])

    def _write_maps(self, func, name, rule, args, kwargs, d, dinfo, srcs, src_stag) -> None:
        """Position / score maps of an in-place destination."""
        map_of = lambda x: self._pmap(x, self.infos.get(id(x.untyped_storage())))  # noqa: E731
        smap_of = lambda x: self._smap(x, self.infos.get(id(x.untyped_storage())))  # noqa: E731
        src_pmaps = [(k, t) for k, t, i in srcs if i is not None and i.pmap is not None]
        src_smaps = [(k, t) for k, t, i in srcs if i is not None and i.smap is not None]
        try:
            if P.is_token_dtype(d.dtype) and (dinfo.pmap is not None or src_pmaps):
                if dinfo.pmap is None or d.element_size() != dinfo.itemsize:
                    dinfo.pmap = torch.full((C.storage_nelems(d),), -1, dtype=torch.int64)
                    dinfo.itemsize = d.element_size()
                dv = P.view_of(dinfo.pmap, d)
                if rule.kind == "fill":
                    dv.fill_(-1)
                elif rule.kind == "copy_":
                    src = args[1]
                    m = map_of(src)
                    dv.copy_(m if m is not None else torch.full(src.shape, -1, dtype=torch.int64))
                elif rule.kind == "index_put":
                    vals = args[2]
                    m = map_of(vals)
                    acc = bool(args[3]) if len(args) > 3 else bool(kwargs.get("accumulate", False))
                    if acc:
                        pass  # counts: the destination keeps its map; the coarse mask has the union
                    else:
                        dv.index_put_(tuple(args[1]), m if m is not None else
                                      torch.full(vals.shape, -1, dtype=torch.int64))
                elif rule.kind == "pointwise":
                    for _, t in src_pmaps:
                        dv.copy_(torch.maximum(dv, map_of(t)))
            if dinfo.smap is not None or src_smaps:
                if rule.kind in ("copy_", "index_put") and src_smaps:
                    if dinfo.smap is None:
                        dinfo.smap = torch.full((C.storage_nelems(d),), -1, dtype=torch.int64)
                        dinfo.itemsize = d.element_size()
                    dv = P.view_of(dinfo.smap, d)
                    if rule.kind == "copy_":
                        dv.copy_(smap_of(args[1]))
                    else:
                        vals = args[2]
                        m = smap_of(vals)
                        if m is not None:
                            dv.index_put_(tuple(args[1]), m)
                elif rule.kind == "fill" and dinfo.smap is not None:
                    P.view_of(dinfo.smap, d).fill_(-1)
                elif dinfo.smap is not None and rule.kind == "copy_":
                    P.view_of(dinfo.smap, d).fill_(-1)
        except Exception as exc:
            self._internal_error(func, exc)


def _drop_masked(name, args, src, sm, o) -> Tensor:
    """Elements a mask zeroes out are not scores: nll * mask, where(cond, nll, 0)."""
    if name == "aten::mul":
        other = args[1] if args[0] is src else args[0]
        if isinstance(other, Tensor):
            sm = sm.masked_fill((other == 0).expand(o.shape), -1)
        elif other == 0:
            sm.fill_(-1)
    elif name == "aten::where":
        cond = args[0]
        if args[1] is src:
            sm = sm.masked_fill((~cond.bool()).expand(o.shape), -1)
        elif len(args) > 2 and args[2] is src:
            sm = sm.masked_fill(cond.bool().expand(o.shape), -1)
    elif name == "aten::masked_fill" and args[0] is src:
        sm = sm.masked_fill(args[1].bool().expand(o.shape), -1)
    return sm
