"""What the package emulations share (cpu/mamba.py, cpu/fla.py): the error for a part that is not
emulated, the shims' "used:" note, and registering an emulated package in `sys.modules` (inside the
sandbox only, called from the shims)."""
from __future__ import annotations

import sys
import types
from importlib.machinery import ModuleSpec
from typing import Callable


class NotEmulated(NotImplementedError):
    """A part of an emulated package that golf-audit does not emulate; the message names it."""


_note: Callable[[str], None] = lambda what: None  # the shims' note, set by register()


def used(what: str) -> None:
    """Note that the run used an emulated function (the run's notes say what stood in for what)."""
    _note(what)


def register(modules: dict[str, dict], note: Callable[[str], None] | None = None) -> bool:
    """Put the emulated modules (dotted name -> attributes) in sys.modules, as packages with no
    other submodules, so a missing one fails as "No module named ...". False, and nothing
    registered, when a real module of one of these top-level packages is already imported."""
    tops = {name.split(".")[0] for name in modules}
    if any(top in sys.modules and not getattr(sys.modules[top], "__golf_audit_shim__", False) for top in tops):
        return False
    global _note
    _note = note or _note
    for name, attrs in modules.items():
        mod = types.ModuleType(name)
        mod.__spec__ = ModuleSpec(name, None, is_package=True)
        mod.__path__ = []
        mod.__file__ = f"<golf-audit emulation {name}>"
        mod.__golf_audit_shim__ = True
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
    for name in modules:  # parents hold their children as attributes, as real packages do
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])
    return True
