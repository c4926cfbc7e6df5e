"""Patches of public entry points the dispatch mode does not see (Tensor.numpy / tolist:
host reads; torch.frombuffer: data entering torch; torch.save: artifacts; the collectives,
in collectives.py), and the mode's entry into new threads. Every patch pushes its undo onto
`self._undo`."""
from __future__ import annotations

import functools
import threading

import torch

from harness.dynamic.trace.tracer.mode import TracerMode

Tensor = torch.Tensor


class PatchMixin:
    """Tracer methods run once at install."""

    def _install_patches(self) -> None:
        tr = self

        def patch(owner, attr, make):
            real = getattr(owner, attr)
            setattr(owner, attr, make(real))
            self.patched.append((owner, attr, getattr(owner, attr)))  # as read back (a function on a class)
            self._undo.append(lambda: setattr(owner, attr, real))

        def host(how):
            def make(real):
                @functools.wraps(real)
                def wrapper(t, *a, **k):
                    if not tr.paused and tr.installed and isinstance(t, Tensor):
                        try:
                            info = tr.infos.get(id(t.untyped_storage()))
                            if info is not None:
                                tr.paused = True
                                try:
                                    tr._host_read(t, info, how)
                                finally:
                                    tr.paused = False
                        except Exception as exc:
                            tr._internal_error(how, exc)
                    return real(t, *a, **k)
                return wrapper
            return make

        patch(torch.Tensor, "numpy", host("numpy"))
        patch(torch.Tensor, "tolist", host("tolist"))

        def frombuffer(real):
            @functools.wraps(real)
            def wrapper(*a, **k):
                out = real(*a, **k)
                if not tr.paused and tr.installed:
                    tr.paused = True
                    try:
                        tr._match(out, "frombuffer")
                    except Exception as exc:
                        tr._internal_error("frombuffer", exc)
                    finally:
                        tr.paused = False
                return out
            return wrapper

        patch(torch, "frombuffer", frombuffer)

        def save(real):
            @functools.wraps(real)
            def wrapper(obj, *a, **k):
                if not tr.paused and tr.installed and not tr.scores_only:
                    tr.paused = True
                    try:
                        tr._serialized(obj)
                    except Exception as exc:
                        tr._internal_error("torch.save", exc)
                    finally:
                        tr.paused = False
                return real(obj, *a, **k)
            return wrapper

        patch(torch, "save", save)
        self._install_collectives(patch)

    def _install_threads(self) -> None:
        """New threads start with an empty mode stack: enter a mode for this tracer in each."""
        tr = self

        def hook():
            if not tr.installed:
                return None
            return TracerMode.of(tr)

        try:
            from harness.dynamic.cpu import shims

            if shims.STATE is not None:
                shims.register_thread_hook(hook)
                self._undo.append(lambda: shims.STATE and hook in shims.STATE.thread_hooks
                                  and shims.STATE.thread_hooks.remove(hook))
                return
        except ImportError:
            pass
        real = threading.Thread._bootstrap_inner

        def bootstrap_inner(thread_self):
            mode = hook()
            if mode is None:
                return real(thread_self)
            with mode:
                return real(thread_self)

        threading.Thread._bootstrap_inner = bootstrap_inner
        self._undo.append(lambda: setattr(threading.Thread, "_bootstrap_inner", real))
