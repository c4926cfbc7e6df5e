"""Update recognition: which storages are persistent state (parameters and buffers named
through module hooks, optimizer state through step hooks, `p.data = ...` swaps) and the
Update events of writes into them that carry validation positions; torch.save of such
values (an "artifact" update)."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from harness.dynamic.trace import provenance as P
from harness.dynamic.trace.events import Update

Tensor = torch.Tensor


@dataclass
class Registration:
    """A storage that is persistent state: named parameter, buffer or optimizer state."""

    name: str
    kind: str  # "parameter", "buffer", "optimizer-state"
    provisional: bool
    ref: Any


class UpdateMixin:
    """Tracer methods over `self.registry` (storage id -> Registration), the optimizer-step
    state (`self._in_step`, `self._step_id`, `self._step_frame`) and the written-state watch
    (`self._watch`, `self._watched_names`, `self._reads`)."""

    def _update(self, reg: Registration, mask: int, grad: bool, storage_id: int | None = None) -> None:
        if storage_id is not None and reg.kind != "optimizer-state":
            self._watch[storage_id] = reg.name
            self._watched_names.add(reg.name)
        if self._n_updates >= self.cfg.max_update_events:
            return
        via = "optimizer-step" if self._in_step else ("gradient" if grad else "direct")
        key = (reg.name, via, self._step_id if self._in_step else -1)
        last = self._last_update.get(key)
        if last is not None and last == mask:
            return  # the same positions written again in the same step (momentum, decay, ...)
        self._last_update[key] = mask
        if len(self._last_update) > 4096:
            self._last_update.clear()
        if reg.kind == "optimizer-state" and self._in_step:
            # momentum / second-moment writes repeat what the step writes into the parameter:
            # one optimizer-state event per step and position set is enough
            skey = (self._step_id, mask)
            if skey in self._state_seen:
                return
            if len(self._state_seen) > 4096:
                self._state_seen.clear()
            self._state_seen.add(skey)
        self._n_updates += 1
        self._emit(Update, target=reg.name, target_kind=reg.kind, via=via, positions=P.ranges_of_mask(mask),
                   frame=self.frames.find(4), step_frame=self._step_frame if self._in_step else None)

    def _register(self, t: Tensor, name: str, kind: str, provisional: bool) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = id(st)
        cur = self.registry.get(key)
        if cur is not None:
            upgrade = (cur.provisional and not provisional) or (
                not provisional and len(name) > len(cur.name) and name.endswith("." + cur.name))
            if not upgrade:
                return
        registry, watch = self.registry, self._watch
        tracer = weakref.ref(self)

        def gone(_ref, key=key, registry=registry, watch=watch):
            c = registry.get(key)
            if c is not None and c.ref is _ref:
                del registry[key]
                name = watch.pop(key, None)  # the id may be reused by a new storage: not the same state
                tr = tracer()
                if name is not None and tr is not None and name not in watch.values():
                    # freed state is read by no later forward: a TTT eval's LoRA, gone when the
                    # eval returns, is not read by the eval after it (PR #826). A parameter that
                    # lives on (its storage swapped: `vector_to_parameters`) is not freed state.
                    alive = tr._param_names.get(name)
                    if alive is None or alive() is None:
                        tr._reads.discard(name)

        self.registry[key] = Registration(name=name, kind=kind, provisional=provisional, ref=weakref.ref(st, gone))
        if kind == "parameter":
            self._param_refs.append((weakref.ref(t), key))
            self._param_names[name] = weakref.ref(t)

    def _check_param_swaps(self) -> None:
        """`p.data = other` swaps a parameter's storage without any op: re-register, and a
        swapped-in storage that carries validation positions is an Update (direct)."""
        alive = []
        for ref, key in self._param_refs:
            p = ref()
            if p is None:
                continue
            try:
                st = p.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            if id(st) != key:
                old = self.registry.get(key)
                name = old.name if old else "<parameter>"
                self._register(p, name, "parameter", provisional=False)
                info = self.infos.get(id(st))
                if info is not None and info.mask:
                    reg = self.registry.get(id(st))
                    if reg is not None:
                        self._update(reg, info.mask, info.grad, id(st))
                alive.append((ref, id(st)))
            else:
                alive.append((ref, key))
        self._param_refs = alive

    def _install_hooks(self) -> None:
        import torch.nn.modules.module as mm

        def on_param(module, name, param):
            if param is not None and not self.paused:
                self._register(param, f"{type(module).__name__}.{name}", "parameter", provisional=True)

        def on_buffer(module, name, buf):
            if buf is not None and not self.paused:
                self._register(buf, f"{type(module).__name__}.{name}", "buffer", provisional=True)

        def on_call(module, args):
            if self.paused or module in self._seen_modules:
                return None
            self._name_module(module)
            return None

        self._scan_existing_modules()
        handles = [mm.register_module_parameter_registration_hook(on_param),
                   mm.register_module_buffer_registration_hook(on_buffer),
                   mm.register_module_forward_pre_hook(on_call)]
        import torch.optim.optimizer as opt

        def pre(optimizer, args, kwargs):
            if self.paused:
                return
            self._in_step += 1
            self._reads = set()  # a new step: what the next forward reads starts afresh
            self._step_id += 1
            self._step_frame = self.frames.find(3)
            self._name_optimizer(optimizer)

        def post(optimizer, args, kwargs):
            if self.paused:
                return
            self._name_optimizer(optimizer)
            self._in_step = max(0, self._in_step - 1)

        handles += [opt.register_optimizer_step_pre_hook(pre), opt.register_optimizer_step_post_hook(post)]
        self.hook_handles.extend(handles)
        self._undo.append(lambda: [h.remove() for h in handles])

    def _scan_existing_modules(self) -> None:
        """Modules built before install (tests; scripts that import a model): name the
        parameters of every root module now. One pass over the heap, at install only."""
        import gc

        module_type = torch.nn.Module
        mods = [o for o in gc.get_objects() if issubclass(type(o), module_type)]
        children = set()
        for m in mods:
            for c in m.children():
                children.add(id(c))
        for m in mods:
            if id(m) not in children:
                self._name_module(m)

    def _name_module(self, module: torch.nn.Module) -> None:
        cls = type(module).__name__
        k = self._root_names.get(cls, 0) + 1
        self._root_names[cls] = k
        prefix = "" if k == 1 else f"{cls}#{k}:"
        for name, p in module.named_parameters(remove_duplicate=True):
            self._register(p, prefix + _clean(name), "parameter", provisional=False)
        for name, b in module.named_buffers(remove_duplicate=True):
            if b is not None:
                self._register(b, prefix + _clean(name), "buffer", provisional=False)
        for m in module.modules():
            self._seen_modules.add(m)

    def _name_optimizer(self, optimizer: Any) -> None:
        for group in getattr(optimizer, "param_groups", []):
            for p in group.get("params", []):
                if isinstance(p, Tensor) and id(p.untyped_storage()) not in self.registry:
                    self._register(p, f"<param {tuple(p.shape)}>", "parameter", provisional=True)
        state = getattr(optimizer, "state", {})
        for p, st in list(state.items()):
            if not isinstance(st, dict):
                continue
            reg = self.registry.get(id(p.untyped_storage())) if isinstance(p, Tensor) else None
            pname = reg.name if reg else "<param>"
            for key, v in st.items():
                if isinstance(v, Tensor) and v.dim() > 0 and id(v.untyped_storage()) not in self.registry:
                    self._register(v, f"{pname}:{key}", "optimizer-state", provisional=False)

    def _serialized(self, obj) -> None:
        """torch.save of model state: the artifact is persistent state the final eval loads
        back (through bytes and files provenance cannot follow), so values derived from
        validation tokens in it (GPTQ statistics from val, pre-quant TTT weights) are an Update
        of target_kind "artifact". Raw token tensors (a position map) are not model state."""
        mask = 0
        seen: set[int] = set()
        stack = [obj]
        while stack:
            x = stack.pop()
            if id(x) in seen:
                continue
            seen.add(id(x))
            if isinstance(x, Tensor):
                info = self.infos.get(id(x.untyped_storage()))
                if info is not None and info.pmap is None:
                    mask |= self._mask_of(x, info)
            elif isinstance(x, dict):
                stack.extend(x.values())
            elif isinstance(x, (list, tuple)):
                stack.extend(x)
            elif hasattr(x, "state_dict") and callable(x.state_dict):  # a whole module
                stack.append(x.state_dict())
        if mask:
            self._emit(Update, target="torch.save(...)", target_kind="artifact", via="direct",
                       positions=P.ranges_of_mask(mask), frame=self.frames.find(3), step_frame=None)


def _clean(name: str) -> str:
    """Drop wrapper prefixes (DDP's module., torch.compile's _orig_mod.)."""
    for pre in ("module.", "_orig_mod."):
        while name.startswith(pre):
            name = name[len(pre):]
    return name
