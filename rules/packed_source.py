"""GA006 packed-source: code carried packed (compressed + encoded + exec)."""
from __future__ import annotations

import base64
import lzma

from harness.engine import ModuleContext
from harness.findings import Confidence, Layer, Severity
from harness.rule import Invalid, Rule, Valid

_PAYLOAD = base64.b85encode(lzma.compress(b"print('hello')\n")).decode()


class PackedSource(Rule):
    id = "GA006"
    name = "packed-source"
    severity = Severity.LOW  # packing is allowed; we say so and audit what is inside
    confidence = Confidence.HIGH
    layers = (Layer.STATIC,)
    summary = "Reports scripts whose code is packed (lzma/zlib/gzip/bz2 + base85/64 + exec) and audits the unpacked code."
    why = ("Packing saves code bytes against the 16,000,000-byte cap and is allowed, but it hides the code from "
           "reviewers. golf-audit unpacks it statically (never executing it) and audits the unpacked source with "
           "its own line numbers. A pack that cannot be unpacked cannot be audited: that is reported and the "
           "audit exits 3, never passes.")
    example = f'import lzma, base64\nexec(lzma.decompress(base64.b85decode("{_PAYLOAD}")))\n'
    use_instead = "print('hello')\n"
    known_problems = ("Packs built at run time from values the interpreter cannot evaluate statically (modules "
                      "injected into sys.modules, multi-file bundles) are 'not audited'; run `--dynamic`, whose "
                      "exec hook records every executed source.")
    references = ("notes: 112 of 1,716 PR script versions carry packed code",)
    fix = "Nothing is wrong with packing itself; keep the unpacked source in the PR too so reviewers can read it."

    VALID = [Valid("import lzma\nprint(lzma.compress(b'x'))\n", "uses lzma but executes nothing packed")]
    INVALID = [
        Invalid(f'import lzma, base64\nexec(lzma.decompress(base64.b85decode("{_PAYLOAD}")))\n', line=2),
        Invalid('import lzma, base64\nexec(lzma.decompress(base64.b85decode("not a payload")))\n', line=2,
                message_contains="cannot be unpacked"),
    ]

    def check_static(self, ctx: ModuleContext):
        pack = ctx.analysis.get("pack") or {}
        if pack.get("role") == "inner":
            return
        if pack.get("error"):
            line = pack.get("line") or 1
            yield self.finding(Layer.STATIC, f"packed code cannot be unpacked: {pack['error']}",
                               ctx.location(line), [f"`{ctx.lines[line - 1].strip()[:120]}`"],
                               fix="Ship a pack that decodes with the standard library, or the plain source.")
            return
        for layer in pack.get("layers") or []:
            yield self.finding(Layer.STATIC,
                               f"code is packed ({layer.how}); audited unpacked ({layer.code.count(chr(10)) + 1} lines)",
                               ctx.location(layer.line), [f"unpacked {len(layer.code):,} characters via {layer.how}"])
            break
