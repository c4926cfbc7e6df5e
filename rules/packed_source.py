"""GA006 packed-source: code carried packed (compressed + encoded + exec)."""
from __future__ import annotations

import base64
import bz2
import lzma
import zlib

from harness.static.engine import ModuleContext
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Invalid, Rule, Valid

_PAYLOAD = base64.b85encode(lzma.compress(b"print('hello')\n")).decode()


def _raw_pack(code: str) -> str:
    """The common contest shape: raw LZMA2 stream, base85, short aliases."""
    raw = lzma.compress(code.encode(), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    payload = base64.b85encode(raw).decode()
    return (f'import lzma as L,base64 as B\n'
            f'exec(L.decompress(B.b85decode("{payload}"),format=L.FORMAT_RAW,filters=[{{"id":L.FILTER_LZMA2}}]))\n')


_INNER = Valid("def main():\n    print('hello')\n\nif __name__ == '__main__':\n    main()\n", "plain source")
_RAW = Invalid(_raw_pack(_INNER.code), line=2, message_contains="lzma+b85",
    note="raw LZMA2 (FORMAT_RAW + filters), aliases")
_NESTED = Invalid(("import zlib, base64\nexec(zlib.decompress(base64.b64decode("
           f'"{base64.b64encode(zlib.compress(_RAW.code.encode())).decode()}")).decode())\n'), line=2,
    message_contains="2 nested layers", note="a pack inside a pack")
_STAGED_PARTS = base64.a85encode(bz2.compress(_INNER.code.encode())).decode()
_STAGED = Invalid(("import bz2, base64, linecache\n"
           f"P = {[_STAGED_PARTS[i:i + 60] for i in range(0, len(_STAGED_PARTS), 60)]!r}\n"
           "S = bz2.decompress(base64.a85decode(''.join(P))).decode()\n"
           "F = '<train_gpt>'\n"
           "linecache.cache[F] = (len(S), None, S.splitlines(True), F)\n"
           "exec(compile(S, F, 'exec'))\n"), line=6, message_contains="bz2",
    note="staged: S = ...; linecache; exec(compile(S, F))")


class PackedSource(Rule, id="GA006", name="packed-source",
                   severity=Severity.LOW, confidence=Confidence.HIGH, layers=(Layer.STATIC,)):
    # severity low: packing is allowed; we say so and audit what is inside
    static_is_proof = True  # the pack is in the file
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

    VALID = [Valid("import lzma\nprint(lzma.compress(b'x'))\n", "uses lzma but executes nothing packed"),
             _INNER]
    INVALID = [
        Invalid(f'import lzma, base64\nexec(lzma.decompress(base64.b85decode("{_PAYLOAD}")))\n', line=2),
        Invalid('import lzma, base64\nexec(lzma.decompress(base64.b85decode("not a payload")))\n', line=2,
                message_contains="cannot be unpacked", note="unpackable pack: a finding, and not audited"),
        _RAW,
        _NESTED,
        _STAGED,
    ]

    def check_static(self, ctx: ModuleContext):
        pack = ctx.analysis.get("pack") or {}
        if pack.get("role") == "inner":
            return
        if pack.get("error"):
            line = pack.get("line") or 1
            yield self.static_finding(ctx, line, None, f"packed code cannot be unpacked: {pack['error']}",
                                      [f"`{ctx.lines[line - 1].strip()[:120]}`"],
                                      fix="Ship a pack that decodes with the standard library, or the plain source.")
            return
        layers = pack.get("layers") or []
        if layers:
            how = ", then ".join(layer.how for layer in layers)
            depth = f"in {len(layers)} nested layers " if len(layers) > 1 else ""
            inner = layers[-1].code
            yield self.static_finding(ctx, layers[0].line, None,
                                      f"code is packed {depth}({how}); audited unpacked ({inner.count(chr(10)) + 1} lines)",
                                      [f"layer {i + 1}: exec at line {layer.line} unpacks {len(layer.code):,} characters "
                                       f"via {layer.how}" for i, layer in enumerate(layers)])
