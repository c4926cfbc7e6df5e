"""GA009 byte-accounting: the byte count implied by the submission's own printed val_loss and
val_bpb is not the true UTF-8 byte count of the scored text. The trace layer compares the numbers;
the static check reads how the per-token byte table is built from the tokenizer's pieces."""
from __future__ import annotations

import math

import libcst as cst

from harness.static import dataflow as D
from harness.static.engine import ModuleContext, dotted, string_value, walk

from harness.dynamic.judge.passes import passes
from harness.dynamic.judge.reported import find_print_line, match_reported, pass_numbers, tolerance
from harness.dynamic.judge.synthetic import SyntheticRun, TraceExample
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Invalid, Rule, Valid
from harness.challenge.bpb import implied_bytes


def _example(script_bytes: float, true_bytes: int = 10, decimals: int = 8, note: str = "") -> TraceExample:
    run = SyntheticRun(n=5)
    run.score("eval_val", 50, [(1, 5)], nll=2.0)
    loss = 2.0
    run.report("final_exact", loss, loss / math.log(2.0) * 4 / script_bytes, decimals=decimals)
    run.end(val_bytes_utf8=true_bytes)
    return TraceExample(events=tuple(run.events), note=note, function="eval_val", line=50)


def _two_evals_example(script_bytes: float, note: str) -> TraceExample:
    """A line printing the plain eval's val_loss beside the sliding eval's val_bpb (PR #1268's
    training log does this at its last step)."""
    run = SyntheticRun(n=5)
    run.score("eval_val", 50, [(1, 5)], nll=2.0)
    run.score("eval_val_sliding", 80, [(1, 5)], nll=1.5)
    run.report("step:3/3", 2.0, 1.5 / math.log(2.0) * 4 / script_bytes, decimals=4)
    run.end(val_bytes_utf8=10)
    return TraceExample(events=tuple(run.events), note=note, function="eval_val", line=50)


_LUT_OK = Valid('''
import numpy as np
def build_luts(sp, vocab_size):
    base_bytes = np.zeros(vocab_size, dtype=np.int16)
    has_leading_space = np.zeros(vocab_size, dtype=np.bool_)
    for token_id in range(sp.vocab_size()):
        if sp.is_control(token_id) or sp.is_unknown(token_id):
            continue
        if sp.is_byte(token_id):
            base_bytes[token_id] = 1
            continue
        piece = sp.id_to_piece(token_id)
        if piece.startswith("\u2581"):
            has_leading_space[token_id] = True
            piece = piece[1:]
        base_bytes[token_id] = len(piece.encode("utf-8"))
    return base_bytes, has_leading_space
''', "the reference LUT: byte pieces are 1 byte, the leading space is dropped from the piece")

# byte-fallback pieces (`<0x0A>`) counted as their 6 characters instead of the 1 byte they stand for
_LUT_BYTE_PIECES = Invalid(_LUT_OK.code.replace('''        if sp.is_byte(token_id):
            base_bytes[token_id] = 1
            continue
''', ""), line=13, function="build_luts", message_contains="byte-fallback",
    note="`<0xNN>` pieces counted as len(piece) = 6 bytes")

# the leading space kept in the table (as " ") and added again by has_leading_space at eval time
_LUT_SPACE_TWICE = Invalid(_LUT_OK.code.replace('''            piece = piece[1:]
''', '''            piece = piece.replace("\u2581", " ")
'''), line=16, function="build_luts", message_contains="leading space",
    note="the space kept in the piece (+1) and counted again by has_leading_space")

# bytes read from a data file shipped with the submission; the check against the tokenizer is off
_LUT_FROM_FILE = Invalid('''
import os
import numpy as np
def load_luts(meta_path, sp=None):
    validate = bool(int(os.environ.get("TOKENIZER_META_VALIDATE", "0")))
    with np.load(meta_path) as data:
        base_bytes = np.asarray(data["base_bytes"], dtype=np.int16)
        has_leading_space = np.asarray(data["has_leading_space"], dtype=np.bool_)
    if validate and sp is not None:
        assert np.array_equal(base_bytes, build_from_tokenizer(sp))
    return base_bytes, has_leading_space
''', line=7, function="load_luts", message_contains="data file",
    note="PR #1184: byte table from a shipped .npz, the tokenizer check behind an off-by-default flag")

_LUT_FROM_FILE_CHECKED = Valid(_LUT_FROM_FILE.code.replace('''    if validate and sp is not None:
        assert''', '''    assert'''), "a shipped table compared with the tokenizer's on every run")

# legal: piece lengths as a statistic, not the byte count behind a score
_PIECE_STATS = Valid('''
import numpy as np
def piece_stats(sp):
    lens = np.zeros(sp.vocab_size())
    for i in range(sp.vocab_size()):
        lens[i] = len(sp.id_to_piece(i).encode("utf-8"))
    print(f"mean piece length {lens.mean():.2f}, longest {int(lens.max())}")
''', "piece lengths printed as a statistic: no byte count of a score")

_SPACE = "\u2581"
_PIECE_CALL = ("id_to_piece", "IdToPiece")
_BYTE_CHECK_CALL = ("is_byte", "IsByte")
_FILE_LOAD = ("load", "loadtxt", "fromfile", "load_file", "read_csv")
_CHECK_CALL = ("array_equal", "allclose", "equal", "assert_array_equal")


def _strs(node) -> list[str]:
    out = []
    for n in walk(node):
        if isinstance(n, cst.SimpleString):
            try:
                out.append(string_value(n))
            except Exception:  # noqa: BLE001
                pass
    return out


def _strips_space(node) -> str | None:
    """How an expression removes the leading-space marker: "drop" (`p[1:]`, `lstrip("▁")`,
    `replace("▁", "")`), "space" (`replace("▁", " ")`, `" " + p[1:]`: counted as one byte), None."""
    for n in walk(node):
        if isinstance(n, cst.Call) and isinstance(n.func, cst.Attribute):
            attr = n.func.attr.value
            args = [_strs(a.value) for a in n.args]
            if attr == "replace" and len(args) >= 2 and args[0] and _SPACE in args[0][0]:
                return "space" if args[1] and args[1][0].strip() == "" and args[1][0] else "drop"
            if attr in ("lstrip", "removeprefix", "strip") and (not args or any(_SPACE in x for a in args for x in a)):
                return "drop"
    for n in walk(node):
        if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Add) and " " in _strs(n.left):
            return "space"
        if isinstance(n, cst.Subscript) and len(n.slice) == 1 and isinstance(n.slice[0].slice, cst.Slice) \
                and isinstance(n.slice[0].slice.lower, cst.Integer) and n.slice[0].slice.lower.value == "1":
            return "drop"
    return None


class ByteAccounting(Rule, id="GA009", name="byte-accounting",
                     severity=Severity.HIGH, confidence=Confidence.HIGH, layers=(Layer.TRACE, Layer.STATIC)):
    summary = "Checks that the bytes behind the printed val_bpb are the true UTF-8 bytes of the scored text."
    why = """
val_bpb divides total bits by the UTF-8 bytes of the text, which makes scores comparable across
tokenizers. A script that counts bytes itself can over-count them (a leading space counted after a
document boundary, a byte-fallback token counted as its 6-character piece, a custom tokenizer's
normaliser changing the text) and so print a lower bpb for the same loss. The trace layer takes the
script's own printed val_loss and val_bpb, derives the byte count they imply
(tokens x loss / (bpb x ln 2), tokens from the captured scores) and compares it with the true bytes of
the scored targets, computed by golf-audit from the validation tokens and the tokenizer.
"""
    example = """
token_bytes = base_bytes_lut[tgt] + has_leading_space_lut[tgt]   # counts a space after BOS too
"""
    use_instead = """
token_bytes = base_bytes_lut[tgt] + (has_leading_space_lut[tgt] & ~is_boundary_token_lut[prev])
"""
    known_problems = """
Needs both val_loss and val_bpb on one printed line, and the true bytes (the runner's decoded byte
count, or the validation shards plus the SentencePiece model). Other tokenizer formats are not audited.
The comparison allows the rounding of the printed numbers only. A line whose val_bpb is, over the
true bytes, another eval's number (a training log printing the sliding-window bpb beside the plain
eval's val_loss, PR #1268) pairs two evals and implies no byte count: it is not judged.

The static check reads the byte table's construction: `len(piece.encode())` with no is_byte test in
the same function (a tokenizer without byte-fallback pieces would be reported too), a leading-space
table next to a piece measured with its marker, and a table read from a shipped data file that is
compared with the tokenizer's only under a guard (medium severity: the shipped numbers may be right,
but nothing in the run proves it). A table built elsewhere and passed in is not followed.
"""
    references = (
        "Challenge README: 'prove with certainty that the val_bpb is correctly calculated'",
        "A custom-tokenizer submission over-counted bytes by 4.13% (see shared/rules.md, byte accounting)",
        "PR #1184 (byte table from a shipped .npz, the tokenizer check off by default); PR #1933 (PPM byte "
        "stream with `<0xNN>` pieces counted as 6 bytes)",
    )
    fix = ("Count bytes as the UTF-8 length of each target token's decoded piece, with its leading space "
           "only when the previous token is not a boundary token.")

    VALID = [_LUT_OK, _LUT_FROM_FILE_CHECKED, _PIECE_STATS]
    INVALID = [_LUT_BYTE_PIECES, _LUT_SPACE_TWICE, _LUT_FROM_FILE]

    TRACE_VALID = [
        _example(10, note="implied bytes equal the true bytes"),
        _example(10.0004, decimals=4, note="4 decimals: within rounding"),
        _two_evals_example(10, note="one eval's val_loss printed beside another eval's val_bpb, true bytes"),
    ]
    TRACE_INVALID = [
        _example(10.5, note="5% over-count"),
        _example(9, note="under-count"),
        _two_evals_example(10.5, note="the second eval's val_bpb over true bytes x 1.05: still an over-count"),
    ]

    # ------------------------------------------------------------------ static
    def check_static(self, ctx: ModuleContext):
        for q, fn in ctx.functions.items():
            yield from self._piece_lengths(ctx, q, fn)
            f = self._table_from_file(ctx, q, fn)
            if f is not None:
                yield f

    def _piece_lengths(self, ctx: ModuleContext, q: str, fn):
        """`table[i] = len(piece.encode())` for the tokenizer's pieces: byte-fallback pieces must
        count 1 byte (their `<0xNN>` text is 6 characters), and the leading-space marker must be
        dropped from the piece when a leading-space table adds that byte separately."""
        pieces = {w for st in fn.stmts for c in st.calls
                  if dotted(c.func).split(".")[-1] in _PIECE_CALL for w in st.writes}
        if not pieces:
            return
        derived = D.tainted_names(ctx, fn, pieces)
        byte_check = any(dotted(c.func).split(".")[-1] in _BYTE_CHECK_CALL for st in fn.stmts for c in st.calls) \
            or any("<0x" in x for st in fn.stmts for x in st.strings)
        space_table = None
        for st in fn.stmts:
            if st.kind == "if" and any(dotted(c.func).split(".")[-1] == "startswith" for c in st.calls) \
                    and any(_SPACE in x for x in st.strings):
                space_table = st
        for st in fn.stmts:
            node = st.node
            if not (isinstance(node, cst.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0].target, cst.Subscript)):
                continue
            lens = [c for c in st.calls if dotted(c.func) == "len" and c.args
                    and {n.value for n in D._names(c.args[0].value)} & derived]
            if not lens:
                continue
            arg = lens[0].args[0].value
            if not self._counts_bytes(ctx, fn, st):
                continue  # a statistic of the pieces, not the byte count of a score
            # the piece as measured: the expression itself and the definitions of the names it reads
            measured = [arg] + [d.node for d in fn.stmts if d.writes & {n.value for n in D._names(arg)}
                                and isinstance(d.node, (cst.Assign, cst.AnnAssign))]
            if not byte_check:
                yield self.static_finding(
                    ctx, st.line, q,
                    f"{q}() counts every tokenizer piece as the UTF-8 length of its text, byte-fallback pieces "
                    "included: a `<0xNN>` piece stands for 1 byte but its text is 6 characters",
                    [f"`{ctx.code(node)[:140]}`",
                     "no is_byte() test (or `<0x` check) in the function: byte-fallback tokens get 6 bytes each, "
                     "so the byte count behind val_bpb is too large"],
                    confidence=Confidence.MEDIUM,
                    fix="Give byte-fallback pieces (sp.is_byte(i)) 1 byte before measuring the other pieces.",
                    **ctx.reach_fields(q, st),
                )
                continue
            if space_table is None:
                continue
            how = [_strips_space(m) for m in measured]
            if "drop" in how:
                continue
            what = ("keeps the leading space in the piece as a 1-byte space" if "space" in how
                    else "measures the piece with its leading-space marker (3 UTF-8 bytes)")
            yield self.static_finding(
                ctx, st.line, q,
                f"{q}() {what} and also marks the token in a leading-space table: the leading space is "
                "counted in the table and again when the eval adds the leading-space byte",
                [f"length at line {st.line}: `{ctx.code(node)[:140]}`",
                 f"leading-space table filled under line {space_table.line}: `{ctx.lines[space_table.line - 1].strip()[:120]}`"],
                confidence=Confidence.MEDIUM,
                fix="Drop the leading-space marker from the piece (piece[1:]) before measuring it; the eval adds "
                    "that byte once, when the previous token is not a boundary.",
                **ctx.reach_fields(q, st),
            )

    @staticmethod
    def _counts_bytes(ctx: ModuleContext, fn, st) -> bool:
        """Does the table written at `st` leave the function (returned) or divide a score here
        (the denominator of a per-byte number)?"""
        table = D.tainted_names(ctx, fn, set(st.writes))
        for other in fn.stmts:
            if isinstance(other.node, cst.Return) and set(other.reads) & table:
                return True
            value = getattr(other.node, "value", None)
            if value is None:
                continue
            for n in walk(value):
                if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, (cst.Divide, cst.FloorDivide)) \
                        and {x.value for x in D._names(n.right)} & table:
                    return True
        return False

    def _table_from_file(self, ctx: ModuleContext, q: str, fn):
        """The per-token byte table read from a data file shipped with the submission, with no
        unconditional comparison against the table the tokenizer gives."""
        for st in fn.stmts:
            node = st.node
            if not isinstance(node, cst.Assign) or not any("byte" in w.lower() for w in st.writes):
                continue
            keys = [x for x in st.strings if "byte" in x.lower()]
            sources = {n.value for n in D._names(node.value)}
            from_file = [d for d in fn.stmts if d.writes & sources and
                         any(dotted(c.func).split(".")[-1] in _FILE_LOAD for c in d.calls)]
            if not keys or not from_file:
                continue
            table = sorted(w for w in st.writes if "byte" in w.lower())[0]
            later = D.tainted_names(ctx, fn, {table})
            checks = [c for c in fn.stmts if c.order > st.order and set(c.reads) & later and
                      any(dotted(x.func).split(".")[-1] in _CHECK_CALL for x in c.calls)]
            # or where the loaded table is returned to: a caller comparing a byte table
            checks += [c for g in ctx.functions.values() if g is not fn for c in g.stmts
                       if any("byte" in r.lower() for r in c.reads) and
                       any(dotted(x.func).split(".")[-1] in _CHECK_CALL for x in c.calls)]
            if any(not c.guards for c in checks):
                continue
            f = self.static_finding(
                ctx, st.line, q,
                f"{q}() reads the per-token byte counts `{table}` from a data file shipped with the submission, "
                "not from the tokenizer's pieces: the bytes behind val_bpb are not derived from the text",
                [f"`{ctx.code(node)[:140]}` (file opened at line {from_file[0].line}: "
                 f"`{ctx.lines[from_file[0].line - 1].strip()[:100]}`)"] +
                ([f"compared with the tokenizer's table only under `{checks[0].guards[-1].code[:80]}` "
                  f"(line {checks[0].line})"] if checks else ["no comparison with the tokenizer's table in the file"]),
                confidence=Confidence.MEDIUM,
                fix="Build the byte table from the tokenizer at eval time (or compare the shipped table with it on "
                    "every run and stop on a mismatch).",
                **ctx.reach_fields(q, st),
            )
            f.severity = Severity.MEDIUM
            return f
        return None

    @staticmethod
    def _bpb_of_another_eval(trace, m) -> bool:
        """The printed val_bpb is, over the true bytes, another pass's (or aggregation's): the line
        pairs two evals' numbers (a training log printing the sliding-window bpb beside the plain
        val_loss), so the two do not imply one byte count."""
        r = m.reported
        for p in passes(trace):
            for which, bpb in pass_numbers(trace, p).bpb.items():
                if (p is not m.pass_ or which != m.which) and abs(r.val_bpb - bpb) <= tolerance(r.decimals):
                    return True
        return False

    def judge(self, trace):
        for m in match_reported(trace):
            r = m.reported
            if m.pass_ is None or m.which is None or r.val_loss is None or not r.val_bpb or m.ambiguous:
                continue
            nums = pass_numbers(trace, m.pass_)
            true = nums.bytes_by.get(m.which)
            if not true:
                continue  # true bytes unknown: the orchestrator reports this as not audited
            count = nums.counts.get(m.which, nums.n_tokens)
            script = implied_bytes(count, r.val_loss, r.val_bpb)
            tol = script * (tolerance(r.decimals) / max(r.val_loss, 1e-12)
                            + tolerance(r.decimals) / max(r.val_bpb, 1e-12))
            diff = script - true
            if abs(diff) <= tol or self._bpb_of_another_eval(trace, m):
                continue
            frame = find_print_line(trace, r.label)
            if frame is None and m.pass_.events:
                frame = m.pass_.events[0].frame
            yield self.trace_finding(
                Layer.TRACE, trace, frame,
                f"printed '{r.label}' divides by {script:,.1f} bytes; the scored text has {true:,} "
                f"UTF-8 bytes ({100.0 * diff / true:+.2f}%)",
                evidence=[
                    f"printed: {r.line.strip()}",
                    f"{count} scores summed in {m.pass_.label()}; implied bytes = tokens x val_loss / "
                    f"(val_bpb x ln 2) = {script:,.2f} (rounding allows ±{tol:.2f})",
                    f"true UTF-8 bytes of those targets: {true:,}; val_bpb with true bytes: "
                    f"{nums.bpb.get(m.which, float('nan')):.8f}",
                ],
            )
