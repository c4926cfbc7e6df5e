"""FrameFinder: which stack frame an event is reported at -- the first one in submission code,
skipping torch, numpy, the stdlib, site-packages and golf-audit itself."""
from __future__ import annotations

import linecache
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from harness.dynamic.trace.events import Frame

# the harness package (this file is harness/dynamic/trace/tracer/frames.py): its frames are ours
_HARNESS_DIR = Path(__file__).resolve().parents[3]


class FrameFinder:
    """The first stack frame in submission code (not torch, not golf-audit, not the stdlib)."""

    def __init__(self, submission_dir: str):
        self.root = os.path.realpath(submission_dir) + os.sep if submission_dir else ""
        libs = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        libs |= {str(Path(torch.__file__).parent), str(_HARNESS_DIR),
                 str(Path(np.__file__).parent)}
        self.libs = tuple(sorted(os.path.realpath(p) + os.sep for p in libs if p))
        self.is_sub: dict[Any, Optional[str]] = {}

    def _rel(self, code) -> Optional[str]:
        hit = self.is_sub.get(code, 0)
        if hit != 0:
            return hit
        fn = code.co_filename
        rel: Optional[str]
        if fn.startswith("<") and not fn.startswith("<frozen"):
            rel = fn  # exec'd code: packed submissions
        else:
            real = os.path.realpath(fn)
            if self.root and real.startswith(self.root):
                rel = os.path.relpath(real, self.root)
            elif real.startswith(self.libs) or "/site-packages/" in real or "/harness/" in real:
                rel = None
            else:
                rel = None if self.root else real
        self.is_sub[code] = rel
        return rel

    def find(self, depth: int = 2) -> Frame | None:
        try:
            f = sys._getframe(depth)
        except ValueError:
            return None
        while f is not None:
            rel = self._rel(f.f_code)
            if rel is not None:
                line = f.f_lineno or 0
                code = linecache.getline(f.f_code.co_filename, line).strip() if line else ""
                return Frame(path=rel, line=line, function=f.f_code.co_name, code=code)
            f = f.f_back
        return None
