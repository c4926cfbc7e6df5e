"""Entry point inside the sandboxed subprocess (one per rank under torchrun):

    python -m harness.dynamic.run.bootstrap --config CFG.json

Installs the CPU shims, then the provenance tracer (if present and asked for), then runs the
submission's script as `__main__` with `runpy.run_path`, `sys.argv` set and cwd = scratch.
Whatever happens, it writes `<state_dir>/bootstrap_rank<R>.json`: the shims that fired,
whether the run was traced, and for a crash the exception and the last submission frame.
The submission's own exit code is passed through; a crash exits 1 (after the traceback).

Config keys: script (absolute path), argv (list), submission_dir (for frames), state_dir,
trace (bool), tracer_options (dict), shim_options (dict).
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _last_submission_frame(tb, submission_dir: str) -> dict | None:
    """The innermost traceback frame that belongs to the submission (its folder, or code it
    exec'd from a string)."""
    from harness.dynamic.cpu import shims

    best = None
    for frame in traceback.extract_tb(tb):
        fn = frame.filename
        inside = fn.startswith(submission_dir) or not (fn.startswith(shims._lib_prefixes())
                                                        or fn.startswith("<frozen "))
        if inside and "harness/dynamic/run/bootstrap.py" not in fn:
            best = frame
    if best is None:
        return None
    path = best.filename
    if path.startswith(submission_dir):
        path = os.path.relpath(path, submission_dir)
    return {"path": path, "line": best.lineno, "function": best.name, "code": (best.line or "").strip()}


def _check_syntax(script: Path, record: dict) -> str | None:
    """None when the interpreter can compile the script (after rewriting Python 3.12-only
    f-strings in place, in the scratch copy); else the SyntaxError as one line."""
    from harness.static import py312

    source = script.read_bytes()
    try:
        compile(source, str(script), "exec", dont_inherit=True)
        return None
    except SyntaxError as exc:
        first = f"SyntaxError: {exc.msg} ({script.name}:{exc.lineno})"
    try:
        text = source.decode("utf-8")
        if py312.needs_rewrite(text):
            new, n = py312.rewrite(text)
            compile(new, str(script), "exec", dont_inherit=True)
            script.write_text(new, encoding="utf-8")
            record["rewrites"].append(f"{script.name}: {n} Python 3.12 f-string(s) rewritten for "
                                      f"{sys.version_info.major}.{sys.version_info.minor}")
            return None
    except Exception:
        pass
    return first


_FUTURE_MASK = 0
for _name in __import__("__future__").all_feature_names:
    _FUTURE_MASK |= getattr(__import__("__future__"), _name).compiler_flag


def _install_exec_hook(state_dir: Path, record: dict) -> None:
    """Wrap builtins.exec/compile: code a packed script executes from a string is saved under
    state_dir/exec_sources/ (so findings on "<string>" frames can be read), and a payload
    using Python 3.12-only f-strings is rewritten when it fails to compile. The caller's
    __future__ flags are passed through, as the builtins would inherit them."""
    import builtins

    from harness.static import py312
    from harness.dynamic.cpu import shims

    real_exec, real_compile = builtins.exec, builtins.compile
    saved: dict[int, str] = {}
    out_dir = state_dir / "exec_sources"

    def remember(source, filename: str) -> None:
        if isinstance(source, bytes):
            try:
                source = source.decode("utf-8")
            except UnicodeDecodeError:
                return
        if not isinstance(source, str) or len(source) < 200 or hash(source) in saved:
            return
        out_dir.mkdir(exist_ok=True)
        path = out_dir / f"exec_{len(saved):03d}.py"
        try:
            path.write_text(source, encoding="utf-8")
        except OSError:
            return
        saved[hash(source)] = str(path)
        record["exec_sources"].append({"filename": filename, "path": str(path)})

    def compile_hook(source, filename, mode, flags=0, dont_inherit=False, optimize=-1, *, _depth=1, **kw):
        if not dont_inherit:
            flags |= sys._getframe(_depth).f_code.co_flags & _FUTURE_MASK
        # Save what the submission itself executes (not dataclasses'/namedtuple's generated
        # code); PyCF_ONLY_AST (0x400) is ast.parse: nothing executes.
        if not (flags & 0x400) and shims._caller_is_submission(_depth + 1):
            remember(source, str(filename))
        try:
            return real_compile(source, filename, mode, flags, True, optimize, **kw)
        except SyntaxError:
            if not isinstance(source, (str, bytes)):
                raise
            text = source.decode("utf-8") if isinstance(source, bytes) else source
            if not py312.needs_rewrite(text):
                raise
            new, n = py312.rewrite(text)
            record["rewrites"].append(f"{filename}: {n} Python 3.12 f-string(s) rewritten for "
                                      f"{sys.version_info.major}.{sys.version_info.minor}")
            return real_compile(new, filename, mode, flags, True, optimize, **kw)

    def exec_hook(source, globals=None, locals=None, /, **kw):
        frame = sys._getframe(1)
        if globals is None:
            globals = frame.f_globals
            if locals is None:
                locals = frame.f_locals
        elif locals is None:
            locals = globals
        if isinstance(source, (str, bytes)):
            source = compile_hook(source, "<string>", "exec", _depth=2)
        return real_exec(source, globals, locals, **kw)

    builtins.compile = compile_hook
    builtins.exec = exec_hook


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="harness.dynamic.run.bootstrap")
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    cfg: dict[str, Any] = json.loads(Path(args.config).read_text())
    rank = _rank()
    state_dir = Path(cfg["state_dir"])
    state_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"rank": rank, "traced": False, "trace_note": "", "shims": [],
                              "crash": None, "exit_code": None, "rewrites": [], "exec_sources": []}
    out_path = state_dir / f"bootstrap_rank{rank}.json"

    def save() -> None:
        try:
            out_path.write_text(json.dumps(record, indent=1))
        except OSError:
            pass

    script = Path(cfg["script"])
    syntax = _check_syntax(script, record)
    if syntax is not None:
        record["crash"] = {"type": "SyntaxError", "message": syntax, "frame": None,
                           "not_auditable": f"script does not compile under Python "
                                            f"{sys.version_info.major}.{sys.version_info.minor}: {syntax}"}
        record["exit_code"] = 3
        save()
        print(f"golf-audit bootstrap: {syntax}", file=sys.stderr)
        return 3

    from harness.dynamic.cpu import shims
    shim_state = shims.install(shims.ShimOptions(**cfg.get("shim_options", {})))
    _install_exec_hook(state_dir, record)

    tracer = None
    if cfg.get("trace"):
        try:
            from harness.dynamic.trace import tracer as tracer_mod  # written by another helper
        except ImportError as exc:
            record["trace_note"] = f"not traced: tracer unavailable ({exc})"
        else:
            try:
                import dataclasses
                known = {f.name for f in dataclasses.fields(tracer_mod.TracerConfig)}
                opts = {"submission_dir": cfg.get("submission_dir", ""), "val_files": cfg.get("val_files", [])}
                opts.update(cfg.get("tracer_options") or {})
                opts.setdefault("eager_only", shim_state.eager_only)
                tcfg = tracer_mod.TracerConfig(**{k: v for k, v in opts.items() if k in known})
                tracer = tracer_mod.Tracer(tcfg)
                tracer.install()
                record["traced"] = True
            except Exception as exc:  # a tracer bug must not look like a submission crash
                record["trace_note"] = f"not traced: tracer failed to install: {type(exc).__name__}: {exc}"
                tracer = None
    else:
        record["trace_note"] = "not traced: tracing off"

    sys.argv = [str(script)] + list(cfg.get("argv", []))
    exit_code = 0
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        exit_code = code if isinstance(code, int) else (0 if code is None else 1)
        if not isinstance(code, (int, type(None))):
            print(code, file=sys.stderr)
    except BaseException as exc:  # the submission crashed: say where, exit 1
        traceback.print_exc()
        record["crash"] = {"type": type(exc).__name__, "message": str(exc).strip().splitlines()[0][:300]
                           if str(exc).strip() else "",
                           "frame": _last_submission_frame(exc.__traceback__, cfg.get("submission_dir", ""))}
        exit_code = 1
    finally:
        record["shims"] = shims.describe()
        if tracer is not None:
            try:
                trace_path = state_dir / f"trace_rank{rank}.jsonl"
                tracer.finish(str(trace_path))
                record["trace_path"] = str(trace_path)
            except Exception as exc:
                record["traced"] = False
                record["trace_note"] = f"not traced: tracer failed at finish: {type(exc).__name__}: {exc}"
        record["exit_code"] = exit_code
        save()
        sys.stdout.flush()
        sys.stderr.flush()
    del shim_state
    return exit_code


if __name__ == "__main__":
    code = main()
    # os._exit: skip interpreter teardown of leftover non-daemon threads in the submission.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
