"""The static layer on bad or unusual input: it never raises, and what it cannot read is reported
as not audited (exit 3) with a one-line reason. Also: unpacking packed scripts, 3.12 syntax."""
from __future__ import annotations

import base64
import lzma
import zlib
from pathlib import Path

from harness.core.findings import ExitCode
from harness.static.source import MAX_DEPTH, UnpackError, load_source, unpack
from harness.static.audit import audit_folder_static, audit_source
from tests.helpers import adapt_then_score

TTT_LEAK = "import torch\n\n\n" + adapt_then_score()


def _pack(code: str) -> str:
    payload = base64.b85encode(lzma.compress(code.encode())).decode()
    return f'import lzma, base64\nexec(lzma.decompress(base64.b85decode("{payload}")))\n'


def _one_line(reason: str) -> bool:
    return bool(reason) and "\n" not in reason and "Traceback" not in reason


def test_syntax_error_is_not_audited(tmp_path: Path):
    (tmp_path / "train_gpt.py").write_text("def main(:\n    pass\n")
    result = audit_folder_static(tmp_path)
    assert result.exit_code() == ExitCode.NOT_AUDITABLE
    assert len(result.not_audited) == 1
    reason = result.not_audited[0].reason
    assert _one_line(reason) and "syntax error" in reason and "line 1" in reason


def test_empty_folder_is_not_audited(tmp_path: Path):
    result = audit_folder_static(tmp_path)
    assert result.exit_code() == ExitCode.NOT_AUDITABLE
    assert "no Python files" in result.not_audited[0].reason


def test_folder_without_train_script(tmp_path: Path):
    (tmp_path / "helper.py").write_text("x = 1\n")
    result = audit_folder_static(tmp_path)
    assert result.exit_code() == ExitCode.NOT_AUDITABLE
    assert any("missing train script" in n.reason for n in result.not_audited)


def test_missing_folder(tmp_path: Path):
    result = audit_folder_static(tmp_path / "nope")
    assert result.exit_code() == ExitCode.NOT_AUDITABLE


def test_binary_non_utf8_and_huge_files(tmp_path: Path):
    (tmp_path / "train_gpt.py").write_text("print('ok')\n")
    (tmp_path / "blob.py").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "latin.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    with open(tmp_path / "huge.py", "w") as fh:
        fh.write("#" * 5_000_100)
    result = audit_folder_static(tmp_path)
    reasons = {n.path: n.reason for n in result.not_audited}
    assert "NUL" in reasons["blob.py"] or "binary" in reasons["blob.py"]
    assert "UTF-8" in reasons["latin.py"]
    assert "limit" in reasons["huge.py"]
    assert all(_one_line(r) for r in reasons.values())
    assert [f.path for f in result.files] == ["train_gpt.py"]


def test_file_report_fields(tmp_path: Path):
    (tmp_path / "train_gpt.py").write_text(TTT_LEAK)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "junk.py").write_text("def f(:\n")
    result = audit_folder_static(tmp_path)
    assert [f.path for f in result.files] == ["train_gpt.py"]
    report = result.files[0]
    assert len(report.sha256) == 64 and report.lines == TTT_LEAK.count("\n") + 1
    assert result.layers_run == ["static"]
    f = [f for f in result.findings if f.rule == "train-before-score"][0]
    assert f.location.path == "train_gpt.py" and f.location.line == 10 and f.location.function == "eval_ttt"
    assert f.location.source_line == "opt.step()"
    assert any("line 10" in e and "line 13" in e for e in f.evidence), f.evidence


def test_unpackable_pack_is_a_finding_and_not_audited(tmp_path: Path):
    (tmp_path / "train_gpt.py").write_text('import lzma, base64\nexec(lzma.decompress(base64.b85decode("zzzz")))\n')
    result = audit_folder_static(tmp_path)
    assert any(f.rule == "packed-source" and "cannot be unpacked" in f.message for f in result.findings)
    assert any("packed source cannot be unpacked" in n.reason for n in result.not_audited)
    # 1 outranks 3 only for findings at the fail-on severity: packed-source is low
    assert result.exit_code() == ExitCode.NOT_AUDITABLE


def test_packed_code_is_audited_with_its_own_lines():
    result = audit_source(_pack(TTT_LEAK))
    rules = {f.rule: f for f in result.findings}
    assert set(rules) == {"packed-source", "train-before-score"}
    leak = rules["train-before-score"]
    assert leak.location.line == 10 and leak.location.packed_in == "train_gpt.py" and leak.location.packed_line == 2
    assert result.files[0].packed_layers == 1


def test_nested_packs_and_depth_cap():
    twice = _pack(_pack(TTT_LEAK))
    text, layers = unpack(twice)
    assert text == TTT_LEAK and len(layers) == 2
    deep = TTT_LEAK
    for _ in range(MAX_DEPTH + 1):
        deep = _pack(deep)
    try:
        unpack(deep)
    except UnpackError as exc:
        assert "nested" in str(exc)
    else:
        raise AssertionError("depth cap not enforced")
    result = audit_source(deep)
    assert result.not_audited and any(f.rule == "packed-source" for f in result.findings)


def test_zip_bomb_is_refused():
    bomb = base64.b85encode(lzma.compress(b"#" * 30_000_000)).decode()
    result = audit_source(f'import lzma, base64\nexec(lzma.decompress(base64.b85decode("{bomb}")))\n')
    assert any("larger than" in n.reason for n in result.not_audited)


def test_pack_variants_unpack():
    raw = lzma.compress(TTT_LEAK.encode(), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    b85 = base64.b85encode(raw).decode()
    shapes = [
        f'import lzma as L,base64 as B\n__wrapper_size__=1\nexec(L.decompress(B.b85decode("{b85}"),'
        f'format=L.FORMAT_RAW,filters=[{{"id":L.FILTER_LZMA2}}]).decode())\n',
        "import zlib, base64\nexec(zlib.decompress(base64.b64decode("
        + " + ".join(repr(p) for p in _chunks(base64.b64encode(zlib.compress(TTT_LEAK.encode())).decode())) + ")))\n",
        "import lzma, base64\nD = b'''" + "\n".join(_chunks(base64.b85encode(lzma.compress(TTT_LEAK.encode())).decode()))
        + "'''\nexec(lzma.decompress(base64.b85decode(D.replace(b'\\n', b''))))\n",
    ]
    for shape in shapes:
        text, layers = unpack(shape)
        assert text == TTT_LEAK, shape[:80]


def _chunks(s: str, n: int = 70) -> list[str]:
    return [s[i:i + n] for i in range(0, len(s), n)]


def test_exec_of_sibling_file(tmp_path: Path):
    (tmp_path / "train_gpt_decode.py").write_text(TTT_LEAK)
    (tmp_path / "train_gpt.py").write_text(
        'exec(open(__file__.replace("train_gpt.py", "train_gpt_decode.py")).read())\n')
    loaded = load_source(tmp_path / "train_gpt.py")
    assert loaded.text == TTT_LEAK and loaded.layers[0].how == "file:train_gpt_decode.py"
    (tmp_path / "train_gpt.py").write_text('exec(open("../../etc/passwd").read())\n')
    assert load_source(tmp_path / "train_gpt.py").pack_error


def test_python_312_fstrings_are_audited_and_recorded():
    code = TTT_LEAK + '\n\ndef report(d):\n    print(f"{d["val_bpb"]:.4f} {"\\n".join(["a", "b"])}")\n'
    result = audit_source(code)
    assert not result.not_audited
    assert any(f.rule == "train-before-score" and f.location.line == 10 for f in result.findings)
    assert any("3.12" in r for r in result.files[0].rewrites)


def test_unsupported_syntax_is_not_audited():
    result = audit_source("type Point = tuple[float, float]\n")  # 3.12 type alias: not indexable on 3.11
    if result.not_audited:
        assert _one_line(result.not_audited[0].reason)


def test_minified_code_libcst_rejects_is_audited_with_its_lines(tmp_path: Path):
    """PR #1850's unpacked source is minified: CPython accepts `sum((x)for x in xs)`, LibCST
    refuses `sum((0 if i==0 else k)for i in xs)` (no space before `for`). The audit inserts the space within the line, says so,
    and keeps the file's line numbers."""
    src = ("import torch\n"
           "def eval_ttt(model, opt, val_chunks):\n"
           "\tn=sum((0 if x is None else k)for x,k in val_chunks)\n"
           "\tfor(x,y)in val_chunks:\n"
           "\t\tloss=model(x,y);loss.backward();opt.step()\n"
           "\t\twith torch.no_grad():\n"
           "\t\t\tval_loss_sum=model(x,y).sum()\n"
           "\treturn val_loss_sum/n\n")
    (tmp_path / "train_gpt.py").write_text(src)
    result = audit_folder_static(tmp_path)
    assert result.not_audited == [], [n.reason for n in result.not_audited]
    assert any("spaces inserted before keywords" in r for f in result.files for r in f.rewrites)
    lines = {f.location.line for f in result.findings if f.rule == "train-before-score"}
    assert lines and lines <= {4, 5}, lines
