"""Loading submission source: decoding, size limits, and static unpacking of packed scripts.

Packed scripts carry their code as `exec(lzma.decompress(base64.b85decode("...")))` and kin.
We never run them: only the argument of `exec` is evaluated, by a small whitelisted interpreter
over the AST (decoders, decompressors, `.decode()`, string/bytes literals, names bound to
literals, `+` and `"".join([...])`). Nested packs are unpacked again, up to MAX_DEPTH.
"""
from __future__ import annotations

import ast
import base64
import bz2
import gzip
import lzma
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILE_BYTES = 5_000_000  # a real train_gpt.py is < 200 kB; bigger is refused, not parsed
MAX_UNPACKED_BYTES = 20_000_000  # zip-bomb guard for one decompression
MAX_DEPTH = 4


class UnpackError(Exception):
    """A pack was found but could not be unpacked statically."""


@dataclass
class Pack:
    line: int  # line of the exec(...) in the outer text
    how: str  # e.g. "lzma+b85"
    code: str  # the unpacked source


@dataclass
class LoadedSource:
    path: str
    text: str  # the source to audit (innermost unpacked layer when packed)
    outer_text: str  # the file as stored
    layers: list[Pack] = field(default_factory=list)
    error: str | None = None  # why it cannot be audited (one line)
    pack_error: str | None = None  # a pack exists but cannot be unpacked
    pack_line: int | None = None


# ------------------------------------------------------------------ interpreter
_DECODERS = {
    "b85decode": base64.b85decode, "b64decode": base64.b64decode, "a85decode": base64.a85decode,
    "b32decode": base64.b32decode, "b16decode": base64.b16decode, "urlsafe_b64decode": base64.urlsafe_b64decode,
    "decodebytes": base64.decodebytes,
}
_ALIASES = {"b85decode": "b85", "b64decode": "b64", "a85decode": "a85", "b32decode": "b32", "b16decode": "b16",
            "urlsafe_b64decode": "b64", "decodebytes": "b64"}
_LZMA_CONST = {"FORMAT_RAW": lzma.FORMAT_RAW, "FORMAT_XZ": lzma.FORMAT_XZ, "FORMAT_ALONE": lzma.FORMAT_ALONE,
               "FORMAT_AUTO": lzma.FORMAT_AUTO, "FILTER_LZMA2": lzma.FILTER_LZMA2, "FILTER_LZMA1": lzma.FILTER_LZMA1,
               "CHECK_NONE": lzma.CHECK_NONE}


def _bounded(data: bytes) -> bytes:
    if len(data) > MAX_UNPACKED_BYTES:
        raise UnpackError(f"unpacked payload larger than {MAX_UNPACKED_BYTES} bytes")
    return data


def _complete(dec, out: bytes, what: str) -> bytes:
    """Like the one-shot `lzma.decompress` & co. the script would call: a stream that stops
    before its end marker is an error, not an empty program."""
    _bounded(out)
    if not dec.eof:
        raise UnpackError(f"{what} stream is truncated or corrupt")
    return out


def _lzma(data: bytes, fmt=lzma.FORMAT_AUTO, filters=None) -> bytes:
    dec = lzma.LZMADecompressor(format=fmt, filters=filters)
    return _complete(dec, dec.decompress(data, max_length=MAX_UNPACKED_BYTES + 1), "lzma")


def _zlib(data: bytes, wbits: int = 15) -> bytes:
    dec = zlib.decompressobj(wbits)
    return _complete(dec, dec.decompress(data, MAX_UNPACKED_BYTES + 1), "zlib/gzip")


def _gzip(data: bytes) -> bytes:
    return _zlib(data, 31)


def _bz2(data: bytes) -> bytes:
    dec = bz2.BZ2Decompressor()
    return _complete(dec, dec.decompress(data, max_length=MAX_UNPACKED_BYTES + 1), "bz2")


_DECOMPRESSORS = {"lzma": _lzma, "zlib": _zlib, "gzip": _gzip, "bz2": _bz2}


class _Interp:
    """Evaluates one expression using only whitelisted operations."""

    def __init__(self, bindings: dict[str, object], folder: Path | None, filename: str):
        self.bindings = bindings
        self.folder = folder
        self.filename = filename
        self.steps: list[str] = []

    def eval(self, node: ast.AST):  # noqa: C901 - one case per allowed form
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes, int)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.bindings:
                self.steps.extend(self.bindings.get(f"steps:{node.id}", ()))  # a staged `S = decode(...)`
                return self.bindings[node.id]
            if node.id == "__file__":
                return self.filename
            raise UnpackError(f"name {node.id!r} is not a literal")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.eval(node.left) + self.eval(node.right)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.Attribute) and node.attr in _LZMA_CONST:
            return _LZMA_CONST[node.attr]
        if isinstance(node, ast.Call):
            return self.call(node)
        raise UnpackError(f"unsupported expression {type(node).__name__}")

    def call(self, node: ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        name = self.bindings.get(f"alias:{name}", name) if name else name
        kwargs = {k.arg: self.eval(k.value) for k in node.keywords if k.arg}
        if name in _DECODERS:
            self.steps.append(_ALIASES[name])
            return _bounded(_DECODERS[name](self.eval(node.args[0])))
        if name in ("decompress",) and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            module = self.bindings.get(f"alias:{func.value.id}", func.value.id)
            if module in _DECOMPRESSORS:
                self.steps.append(module)
                data = self.eval(node.args[0])
                if module == "lzma":
                    return _lzma(data, kwargs.get("format", lzma.FORMAT_AUTO), kwargs.get("filters"))
                if module == "zlib" and len(node.args) > 1:
                    return _zlib(data, self.eval(node.args[1]))
                return _DECOMPRESSORS[module](data)
        if name in ("decode", "encode") and isinstance(func, ast.Attribute):
            value = self.eval(func.value)
            enc = self.eval(node.args[0]) if node.args else kwargs.get("encoding", "utf-8")
            return value.decode(enc) if name == "decode" else value.encode(enc)
        if name == "join" and isinstance(func, ast.Attribute):
            return self.eval(func.value).join(self.eval(node.args[0]))
        if name == "replace" and isinstance(func, ast.Attribute):
            return self.eval(func.value).replace(self.eval(node.args[0]), self.eval(node.args[1]))
        if name == "compile" and isinstance(func, ast.Name):
            return self.eval(node.args[0])
        if name == "read" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call):
            inner = func.value  # open(<sibling>).read()
            if isinstance(inner.func, ast.Name) and inner.func.id == "open" and self.folder is not None:
                target = Path(str(self.eval(inner.args[0])))
                sibling = (self.folder / target.name).resolve()
                if sibling.parent != self.folder.resolve() or not sibling.is_file():
                    raise UnpackError(f"exec reads {target.name!r}, which is not a file in the submission")
                self.steps.append(f"file:{sibling.name}")
                return sibling.read_text(encoding="utf-8", errors="replace")
        raise UnpackError(f"call to {name or '<expr>'} is not a known decoder")


def _literal_bindings(tree: ast.Module) -> dict[str, object]:
    """Module-level `NAME = <literal>` and import aliases (`import lzma as L`)."""
    out: dict[str, object] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                out[f"alias:{a.asname or a.name}"] = a.name
        elif isinstance(stmt, ast.ImportFrom):
            for a in stmt.names:
                out[f"alias:{a.asname or a.name}"] = a.name
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            interp = _Interp(out, None, "")
            try:
                out[stmt.targets[0].id] = interp.eval(stmt.value)
                out[f"steps:{stmt.targets[0].id}"] = list(interp.steps)
            except (UnpackError, Exception):  # noqa: BLE001 - not a literal: leave unbound
                pass
    return out


def find_exec(tree: ast.Module) -> ast.Call | None:
    """The top-level exec(...) call that carries a pack, if any."""
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            f = stmt.value.func
            if isinstance(f, ast.Name) and f.id == "exec" and stmt.value.args:
                return stmt.value
    return None


def looks_packed(tree: ast.Module) -> bool:
    call = find_exec(tree)
    if call is None:
        return False
    real_defs = sum(isinstance(s, (ast.FunctionDef, ast.ClassDef)) for s in tree.body)
    return real_defs == 0


_EXEC = re.compile(r"\bexec\s*\(")


def unpack_once(text: str, folder: Path | None = None, filename: str = "train_gpt.py") -> Pack | None:
    """The next layer of a packed script, or None when `text` is not packed."""
    if not _EXEC.search(text):
        return None  # no exec(...) anywhere: skip the parse (most scripts)
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    if not looks_packed(tree):
        return None
    call = find_exec(tree)
    interp = _Interp(_literal_bindings(tree), folder, filename)
    try:
        value = interp.eval(call.args[0])
    except UnpackError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt payloads raise all kinds of errors
        raise UnpackError(f"{type(exc).__name__}: {exc}") from None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise UnpackError("unpacked payload is not UTF-8 source") from None
    if not isinstance(value, str):
        raise UnpackError("exec argument did not evaluate to source text")
    return Pack(line=call.lineno, how="+".join(interp.steps) or "literal", code=value)


def unpack(text: str, folder: Path | None = None, filename: str = "train_gpt.py") -> tuple[str, list[Pack]]:
    """Every layer unpacked; raises UnpackError on a pack it cannot open."""
    layers: list[Pack] = []
    while True:
        pack = unpack_once(text, folder, filename)
        if pack is None:
            return text, layers
        layers.append(pack)
        if len(layers) > MAX_DEPTH:
            raise UnpackError(f"more than {MAX_DEPTH} nested packs")
        text = pack.code


def decode_bytes(data: bytes) -> str:
    if b"\0" in data:
        raise ValueError("binary file (NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None


_CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")


def load_source(path: str | Path, rel: str | None = None) -> LoadedSource:
    """Read and unpack one file. Never raises: problems land in `.error` / `.pack_error`."""
    path = Path(path)
    rel = rel or path.name
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return LoadedSource(rel, "", "", error=f"file is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
        text = decode_bytes(path.read_bytes())
    except (OSError, ValueError) as exc:
        return LoadedSource(rel, "", "", error=str(exc))
    loaded = LoadedSource(rel, text, text)
    try:
        inner, layers = unpack(text, path.parent, path.name)
        loaded.text, loaded.layers = inner, layers
    except UnpackError as exc:
        loaded.pack_error = str(exc)
        try:
            call = find_exec(ast.parse(text))
            loaded.pack_line = call.lineno if call else 1
        except SyntaxError:
            loaded.pack_line = 1
    except RecursionError:
        loaded.error = "expression nesting too deep to parse"
    return loaded
