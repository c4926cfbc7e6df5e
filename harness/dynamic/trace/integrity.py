"""Is the tracer still watching? A submission that knows it is audited can pop the tracer's
dispatch mode, remove its hooks or restore the functions it patched; from then on the trace
records nothing, and an empty stretch of trace looks like a legal one. The tracer asks this
module at every recorded score and update, and at exit; the first answer that something is
missing makes the trace untrusted (trace judges skipped, the black-box probe judges the run).

Inside `__torch_dispatch__` torch takes the mode off the stack while it runs, so the stack is
looked at only from outside dispatch (`stack=True`: at exit)."""
from __future__ import annotations

from typing import Any

from harness.dynamic.trace import torch_compat as C


def missing(tracer: Any, *, stack: bool) -> list[str]:
    """What of `tracer`'s instrumentation is no longer installed (empty: all of it is)."""
    out: list[str] = []
    if stack and not any(getattr(m, "tracer", None) is tracer for m in C.dispatch_mode_stack()):
        out.append("the tracer's dispatch mode is no longer on the torch dispatch-mode stack")
    for owner, attr, wrapper in tracer.patched:
        if getattr(owner, attr, None) is not wrapper:
            out.append(f"{getattr(owner, '__name__', owner)}.{attr} no longer is the tracer's wrapper")
    if any(not C.hook_is_registered(h) for h in tracer.hook_handles):
        out.append("a module/optimizer hook the tracer registered was removed")
    return out
