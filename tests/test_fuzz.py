"""Fuzzing what golf-audit reads from a submission: Python source (static analyzer), packed
scripts (the unpacker in harness.static.source) and training logs (harness.evaluation.logs).

The property is the same everywhere: any input gives a result — an AuditResult with findings or
"not auditable" entries, a packing error (UnpackError), a parsed log with unknown lines — never
another exception, never a crash, and within CASE_LIMIT_S per case.

Inputs: grammar-ish random Python, mutated real-shaped scripts from submissions/ (lines deleted,
duplicated, swapped, re-indented, tokens inserted, truncated), random / non-UTF-8 / NUL bytes,
packs whose payload is random, truncated, a decompression bomb or nested too deep, and
real-shaped logs with mutated numbers and lines. The big and deep inputs (10 MB files, 10,000
nested brackets, huge lines) are explicit tests below.

CI runs a fixed-seed slice (`derandomize=True`, about 400 cases, well under 90 s).
`python benchmarks/fuzz_budget.py` (or `pytest -m fuzz_long tests/test_fuzz.py`) runs >= 10,000
cases with fresh randomness. Inputs that ever crashed are kept in tests/fuzz_regressions/
(`<target>__<name>.<ext>`, target = source | folder | unpack | log) and replayed here.
"""
from __future__ import annotations

import base64
import bz2
import functools
import json
import lzma
import os
import shutil
import signal
import tempfile
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"
# a hang guard, not a speed target (benchmarks/ hold those): the suite runs two workers on two
# cores, so a case shares its core with a dynamic audit
CASE_LIMIT_S = 30.0

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


def ci(n: int) -> settings:
    """The fixed-seed CI slice: n cases, the same every run."""
    return settings(derandomize=True, max_examples=n, **_COMMON)


# ---------------------------------------------------------------- time bound
class CaseTimeout(BaseException):
    """A case ran past CASE_LIMIT_S. A BaseException, so the code under test cannot swallow it
    into a 'not audited' entry."""


@contextmanager
def time_bound(limit: float = CASE_LIMIT_S):
    """Fail a case that runs longer than `limit` seconds (SIGALRM; main thread only)."""
    use_alarm = hasattr(signal, "setitimer") and _main_thread()

    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran past {limit:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, limit)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    elapsed = time.perf_counter() - t0
    assert elapsed <= limit, f"case took {elapsed:.1f} s (limit {limit:.0f} s)"


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------- the checks (one per target)
def check_result(result) -> None:
    from harness.core.findings import AuditResult, ExitCode, Finding, NotAudited

    assert isinstance(result, AuditResult), type(result)
    for f in result.findings:
        assert isinstance(f, Finding)
        json.dumps(f.to_dict())
        f.fingerprint()
    for n in result.not_audited:
        assert isinstance(n, NotAudited) and n.reason.strip()
    assert result.exit_code() in (ExitCode.CLEAN, ExitCode.FINDINGS, ExitCode.NOT_AUDITABLE)


def check_source(code: str):
    """audit_source on one text."""
    import warnings

    from harness.static.audit import audit_source

    with time_bound(), warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # random code: "invalid decimal literal" etc.
        result = audit_source(code)
    check_result(result)
    return result


def check_folder(files: dict[str, bytes]):
    """audit_folder_static on a folder holding these files (names relative to it), and
    load_source on each file: neither may raise."""
    from harness.core.findings import ExitCode
    from harness.static.source import LoadedSource, load_source
    from harness.static.audit import audit_folder_static

    folder = Path(tempfile.mkdtemp(prefix="golf-fuzz-"))
    try:
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        with time_bound():
            result = audit_folder_static(folder)
            loaded = [load_source(folder / name, name) for name in files if name.endswith(".py")]
        check_result(result)
        for item in loaded:
            assert isinstance(item, LoadedSource)
        for name, data in files.items():
            if name.endswith(".py") and (b"\0" in data or not _utf8(data)):
                # never "clean" for a file that could not be read
                assert result.exit_code() != ExitCode.CLEAN, (name, [n.reason for n in result.not_audited])
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_unpack(text: str):
    """harness.static.source.unpack: returns the innermost source, or raises UnpackError."""
    from harness.static.source import MAX_DEPTH, UnpackError, unpack

    with time_bound():
        try:
            inner, layers = unpack(text)
        except UnpackError as exc:
            assert str(exc).strip()
            return None
    assert isinstance(inner, str)
    assert len(layers) <= MAX_DEPTH
    return inner


def check_log(text: str):
    """parse_log_text: a ParsedLog whose derived numbers and dict form never raise."""
    from harness.evaluation.logs import ParsedLog, parse_log_text

    with time_bound():
        log = parse_log_text(text, "fuzz.log")
        d = log.to_dict()
        log.final_result()
        [p.status for p in log.unmeasured_phases]
    assert isinstance(log, ParsedLog)
    assert 0 <= log.lines_unknown <= log.lines_total
    json.dumps(d, default=str)
    return log


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


CHECKS = {"source": check_source, "unpack": check_unpack, "log": check_log}


# ---------------------------------------------------------------- corpus of real-shaped files
@functools.lru_cache(maxsize=None)
def corpus_scripts() -> tuple[str, ...]:
    paths = sorted((ROOT / "submissions").glob("**/*.py")) + sorted((ROOT / "submissions").glob("**/*.py.txt"))
    return tuple(p.read_text(encoding="utf-8", errors="replace") for p in paths)


@functools.lru_cache(maxsize=None)
def corpus_logs() -> tuple[str, ...]:
    paths = sorted((ROOT / "submissions").glob("*/*.log"))
    return tuple(p.read_text(encoding="utf-8", errors="replace") for p in paths)


# ---------------------------------------------------------------- strategies: Python
NAMES = ["x", "y", "val_tokens", "tokens", "loss", "nll", "opt", "optimizer", "model", "base_model", "p",
         "torch", "F", "args", "self", "i", "seq_len", "loss_sum", "exec", "getattr", "lzma", "base64"]
ATTRS = ["step", "backward", "data", "add_", "copy_", "grad", "sum", "item", "view", "reshape", "zero_grad",
         "no_grad", "inference_mode", "decompress", "b85decode", "decode", "tolist", "numpy", "roll",
         "cross_entropy", "parameters", "__del__", "register_forward_pre_hook"]
FUNCS = ["eval_val", "eval_val_ttt", "main", "train", "forward", "__del__", "step", "score", "f"]
BINOPS = ["+", "-", "*", "/", "//", "%", "**", "@", "^", "&", "|", "<<", "<", "==", "!=", "and", "or", "in"]

LEAVES = ["'s'", "b'x'", "None", "True", "1.5", "...", "'st' + 'ep'", "f'{x}'", "f'{x!r:>{y}}'", "0x1F", "1e309",
          "-1", "r'\\d'", '"""doc"""', "[]", "{}", "()", "lambda: 0", "0", "10**6", "val_tokens[i:i + seq_len]"]
SIMPLE = ["pass", "break", "continue", "import torch", "from torch import nn as N", "import lzma as L, base64 as B",
          "global x", "nonlocal y", "raise", "opt.step()", "loss.backward()", "p.data.add_(p.grad, alpha=-0.1)",
          "loss_sum += nll.sum()", "getattr(opt, 'st' + 'ep')()", "with torch.no_grad(): pass", "assert x, y",
          "@decorator", "async def g(): await x", "print(x, file=sys.stderr)", "yield", "return"]


# The forms of gen_expr, one a row: `e()` is a smaller random expression.
EXPR_FORMS = (
    lambda r, e: f"{e()}.{r.choice(ATTRS)}",
    lambda r, e: f"{e()}({', '.join(e() for _ in range(r.randrange(4)))})",
    lambda r, e: f"({e()} {r.choice(BINOPS)} {e()})",
    lambda r, e: f"{e()}[{e()}]",
    lambda r, e: f"{e()}[{e()}:{e()}, ...]",
    lambda r, e: "[" + ", ".join(e() for _ in range(r.randrange(4))) + "]",
    lambda r, e: f"{{{e()}: {e()}}}",
    lambda r, e: f"(lambda a, b: {e()})",
    lambda r, e: f"(not {e()})",
    lambda r, e: f"[q for q in {e()} if q]",
    lambda r, e: f"({e()} if {e()} else {e()})",
    lambda r, e: f"f'{{{e()}}}'",
    lambda r, e: f"(yield {e()})",
    lambda r, e: f"(await {e()})",
    lambda r, e: f"(z := {e()})",
)


def gen_expr(r, depth: int) -> str:
    """A random expression (grammar-ish: names, literals, calls, operators, comprehensions...)."""
    if depth <= 0 or r.random() < 0.3:
        return r.choice(NAMES) if r.random() < 0.6 else r.choice(LEAVES)
    e = lambda: gen_expr(r, depth - 1)  # noqa: E731
    return EXPR_FORMS[r.randrange(len(EXPR_FORMS))](r, e)


def gen_block(r, depth: int, n: int) -> list[str]:
    """`n` random statements; compound ones nest up to `depth`."""
    lines: list[str] = []
    for _ in range(n):
        if depth <= 0 or r.random() < 0.55:
            form = r.randrange(8)
            x = gen_expr(r, 3)
            lines.append([f"{r.choice(NAMES)} = {x}", f"{r.choice(NAMES)} += {x}", f"{x}.{r.choice(ATTRS)} = {x}",
                          x, f"exec({x})", f"return {x}", f"del {x}", r.choice(SIMPLE)][form])
            continue
        body = lambda: ["    " + ln for ln in gen_block(r, depth - 1, 1 + r.randrange(3))]  # noqa: E731
        x = gen_expr(r, 2)
        form = r.randrange(8)
        if form == 0:
            lines += [f"for i in range({x}):"] + body()
        elif form == 1:
            lines += [f"while {x}:"] + body()
        elif form == 2:
            lines += [f"if {x}:"] + body() + ["else:"] + body()
        elif form == 3:
            lines += ["with torch.inference_mode():"] + body()
        elif form == 4:
            lines += [f"def {r.choice(FUNCS)}(model, val_tokens, opt, *args, **kw):"] + body()
        elif form == 5:
            lines += ["try:"] + body() + ["except Exception as e:"] + body()
        elif form == 6:
            lines += ["class C(nn.Module):", "    def __del__(self):"] + ["    " + ln for ln in body()]
        else:
            lines += [f"match {x}:", "    case [a, *rest]:"] + ["    " + ln for ln in body()]
    return lines


def gen_module(seed: int) -> str:
    import random

    r = random.Random(seed)
    return "\n".join(gen_block(r, 3, 1 + r.randrange(8))) + "\n"


# A seed per case: generation is plain Python (hypothesis's recursive strategies spent 98% of the
# time building inputs); the failing text itself is what a regression file keeps.
python_module = st.integers(0, 2 ** 63 - 1).map(gen_module)

INSERT_TOKENS = ["(", ")", "[", "]", "{", "}", ":", "def ", "class ", "lambda ", "exec(", '"""', "'''", "\\",
                 "\x00", "\t", "\r", "\x0c", "#", "@", "yield ", "async ", "await ", "opt.step()", "\ufeff",
                 "é", "\u2028", "𝔘", ";", ",", "=", "*", "**", "f'{", "}'", "  ", "\n    "]


def edit_lines(draw, lines: list[str], op: str, i: int) -> bool:
    """The line edits the script and log mutators share, made on `lines` in place at line `i`;
    False when `op` is none of them."""
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, lines[i])
    elif op == "swap":
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "truncate":  # line i cut short, the lines after it dropped
        del lines[i + 1:]
        lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
    else:
        return False
    return True


@st.composite
def mutated_script(draw) -> str:
    """A script from submissions/ with a few line- and token-level mutations."""
    text = draw(st.sampled_from(corpus_scripts()))
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            lines = [""]
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "indent", "dedent", "truncate",
                                   "replace_char"]))
        i = draw(st.integers(0, len(lines) - 1))
        if edit_lines(draw, lines, op, i):
            continue
        if op == "insert":
            pos = draw(st.integers(0, len(lines[i])))
            tok = draw(st.sampled_from(INSERT_TOKENS))
            lines[i] = lines[i][:pos] + tok + lines[i][pos:]
        elif op == "indent":
            lines[i] = "    " + lines[i]
        elif op == "dedent":
            lines[i] = lines[i].lstrip()
        elif op == "replace_char" and lines[i]:
            pos = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:pos] + draw(st.characters()) + lines[i][pos + 1:]
    return "\n".join(lines)


# ---------------------------------------------------------------- strategies: bytes and packs
@functools.lru_cache(maxsize=None)
def _bombs() -> dict[str, str]:
    """Exec arguments whose payload decompresses to ~64 MB (over the unpacker's 20 MB guard)."""
    zeros = b"\0" * (64 << 20)
    spaces = b" " * (64 << 20)
    raw = [{"id": lzma.FILTER_LZMA2, "preset": 1}]
    return {
        "lzma": f'lzma.decompress(base64.b85decode("{base64.b85encode(lzma.compress(spaces, preset=1)).decode()}"))',
        "lzma-raw": ('lzma.decompress(base64.b85decode("'
                     f'{base64.b85encode(lzma.compress(spaces, format=lzma.FORMAT_RAW, filters=raw)).decode()}"),'
                     'format=lzma.FORMAT_RAW,filters=[{"id":lzma.FILTER_LZMA2}])'),
        "zlib": f'zlib.decompress(base64.b64decode("{base64.b64encode(zlib.compress(zeros, 9)).decode()}"))',
        "bz2": f'bz2.decompress(base64.b64decode("{base64.b64encode(bz2.compress(spaces, 9)).decode()}"))',
    }


def pack(source: bytes, how: str) -> str:
    """One layer of packing around `source` (bytes), as an exec line."""
    if how == "lzma-raw+b85":
        data = lzma.compress(source, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
        return (f'exec(lzma.decompress(base64.b85decode("{base64.b85encode(data).decode()}"),'
                f'format=lzma.FORMAT_RAW,filters=[{{"id":lzma.FILTER_LZMA2}}]))')
    if how == "xz+b64":
        return f'exec(lzma.decompress(base64.b64decode("{base64.b64encode(lzma.compress(source)).decode()}")))'
    if how == "zlib+b85":
        return f'exec(zlib.decompress(base64.b85decode("{base64.b85encode(zlib.compress(source)).decode()}")).decode())'
    if how == "bz2+b64":
        return f'exec(bz2.decompress(base64.b64decode("{base64.b64encode(bz2.compress(source)).decode()}")))'
    if how == "literal":
        return f"exec({source.decode('utf-8', 'replace')!r})"
    raise ValueError(how)


PACK_HEADER = "import lzma, base64, zlib, bz2\n"
PACK_KINDS = ["lzma-raw+b85", "xz+b64", "zlib+b85", "bz2+b64", "literal"]


@st.composite
def packed_script(draw) -> str:
    kind = draw(st.sampled_from(["valid", "random", "truncated", "corrupt", "nested", "bomb", "binary",
                                 "bad_source", "not_literal"]))
    how = draw(st.sampled_from(PACK_KINDS[:4]))
    if kind == "valid":
        return PACK_HEADER + pack(draw(python_module).encode(), how) + "\n"
    if kind == "random":
        payload = draw(st.binary(max_size=512))
        enc = draw(st.sampled_from(["b85encode", "b64encode", "a85encode"]))
        dec = enc.replace("encode", "decode")
        mod = draw(st.sampled_from(["lzma", "zlib", "bz2", "gzip"]))
        return (f"import base64, {mod}\n"
                f'exec({mod}.decompress(base64.{dec}("{getattr(base64, enc)(payload).decode()}")))\n')
    if kind in ("truncated", "corrupt"):
        line = pack(draw(st.sampled_from(corpus_scripts())).encode(), how)
        start, end = line.index('"') + 1, line.index('"', line.index('"') + 1)
        body = line[start:end]
        if kind == "truncated":
            cut = draw(st.integers(0, max(len(body) - 1, 0)))
            body = body[:cut]
        else:
            pos = draw(st.integers(0, max(len(body) - 1, 0)))
            body = body[:pos] + draw(st.sampled_from("0aZ~!{}")) + body[pos + 1:]
        return PACK_HEADER + line[:start] + body + line[end:] + "\n"
    if kind == "nested":
        text = draw(python_module)
        for _ in range(draw(st.integers(1, 7))):
            text = PACK_HEADER + pack(text.encode(), draw(st.sampled_from(PACK_KINDS))) + "\n"
        return text
    if kind == "bomb":
        name = draw(st.sampled_from(sorted(_bombs())))
        return PACK_HEADER + f"exec({_bombs()[name]})\n"
    if kind == "binary":
        return PACK_HEADER + pack(draw(st.binary(min_size=1, max_size=256)), how) + "\n"
    if kind == "bad_source":
        return PACK_HEADER + pack(draw(mutated_script()).encode("utf-8", "surrogatepass"), how) + "\n"
    # not_literal: the argument is computed at run time
    return PACK_HEADER + draw(st.sampled_from([
        "exec(open(__file__.replace('train_gpt.py', 'train_gpt_decode.py')).read())",
        "exec(open('../../etc/passwd').read())",
        "exec(compile(S, 'x', 'exec'))",
        "exec(getattr(lzma, 'decompress')(b''))",
        "exec(lzma.decompress(base64.b85decode(PAYLOAD)))",
        "exec(''.join(['print(1)', '']))",
        "exec('x'.replace('x', 'import os'))",
        "exec(lzma.decompress(base64.b85decode('')))",
        "exec(b'\\xff\\xfe'.decode('utf-16'))",
        "exec(lzma.decompress(base64.b85decode('a'), format=99))",
        "exec(zlib.decompress(base64.b64decode('eJw='), -99))",
        "exec(*args)",
        "exec()",
    ])) + "\n"


source_bytes = st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=256).map(lambda b: b"import torch\n" + b + b"\ndef main():\n    pass\n"),
    python_module.map(lambda s: s.encode("utf-8") + b"\x00\n"),
    python_module.map(lambda s: s.encode("utf-16")),
    python_module.map(lambda s: s.encode("latin-1", "replace") + b"\xe9\xff\n"),
    python_module.map(lambda s: b"\xef\xbb\xbf" + s.encode("utf-8")),  # UTF-8 BOM
    python_module.map(lambda s: b"# -*- coding: latin-1 -*-\n" + s.encode("utf-8")),
)


# ---------------------------------------------------------------- strategies: logs
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.integers(-10 ** 30, 10 ** 30).map(str),
                    st.sampled_from(["nan", "inf", "-inf", "1e999999", "0", "-0.0", ".5", "5.", "1e-400", "",
                                     "0x10", "1_000", "1.2.3", "--1"]))
LOG_TEMPLATES = [
    "step:{a}/{b} train_loss:{c} train_time:{d}ms step_avg:{e}ms",
    "{a}/{b} train_loss: {c} train_time: {d}m tok/s: {e}",
    "stopping_early: wallclock_cap train_time:{a}ms step:{b}/{c}",
    "final_int8_zlib_roundtrip val_loss:{a} val_bpb:{b} eval_time:{c}ms",
    "final_int8_zlib_roundtrip_exact val_loss:{a} val_bpb:{b}",
    "legal_ttt_exact val_loss:{a} val_bpb:{b} time:{c}ms",
    "ttt_sliding:done val_loss={a} val_bpb={b} elapsed={c}s",
    "final_sliding_window_exact stride:{a} val_loss:{b} val_bpb:{c} eval_time:{d}s",
    "Serialized model int8+zlib: {a} bytes",
    "Code size: {a} bytes",
    "Total submission size int8+zlib: {a} bytes",
    "seed:{a}",
    "GPTQ:collected {a} Hessians in {b}s",
    "wallclock:post_gptq total_elapsed:{a}s",
    "total_eval_time: {a}s",
    "budget:{a}/16000000 (x) FITS",
    "artifact:{a}MB code:{b}",
    "  ttt_chunk [{a}/{b}] bpb={c} time={d}s",
    "sliding_eval [{a}%] running_bpb={b}",
    "[{a}] 2026-03-01 12:00:{b} step:{c}/{d} val_loss:{e} val_bpb:{e}",
    "\x1b[32mfinal val_loss:{a}\x1b[0m val_bpb:{b}",
    "def f(): log0(f'val_loss:{{x}}')",
]


@st.composite
def log_line(draw) -> str:
    template = draw(st.sampled_from(LOG_TEMPLATES))
    nums = {k: draw(NUMBERS) for k in "abcde"}
    return template.format(**nums)


@st.composite
def log_text(draw) -> str:
    kind = draw(st.sampled_from(["lines", "mutated", "junk"]))
    if kind == "lines":
        lines = draw(st.lists(st.one_of(log_line(), st.text(max_size=80)), max_size=40))
        sep = draw(st.sampled_from(["\n", "\r\n", "\r"]))
        return sep.join(lines)
    if kind == "mutated":
        lines = draw(st.sampled_from(corpus_logs())).split("\n")
        for _ in range(draw(st.integers(1, 8))):
            if not lines:
                lines = [""]
            i = draw(st.integers(0, len(lines) - 1))
            op = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "truncate", "insert"]))
            if edit_lines(draw, lines, op, i):
                continue
            if op == "replace":
                lines[i] = draw(log_line())
            else:
                lines.insert(i, draw(st.text(max_size=60)))
        return "\n".join(lines)
    return draw(st.binary(max_size=2048)).decode("utf-8", errors=draw(st.sampled_from(["replace", "ignore",
                                                                                        "surrogateescape"])))


# ---------------------------------------------------------------- CI slice (fixed seed)
@ci(120)
@given(python_module)
def test_random_python(code):
    check_source(code)


@ci(40)
@given(mutated_script())
def test_mutated_scripts(code):
    check_source(code)


@ci(40)
@given(source_bytes)
def test_bytes_as_train_script(data):
    check_folder({"train_gpt.py": data})


@ci(60)
@given(packed_script())
def test_packs_unpacker(text):
    check_unpack(text)


@ci(25)
@given(packed_script())
def test_packs_static_audit(text):
    check_source(text)


@ci(120)
@given(log_text())
def test_logs(text):
    check_log(text)


# ---------------------------------------------------------------- big and deep inputs
DEEP = 10_000


def _nested(kind: str, n: int = DEEP) -> str:
    return {
        "parens": "x = " + "(" * n + "1" + ")" * n + "\n",
        "lists": "x = " + "[" * n + "]" * n + "\n",
        "dicts": "x = " + "{1: " * n + "1" + "}" * n + "\n",
        "calls": "x = f" + "(" * n + ")" * n + "\n",
        "not": "x = " + "not " * n + "y\n",
        "unary": "x = " + "-" * n + "y\n",
        "attrs": "x = a" + ".b" * n + "\n",
        "subscripts": "x = a" + "[0]" * n + "\n",
        "binops": "x = " + " + ".join(["1"] * n) + "\n",
        "lambdas": "f = " + "lambda: " * n + "1\n",
        "ternary": "x = " + "a if b else " * n + "c\n",
        "blocks": "".join(" " * i + "if x:\n" for i in range(min(n, 1000))) + " " * min(n, 1000) + "pass\n",
        "unclosed": "x = " + "(" * n + "\n",
    }[kind]


@pytest.mark.parametrize("kind", ["parens", "lists", "dicts", "calls", "not", "unary", "attrs", "subscripts",
                                  "binops", "lambdas", "ternary", "blocks", "unclosed"])
def test_deeply_nested(kind):
    src = _nested(kind)
    check_source(src)
    check_unpack(src)
    check_folder({"train_gpt.py": src.encode()})


def test_deep_nesting_inside_a_pack():
    check_unpack(PACK_HEADER + pack(_nested("parens").encode(), "zlib+b85") + "\n")
    check_source(PACK_HEADER + pack(_nested("lists").encode(), "lzma-raw+b85") + "\n")


def test_ten_megabyte_files():
    big = "x = 1\n" * (10 * 1024 * 1024 // 6)
    r = check_source(big)
    assert r.not_audited or r.files, "a 10 MB source must be audited or refused, not ignored"
    check_folder({"train_gpt.py": big.encode()})
    check_log("step:1/2 train_loss:1.0 train_time:5ms\n" * (10 * 1024 * 1024 // 40))


def test_huge_single_lines():
    check_source("x = '" + "a" * 2_000_000 + "'\n")
    check_source("x = [" + "1," * 100_000 + "]\n")  # dense tokens: ~1 MB of them takes libcst > 10 s
    check_folder({"train_gpt.py": b"# " + b"z" * 3_000_000 + b"\n"})
    check_log("final val_loss:1.0 val_bpb:" + "9" * 1_000_000)
    check_log("x" * 5_000_000)


def test_nul_bytes_and_odd_encodings():
    check_source("x = 1\x00\ny = 2\n")
    check_source("\x00" * 1000)
    for data in (b"\x00" * 100, b"x = 1\n\x00", b"\xff\xfe\x00x", "x = 'é'\n".encode("latin-1"),
                 b"\xef\xbb\xbfx = 1\n", "x = 1\n".encode("utf-16")):
        check_folder({"train_gpt.py": data})
    check_log("\x00" * 1000 + "\nfinal val_loss:\x001.0 val_bpb:1.0\n")


def test_many_files_and_odd_names():
    files = {f"train_gpt_{i}.py": b"x = 1\n" for i in range(210)}
    files["sub/dir/train_x.py"] = b"def f(:\n"
    files["README.md"] = b"TTT_ENABLED=1 torchrun train_gpt.py\n" + b"\xff" * 10
    files["train.log"] = os.urandom(4096)
    check_folder(files)


# ---------------------------------------------------------------- regressions (inputs that once failed)
def _regression_files():
    return sorted(p for p in REGRESSIONS.glob("*__*") if p.is_file())


@pytest.mark.parametrize("path", _regression_files(), ids=lambda p: p.name)
def test_regression(path: Path):
    target = path.name.split("__", 1)[0]
    data = path.read_bytes()
    if target == "folder":
        check_folder({"train_gpt.py": data})
        return
    assert target in CHECKS, f"unknown fuzz target in {path.name}"
    CHECKS[target](data.decode("utf-8", "surrogatepass"))


def save_regression(target: str, data: str | bytes, label: str = "") -> Path:
    """Keep a failing input (the long run calls this): tests/fuzz_regressions/<target>__<hash>.<ext>."""
    import hashlib

    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    ext = {"source": "py.txt", "unpack": "py.txt", "log": "log.txt", "folder": "bin"}[target]
    name = f"{target}__{label + '-' if label else ''}{hashlib.sha256(raw).hexdigest()[:12]}.{ext}"
    REGRESSIONS.mkdir(exist_ok=True)
    (REGRESSIONS / name).write_bytes(raw)
    return REGRESSIONS / name


# ---------------------------------------------------------------- the long budget (not in CI)
LONG_TARGETS = {
    "random_python": (python_module, check_source, 3000),
    "mutated_scripts": (mutated_script(), check_source, 1500),
    "bytes_as_train_script": (source_bytes, lambda d: check_folder({"train_gpt.py": d}), 1000),
    "packs_unpacker": (packed_script(), check_unpack, 1500),
    "packs_static_audit": (packed_script(), check_source, 500),
    "logs": (log_text(), check_log, 3000),
}


@pytest.mark.fuzz_long
@pytest.mark.parametrize("name", sorted(LONG_TARGETS))
def test_long_budget(name):
    strategy, check, n = LONG_TARGETS[name]

    @settings(max_examples=n, derandomize=False, **_COMMON)
    @given(strategy)
    def run(value):
        check(value)

    run()
