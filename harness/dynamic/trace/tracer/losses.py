"""Score recognition: loss ops (nll_loss / cross_entropy, or a gather of a log-softmax by a
position-mapped target) become LossOps with per-element target positions and NLLs; a score
blended in probability space after the loss op is re-scored as a new loss op; token-keyed
lookups (embedding / index_select) are checked against the loss's targets (TargetRead)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harness.dynamic.trace import provenance as P
from harness.dynamic.trace import torch_compat as C
from harness.dynamic.trace.events import Frame, LossComputed, TargetRead
from harness.dynamic.trace.tracer.storage import Info

Tensor = torch.Tensor

# lookups whose index may be a hash key of tokens (see LossMixin._check_target_read)
KEYED_LOOKUPS = frozenset({"aten::embedding", "aten::index_select"})


@dataclass
class LossOp:
    id: int
    base: int  # first global score-element id
    n: int
    positions: np.ndarray  # per element: target position (-1: not a validation target)
    nll: np.ndarray  # per element, nats
    grad_enabled: bool
    seq: int  # seq of its LossComputed event
    frame: Frame | None
    recorded: int = 0  # bitmask of elements already Scored
    n_scored_events: int = 0
    reads: frozenset = frozenset()  # written state its forward read (since the last optimizer step)


# A score blended in probability space after the loss op -- -log((1-w)*exp(-nll) + w*q),
# the eval-time n-gram caches of PR #1420 -- is a new score: the value that reaches the sum
# is the blend's, not the loss op's. The chain neg -> exp -> (mixing ops) -> log is followed
# on score maps; at the log a new loss op records the blended NLL for the same positions.
_SAME_STATE = frozenset({"aten::_to_copy", "aten::clone", "aten::contiguous", "aten::alias", "aten::detach",
                         "aten::view", "aten::reshape", "aten::squeeze", "aten::unsqueeze", "aten::flatten",
                         "aten::slice", "aten::select", "aten::expand", "aten::cat", "aten::stack",
                         "aten::index", "aten::index_select", "aten::masked_select", "aten::lift_fresh"})
_MIXING = frozenset({"aten::add", "aten::sub", "aten::rsub", "aten::mul", "aten::div", "aten::where",
                     "aten::addcmul", "aten::lerp", "aten::clamp", "aten::clamp_min"})


def score_state(name: str, args, ins) -> str | None:
    """What the score map of an op's output holds, from its scored input's state (see above);
    "rescore" at the log of a blend."""
    src = next((i for _, _, i in ins if i is not None and i.smap is not None), None)
    state = src.pstate if src is not None else None
    if name in _SAME_STATE:
        return state
    if name == "aten::neg":
        return "neg" if state is None else (None if state == "neg" else "blend" if state else None)
    if name == "aten::mul" and state in (None, "neg") and any(
            isinstance(a, (int, float)) and float(a) == -1.0 for a in args[1:]):
        return "neg" if state is None else None
    if name == "aten::exp":
        return "prob" if state == "neg" else None
    if name in _MIXING and state in ("prob", "blend"):
        return "blend"
    if name == "aten::log":
        return "rescore" if state == "blend" else None
    return None


class LossMixin:
    """Tracer methods that create LossOps (`self.loss_ops`, `self._loss_bases`,
    `self._next_score_id`) and check remembered lookups (`self._lookups`)."""

    def _loss_op(self, func, name, rule, args, kwargs, out, ins) -> bool:
        """Register a loss op when its target carries a position map. Returns True when the
        op was handled (outputs tagged)."""
        try:
            if rule.kind == "loss":
                logp, target = args[0], args[1]
                tinfo = self.infos.get(id(target.untyped_storage()))
                tmap = self._pmap(target, tinfo)
                if tmap is None:
                    return False
                weight = args[2] if len(args) > 2 else kwargs.get("weight")
                reduction = int(args[3]) if len(args) > 3 else int(kwargs.get("reduction", 1))
                ignore = int(args[4]) if len(args) > 4 else int(kwargs.get("ignore_index", -100))
                loss = out[0] if isinstance(out, (tuple, list)) else out
                if reduction == 0:
                    per = loss
                else:
                    per = func(logp, target, weight, 0, ignore)
                    per = per[0] if isinstance(per, (tuple, list)) else per
                nll = per.detach().reshape(-1).to(torch.float64).numpy().copy()
                pos = tmap.reshape(-1).numpy().copy()
                pos[(target.reshape(-1) == ignore).numpy()] = -1
                out_t = per if reduction == 0 else None
            else:
                data = args[0]
                dinfo = ins[0][2]
                idx_pos = P.RULES[name].index[0]
                idx = args[idx_pos]
                if isinstance(idx, (list, tuple)):
                    tensors = [x for x in idx if isinstance(x, Tensor)]
                else:
                    tensors = [idx] if isinstance(idx, Tensor) else []
                map_of = lambda x: self._pmap(x, self.infos.get(id(x.untyped_storage())))  # noqa: E731
                if not tensors or all(map_of(x) is None for x in tensors):
                    return False
                loss_t = out if isinstance(out, Tensor) else None
                if loss_t is None or loss_t.is_floating_point() is False:
                    return False
                imap = P.index_map(func, P.RULES[name], args, loss_t, map_of)
                if imap is None:
                    return False
                vals = loss_t.detach().reshape(-1).to(torch.float64).numpy()
                if dinfo.mark == P.LOGP:
                    nll = -vals
                elif dinfo.mark == P.PROB:
                    with np.errstate(divide="ignore"):
                        nll = -np.log(vals)
                else:
                    nll = vals.copy()
                pos = imap.reshape(-1).numpy().copy()
                reduction = 0
                out_t = loss_t
                del data
            grad_enabled = bool(torch.is_grad_enabled())
            op = self._new_loss_op(pos, nll, grad_enabled)
            # outputs: a per-element score map, or a coarse score tag on the reduced value
            tagged = [(k, t, i) for (k, t, i) in ins if i is not None]
            mask = 0
            if not self.scores_only:
                for _, t, i in tagged:
                    mask |= self._mask_of(t, i)
            grad = C.in_backward() or any(i.grad for _, _, i in tagged)
            outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, Tensor)]
            for j, o in enumerate(outs):
                info = self._info_for(o, create=True)
                info.gen += 1
                info.mask = mask
                info.grad = grad
                if j > 0:
                    continue  # total_weight
                if out_t is not None and reduction == 0:
                    ids = torch.arange(op.base, op.base + op.n, dtype=torch.int64).reshape(o.shape)
                    info.smap = P.new_flat(o, C.storage_nelems(o), ids)
                    info.itemsize = o.element_size()
                else:
                    valid = np.nonzero(op.positions >= 0)[0]
                    info.stag = {op.id: P.mask_from_positions(valid)}
            return True
        except Exception as exc:
            self._internal_error(func, exc)
            return False

    def _rescore(self, o: Tensor, info: Info) -> None:
        """`o` = log of a blended probability: a new loss op over the same target positions."""
        try:
            ids = info.smap.reshape(-1).numpy() if o.numel() == info.smap.numel() else None
            if ids is None:
                v = self._smap(o, info)
                ids = v.reshape(-1).numpy() if v is not None else None
            if ids is None:
                return
            pos = np.full(ids.size, -1, dtype=np.int64)
            valid = ids >= 0
            if valid.any():
                which = np.searchsorted(self._loss_bases, ids[valid], "right") - 1
                src_pos = np.empty(int(valid.sum()), dtype=np.int64)
                for k in np.unique(which).tolist():
                    sel = which == k
                    op = self.loss_ops[k]
                    src_pos[sel] = op.positions[ids[valid][sel] - op.base]
                pos[valid] = src_pos
            was, self.paused = self.paused, True  # our own read of the values is not a host read
            try:
                vals = o.detach().reshape(-1).to(torch.float64).numpy().copy()
            finally:
                self.paused = was
            op = self._new_loss_op(pos, -vals, bool(torch.is_grad_enabled()))
            new_ids = torch.arange(op.base, op.base + op.n, dtype=torch.int64)
            new_ids[torch.from_numpy(~valid)] = -1
            info.smap = P.new_flat(o, C.storage_nelems(o), new_ids.reshape(o.shape))
        except Exception as exc:
            self._internal_error("rescore", exc)

    def _new_loss_op(self, pos: np.ndarray, nll: np.ndarray, grad_enabled: bool) -> LossOp:
        if not self.scores_only:
            # A `p.data = other` swap made before this loss changed the weights it was computed
            # with: record it first, so its Update precedes this LossComputed in the timeline
            # (vector_to_parameters TTT, submissions/evasion/vector_swap_update).
            self._check_param_swaps()
        with self._lock:
            frame = self._frame_deep()
            ev = self._emit(LossComputed, loss_op=len(self.loss_ops), positions=P.ranges_of_positions(pos),
                            grad_enabled=grad_enabled, frame=frame)
            op = LossOp(id=len(self.loss_ops), base=self._next_score_id, n=int(pos.size), positions=pos,
                        nll=nll, grad_enabled=grad_enabled, seq=ev.seq, frame=frame)
            op.reads = frozenset(self._reads)
            if self._lookups:
                self._check_target_read(pos, frame)
                # only lookups of this forward pass feed this loss: a later forward starts afresh
                # (windows of another batch would compare positions that are not aligned)
                self._lookups.clear()
            self._next_score_id += max(op.n, 1)
            self.loss_ops.append(op)
            self._loss_bases = np.append(self._loss_bases, op.base)
            return op

    def _frame_deep(self) -> Frame | None:
        return self.frames.find(2)

    # -- token-keyed lookups read by a later loss
    def _note_lookup(self, rule, args) -> None:
        """Remember the position map of a lookup's index (a token embedding, a hash-bucket
        embedding) so a later loss can check that no target keyed its own prediction."""
        try:
            idx = args[rule.index[0]]
            if not isinstance(idx, Tensor) or idx.numel() < self.cfg.min_match:
                return
            m = self._pmap(idx, self.infos.get(id(idx.untyped_storage())))
            if m is None:
                return
            self._lookups.append((m.reshape(-1).numpy().copy(), self.frames.find(4)))
        except Exception as exc:
            self._internal_error("lookup", exc)

    def _check_target_read(self, pos: np.ndarray, loss_frame: Frame | None) -> None:
        """A lookup whose index, element for element, carries the position this loss scores as
        the target there, or a later one: the prediction for that target was keyed on the
        target's own token (or beyond). A causal model's inputs sit before their targets."""
        valid = pos >= 0
        n_valid = int(valid.sum())
        if n_valid < 8:
            return
        for keyed, frame in self._lookups:
            if len(keyed) != len(pos):
                continue
            same = valid & (keyed >= pos)  # the input for target p holds token p or a later one
            k = int(same.sum())
            if k < max(8, n_valid // 2):
                continue
            site = (frame.path, frame.line) if frame else None
            if site in self._target_read_sites:
                continue
            self._target_read_sites.add(site)
            self._emit(TargetRead, positions=P.ranges_of_positions(pos[same]), frame=frame,
                       loss_frame=loss_frame)
