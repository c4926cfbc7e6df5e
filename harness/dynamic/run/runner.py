"""Run a submission's training script at toy scale on CPU, inside the sandbox, and collect
what it did: exit status, printed scores, trace, artifacts.

    result = run_submission(folder, env={...}, toy_data=get_toy_data())

Scratch layout (the sandbox's only writable place; cwd of the run):
    SCRATCH/                  copy of the submission folder (the script runs from here)
    SCRATCH/data/             toy data: datasets/fineweb10B_sp1024/*.bin, tokenizers/*.model
                              (`.runtime/data` instead when the submission ships a data/ dir)
    SCRATCH/.runtime/         config.json, bootstrap_rank<R>.json, trace_rank<R>.jsonl, bin/
    SCRATCH/home/             HOME inside the sandbox
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.dynamic.run import sandbox
from harness.dynamic.trace import reported as logparse
from harness.dynamic.cpu import toy_env
from harness.dynamic.trace.events import Reported, RunEnd, Trace
from harness.challenge.layout import read_text, run_instructions
from harness.challenge.shards import read_shard, write_shard
from harness.challenge.token_bytes import byte_tables, per_token_bytes
from harness.dynamic.cpu.packages import explain_missing

from harness.dynamic.run.paths import SCRATCH_PREFIX, STATE_DIR, Aliases

_SKIP_DIRS = {STATE_DIR, "home", "__pycache__"}


@dataclass
class RunResult:
    exit_code: int
    wall_s: float
    stdout: str
    stderr: str  # capped (head + tail) by the sandbox
    trace: Trace | None  # None when the run was not traced (see notes for why)
    artifacts: dict[str, int]  # files the run created or changed in scratch: name -> bytes
    scratch: str
    notes: list[str] = field(default_factory=list)  # toy env, shims used, isolation, rewrites
    error: str | None = None  # one line when the run failed (crash, timeout, sandbox, OOM)
    reported: list[Reported] = field(default_factory=list)  # score lines parsed from stdout
    entry_script: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # what the submission ran with
    killed_reason: str | None = None  # from the sandbox
    not_auditable: str | None = None  # set when the script cannot run here at all (e.g. 3.12 syntax)
    val_bytes_utf8: int | None = None
    warnings: list[str] = field(default_factory=list)  # from the sandbox: isolation weaker than bwrap

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None


# ---------------------------------------------------------------- shards and bytes
def val_bytes_utf8(tokens: np.ndarray, tokenizer_path: str | Path) -> tuple[int, int]:
    """(decoded bytes, LUT bytes) of the scored targets, positions 1..N-1.

    Definition: split the stream at boundary tokens (control/unknown pieces, e.g. BOS); each
    run of ordinary tokens is decoded with the tokenizer and its UTF-8 length counted. For a
    run that starts at position 0 (token 0 is context, never a target) the bytes of token 0's
    own decoding are subtracted. Decoding drops the dummy-prefix space of a run's first piece,
    which is the space the challenge's LUT rule does not count after a boundary token. So this
    equals the LUT sum (base bytes + leading space unless the previous token is a boundary)
    whenever the LUTs are right; the LUT sum is returned too as a cross-check."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    toks = [int(t) for t in np.asarray(tokens).tolist()]
    boundary = byte_tables(sp)[2].tolist()

    def dec(ids: list[int]) -> int:
        return len(sp.decode(ids).encode("utf-8"))

    decoded = 0
    start = 0
    for i in range(len(toks) + 1):
        if i == len(toks) or boundary[toks[i]]:
            if i > start:
                run = toks[start:i]
                decoded += dec(run) - (dec(run[:1]) if start == 0 else 0)
            start = i + 1
    lut = int(per_token_bytes(np.asarray(toks), sp)[1:].sum()) if toks else 0
    return decoded, lut


# ---------------------------------------------------------------- toy data
def default_cache_dir() -> Path:
    root = os.environ.get("GOLF_AUDIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "golf-audit")
    return Path(root)


def get_toy_data(cache_dir: str | Path | None = None, *, vocab_size: int = 1024, seed: int = 0,
                 **kwargs: Any) -> dict:
    """Toy data from reference_model.toy_data, built once per (vocab, seed, options) under the
    cache dir and reused. Safe against concurrent builders (build in a temp dir, rename)."""
    from reference_model.toy_data import make_toy_data

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = f"toy-v1-vocab{vocab_size}-seed{seed}" + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
    final = cache / key
    meta = final / "toy_data.json"
    if meta.exists():
        return json.loads(meta.read_text())
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=key + ".tmp", dir=cache))
    info = make_toy_data(tmp, vocab_size=vocab_size, seed=seed, **kwargs)
    info = _relocate(info, tmp, final)
    (tmp / "toy_data.json").write_text(json.dumps(info, indent=1))
    try:
        tmp.rename(final)
    except OSError:  # someone else finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads(meta.read_text())


def _relocate(obj: Any, old: Path, new: Path) -> Any:
    if isinstance(obj, str) and obj.startswith(str(old)):
        return str(new) + obj[len(str(old)):]
    if isinstance(obj, (list, tuple)):
        return [_relocate(x, old, new) for x in obj]
    if isinstance(obj, dict):
        return {k: _relocate(v, old, new) for k, v in obj.items()}
    if isinstance(obj, Path):
        return _relocate(str(obj), old, new)
    return obj


# ---------------------------------------------------------------- entry script
_MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*['"]__main__['"]\s*:""", re.M)
_README_CMD = re.compile(r"(?:torchrun|python3?)\b[^\n`]*?\s([\w./-]+\.py)\b")


def find_entry_script(folder: Path) -> Path | None:
    """train_gpt.py, else the single train_gpt*.py, else the .py the README's command runs, or a
    shell script of the folder runs (`bash run.sh` in the README, the torchrun line in run.sh: PR #903),
    else the one .py of the folder that runs as a script (PR #651: `train_hybrid.py` beside a helper
    module, no README)."""
    folder = Path(folder)
    if (folder / "train_gpt.py").is_file():
        return folder / "train_gpt.py"
    cands = sorted(p for p in folder.glob("train_gpt*.py") if p.is_file())
    docs = run_instructions(folder) if folder.is_dir() else {}
    readme = [t for name, t in docs.items() if name.lower() == "readme.md"]
    for text in readme + [t for name, t in docs.items() if name.endswith(".sh")]:
        for m in _README_CMD.finditer(text):
            name = Path(m.group(1)).name
            if (folder / name).is_file() and (len(cands) != 1 or name == cands[0].name):
                return folder / name
    if len(cands) == 1:
        return cands[0]
    mains = [p for p in sorted(folder.glob("*.py")) if p.is_file() and _MAIN_GUARD.search(read_text(p))]
    return mains[0] if len(mains) == 1 else None


# ---------------------------------------------------------------- the run
def _prepare_data(scratch: Path, toy_data: dict, val_override: np.ndarray | None,
                  notes: list[str]) -> tuple[Path, Path, np.ndarray]:
    """Lay the toy data out where contest scripts look (data/datasets/fineweb10B_sp1024,
    data/tokenizers/fineweb_1024_bpe.model). Returns (data_path, tokenizer_path, val tokens)."""
    root = scratch / "data"
    if root.exists():
        root = scratch / STATE_DIR / "data"
        notes.append(f"submission ships a data/ folder: toy data placed in {STATE_DIR}/data instead")
    vocab = int(toy_data.get("vocab_size", 1024))
    ds = root / "datasets" / f"fineweb10B_sp{vocab}"
    tk = root / "tokenizers"
    ds.mkdir(parents=True, exist_ok=True)
    tk.mkdir(parents=True, exist_ok=True)
    tok_src = Path(toy_data["tokenizer"])
    tok_dst = tk / f"fineweb_{vocab}_bpe.model"
    for dst in {tok_dst, tk / tok_src.name}:
        if not dst.exists():
            shutil.copyfile(tok_src, dst)
    vocab_file = tok_src.with_suffix(".vocab")
    if vocab_file.exists():
        shutil.copyfile(vocab_file, tok_dst.with_suffix(".vocab"))
    # copies, not links: a link's target would show the run where our cache is (toy shards are small)
    for i, src in enumerate(toy_data["train_files"]):
        dst = ds / f"fineweb_train_{i:06d}.bin"
        if not dst.exists():
            shutil.copyfile(src, dst)
    val_files = list(toy_data["val_files"])
    if val_override is not None:
        val = np.asarray(val_override)
        write_shard(ds / "fineweb_val_000000.bin", val)
        notes.append(f"validation tokens overridden ({val.size} tokens)")
    else:
        parts = [read_shard(p) for p in val_files]
        val = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
        for i, src in enumerate(val_files):
            dst = ds / f"fineweb_val_{i:06d}.bin"
            if not dst.exists():
                shutil.copyfile(src, dst)
    return ds, tok_dst, val


def _write_byte_sidecar(ds: Path, val: np.ndarray, tokenizer_path: Path, notes: list[str]) -> None:
    """CaseOps-era scripts read per-token UTF-8 byte counts from fineweb_val_bytes_*.bin (same
    shard format). Written only for scripts that mention it: older scripts glob
    fineweb_val_*.bin and would load the sidecar as tokens."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    write_shard(ds / "fineweb_val_bytes_000000.bin", per_token_bytes(val, sp).astype(np.int64))
    notes.append("wrote validation byte sidecar fineweb_val_bytes_000000.bin (LUT rule per token)")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[p.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def _artifacts(scratch: Path, before: dict[str, tuple[int, int]], data_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in scratch.rglob("*"):
        rel = p.relative_to(scratch)
        if not rel.parts or rel.parts[0] in _SKIP_DIRS or (scratch / rel.parts[0]) == data_dir.parents[1]:
            continue
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            key = rel.as_posix()
            if before.get(key) != (st.st_size, st.st_mtime_ns):
                out[key] = st.st_size
    return out


def _last_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith("[golf-audit"):
            return line[:300]
    return ""


def _submission_frame_from_stderr(stderr: str, scratch: Path) -> str:
    """file:line of the innermost traceback frame inside scratch, from printed tracebacks."""
    hits = re.findall(r'File "([^"]+)", line (\d+)', stderr)
    for path, line in reversed(hits):
        if path.startswith(str(scratch)) and f"/{STATE_DIR}/" not in path:
            return f"{os.path.relpath(path, scratch)}:{line}"
    return ""


_DTYPE_MISMATCH = ("expected scalar type", "same dtype", "expected m1 and m2", "dtype mismatch",
                   "should be the same", "expected both vectors to have same dtype")


BF16_RERUN_NOTE = "autocast: float32 run failed"


def _retry_with_bf16_autocast(run_once):
    """`autocast(device_type="cuda")` regions first run in float32 (CPU bf16 autocast was
    measured ~9x slower). A script that relies on autocast to mix dtypes (bf16 weights, fp32
    activations) then fails with a dtype mismatch that cannot happen on the GPU; such a run is
    repeated once with CPU bf16 autocast, and the notes say so. The wrapper keeps the run's
    signature (`functools.wraps`: harness/evaluation/toy.py reads its parameters)."""

    @functools.wraps(run_once)
    def run(folder: str | Path, *, scratch: str | Path | None = None, shim_options: dict | None = None,
            **kwargs: Any) -> RunResult:
        shim_options = dict(shim_options or {})
        first = run_once(folder, scratch=scratch, shim_options=shim_options, **kwargs)
        fp32 = shim_options.get("autocast", "float32") == "float32"
        mixed = first.error is not None and any(p in (first.error + first.stderr[-2000:]) for p in _DTYPE_MISMATCH)
        used_autocast = any("autocast(cuda) -> float32" in n for n in first.notes)
        if not (fp32 and mixed and used_autocast):
            return first
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        second = run_once(folder, scratch=scratch, shim_options={**shim_options, "autocast": "bf16"}, **kwargs)
        second.notes.insert(0, f"{BF16_RERUN_NOTE} ({first.error}); reran with CPU bf16 autocast")
        second.wall_s += first.wall_s
        return second

    return run


LITERALS_RERUN_NOTE = "toy scale (literal): the run failed with the script's written hyperparameters shrunk"


def _shrink_script_literals(script: Path, toy_options: toy_env.ToyOptions | None, notes: list[str]) -> None:
    """Apply the toy profile to hyperparameters written as numbers in the entry script and in
    the folder's modules it imports, transitively (a configs.py of model dicts: PR #1545), in
    the scratch copy, line numbers kept (toy_env.shrink_literals)."""
    todo, seen = [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        new, lit_notes = toy_env.shrink_literals(text, toy_options, "the script" if path == script else path.name)
        if lit_notes:
            path.write_text(new, encoding="utf-8")
            notes.extend(lit_notes)
        todo.extend(p for p in (script.parent / f"{m}.py" for m in sorted(toy_env.imported_modules(text)))
                    if p.is_file())


def _retry_with_written_literals(run_once):
    """A run that failed with written hyperparameters shrunk (a layer index hard-coded beyond
    the toy layer count, a shape another literal fixes) is repeated once with the script's own
    numbers, slower but as written; the notes say so, and `harness.dynamic.audit` keeps that
    choice for the probe runs. A run stopped by a limit is not repeated: it would only be slower."""

    @functools.wraps(run_once)
    def run(folder: str | Path, *, scratch: str | Path | None = None,
            toy_options: toy_env.ToyOptions | None = None, **kwargs: Any) -> RunResult:
        first = run_once(folder, scratch=scratch, toy_options=toy_options, **kwargs)
        shrunk = any(str(n).startswith(toy_env.LITERAL_NOTE) for n in first.notes)
        if first.error is None or not shrunk or first.killed_reason:
            return first
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        opts = dataclasses.replace(toy_options or toy_env.ToyOptions(), literals=False)
        second = run_once(folder, scratch=scratch, toy_options=opts, **kwargs)
        second.notes.insert(0, f"{LITERALS_RERUN_NOTE} ({first.error}); reran with the script's values")
        second.wall_s += first.wall_s
        return second

    return run


@_retry_with_written_literals
@_retry_with_bf16_autocast
def run_submission(folder: str | Path, *, env: dict[str, str] | None = None, toy_data: dict,
                   submission_env: dict[str, str] | None = None, nproc: int = 1, trace: bool = True,
                   tracer_options: dict | None = None,
                   val_override: np.ndarray | None = None, timeout_s: float = 300,
                   scratch: str | Path | None = None, keep_scratch: bool = False,
                   toy_options: toy_env.ToyOptions | None = None,
                   shim_options: dict | None = None, limits: sandbox.Limits | None = None,
                   allow_network: bool = False, allow_weak_sandbox: bool = False) -> RunResult:
    """Run the submission in `folder` on toy data inside the sandbox. Never raises for what
    the submission does; every failure is a RunResult with `error` set. A float32-autocast run
    that fails on mixed dtypes is run once more with bf16 autocast (_retry_with_bf16_autocast)."""
    folder = Path(folder).resolve()
    notes: list[str] = []
    env = dict(env or {})
    own_scratch = scratch is None
    scratch_path = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX)) if own_scratch else Path(scratch).resolve()

    def fail(msg: str, not_auditable: str | None = None) -> RunResult:
        return RunResult(exit_code=-1, wall_s=0.0, stdout="", stderr="", trace=None, artifacts={},
                         scratch=str(scratch_path), notes=notes, error=msg, not_auditable=not_auditable or msg)

    try:
        if not folder.is_dir():
            return fail(f"not a folder: {folder}")
        entry = find_entry_script(folder)
        if entry is None:
            return fail("no entry script: no train_gpt.py, no single train_gpt*.py, no .py named "
                        "by the README's command")
        # copy the submission
        scratch_path.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, scratch_path, dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", ".git"))
        before = _snapshot(scratch_path)
        state = scratch_path / STATE_DIR
        state.mkdir(exist_ok=True)
        data_path, tokenizer_path, val_tokens = _prepare_data(scratch_path, toy_data, val_override, notes)
        script = scratch_path / entry.relative_to(folder)
        sources = toy_env.submission_sources(folder)
        if toy_options is None or toy_options.literals:
            _shrink_script_literals(script, toy_options, notes)
        if "fineweb_val_bytes" in sources or "val_bytes_" in sources:
            _write_byte_sidecar(data_path, val_tokens, tokenizer_path, notes)

        # paths as the submission sees them: bubblewrap mounts scratch at one fixed path
        inner = sandbox.scratch_alias()

        def inside(p: str | Path) -> str:
            text = str(p)
            if inner and (text == str(scratch_path) or text.startswith(str(scratch_path) + os.sep)):
                return inner + text[len(str(scratch_path)):]
            return text

        def outside(p: str) -> str:
            """A path the sandboxed run reported, as it is on this side."""
            if inner and (p == inner or p.startswith(inner + os.sep)):
                return str(scratch_path) + p[len(inner):]
            return p

        # environment: toy profile, then the submission's own flags shrunk to toy scale, then
        # the caller's explicit values (user --env), which win as given
        toy, toy_notes = toy_env.toy_env(folder, data_path=inside(data_path), tokenizer_path=inside(tokenizer_path),
                                         # a neutral id, as the baseline's own default (a uuid):
                                         # nothing in it reads as an audit (docs/sandbox.md)
                                         run_id=str(uuid.uuid4()), opts=toy_options,
                                         source=sources)
        notes.extend(toy_notes)
        run_env = dict(toy)
        if submission_env:
            flags, flag_notes = toy_env.shrink_flags({k: str(v) for k, v in submission_env.items()}, toy_options,
                                                     source=sources)
            run_env.update(flags)
            notes.extend(flag_notes)
        run_env.update({k: str(v) for k, v in env.items()})
        if env:
            notes.append("env from caller: " + ", ".join(f"{k}={v}" for k, v in sorted(env.items())))
        repo_root = str(checkout_root())
        extra = extra_site_dirs()
        # under bubblewrap our code and the files the tracer reads are mounted at neutral paths,
        # and their host folders are hidden: no path the run sees names the tool (docs/sandbox.md)
        alias = Aliases(enabled=inner is not None)
        tracer_options = {k: _aliased_paths(v, alias) for k, v in (tracer_options or {}).items()}
        if extra:
            notes.append("extra site dirs on PYTHONPATH: " + ", ".join(extra))
        bins = [str(Path(p) / "bin") for p in extra if (Path(p) / "bin").is_dir()]
        run_env.update({
            "PATH": os.pathsep.join(bins + [os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo", "TP_SOCKET_IFNAME": "lo",
            "PYTHONPATH": os.pathsep.join([alias(repo_root)] + [alias(p) for p in extra]
                                          + ([run_env["PYTHONPATH"]] if run_env.get("PYTHONPATH") else [])),
            "TORCHINDUCTOR_CACHE_DIR": inside(state / "inductor"),
            "CUDA_VISIBLE_DEVICES": "",
        })
        cfg = {
            "script": inside(script), "argv": [], "submission_dir": inside(scratch_path),
            "state_dir": inside(state), "trace": bool(trace), "tracer_options": tracer_options or {},
            "val_files": [inside(p) for p in sorted(data_path.glob("fineweb_val_[0-9]*.bin"))],
            "shim_options": {"bin_dir": inside(state / "bin"), **(shim_options or {})},
        }
        cfg_path = state / "config.json"
        cfg_path.write_text(json.dumps(cfg, indent=1))
        if nproc <= 1:
            cmd = [sys.executable, "-m", "harness.dynamic.run.bootstrap", "--config", inside(cfg_path)]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={int(nproc)}", "-m", "harness.dynamic.run.bootstrap",
                   "--config", inside(cfg_path)]
            run_env["MASTER_ADDR"] = "127.0.0.1"
            notes.append(f"torchrun --nproc_per_node={nproc} (gloo)")
        lim = limits or sandbox.Limits(cpu_s=int(timeout_s * max(nproc, 1) + 60))
        # golf-audit itself (the bootstrap), the extra site dirs and the files the tracer is told
        # to read (e.g. val_tokens_path) must be visible; they may live under /tmp (a CI clone),
        # which is private inside the sandbox
        if alias.enabled:
            binds: list = [(host, dst) for host, dst in alias.binds.items()]
            hide = _hidden_folders([repo_root, str(default_cache_dir()), *extra], scratch_path)
        else:
            binds = sorted({repo_root, *extra, *_paths_in(tracer_options)})
            hide = []
        try:
            sres = sandbox.run(cmd, scratch=scratch_path, env=run_env, limits=lim,
                               allow_network=allow_network, allow_weak=allow_weak_sandbox,
                               timeout_s=timeout_s, inner_scratch=inner, hide=hide,
                               extra_ro_binds=[b for b in binds
                                               if not (b[0] if isinstance(b, tuple) else b).startswith(str(scratch_path))])
        except sandbox.SandboxUnavailable as exc:
            return fail(f"not run: {exc}")
        notes.append(f"sandbox: {sres.isolation}")
        notes.extend(sres.notes)

        # what each rank's bootstrap recorded
        records = []
        for p in sorted(state.glob("bootstrap_rank*.json")):
            try:
                records.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                pass
        shims_used = sorted({s for r in records for s in r.get("shims", [])})
        notes.extend(f"shim {s}" for s in shims_used)
        trace_notes = sorted({r.get("trace_note", "") for r in records if r.get("trace_note")})
        notes.extend(trace_notes)
        notes.extend(sorted({f"rewrite: {w}" for r in records for w in r.get("rewrites", [])}))
        exec_sources = {outside(e["path"]): e["filename"] for r in records for e in r.get("exec_sources", [])}
        if exec_sources:
            notes.append(f"exec'd sources saved: {len(exec_sources)} under {STATE_DIR}/exec_sources")

        error, not_auditable = _explain(sres, records, scratch_path, timeout_s)
        reported = logparse.parse_reported(sres.stdout)
        nan_labels = sorted({r.label for r in reported if r.val_bpb is not None and r.val_bpb != r.val_bpb})
        if nan_labels:
            notes.append("reported scores are NaN: " + ", ".join(nan_labels[:8]) +
                         " (the toy run diverged; Triton TMA kernels are known to compute wrong values "
                         "in triton's CPU interpreter)")
        if "@triton.jit" in sources and any("triton: real package" in s for s in shims_used):
            notes.append("triton kernels ran in triton's CPU interpreter: their outputs are computed "
                         "outside torch, so the tracer cannot follow provenance through them")

        vb = None
        try:
            decoded, lut = val_bytes_utf8(val_tokens, tokenizer_path)
            vb = decoded
            if decoded != lut:
                notes.append(f"val bytes: decoded {decoded} != LUT rule {lut}")
        except Exception as exc:  # tokenizer problems are ours, not the submission's
            notes.append(f"val bytes not computed: {type(exc).__name__}: {exc}")

        tr = None
        trace_files = sorted(state.glob("trace_rank*.jsonl"))
        if trace and trace_files and all(r.get("traced") for r in records):
            try:
                tr = Trace.load(trace_files)
            except Exception as exc:
                notes.append(f"not traced: trace files unreadable: {type(exc).__name__}: {exc}")
        elif trace and not trace_notes:
            notes.append("not traced: no trace files written")
        if tr is not None:
            # Frames are relative to the folder; the original stays readable after scratch goes.
            tr.submission_dir = str(folder)
            tr.meta["exec_sources"] = _exec_source_texts(exec_sources)
            tr.events.extend(reported)
            tr.events.append(RunEnd(seq=2_000_000_000, rank=0, exit_code=sres.returncode,
                                    wall_s=sres.wall_s, val_bytes_utf8=vb,
                                    tokenizer_path=str(tokenizer_path), notes=list(notes)))
            tr.meta.update({"env": run_env_public(run_env), "entry_script": script.name,
                            "nproc": nproc, "shims": shims_used})

        return RunResult(
            exit_code=sres.returncode, wall_s=sres.wall_s, stdout=sres.stdout, stderr=sres.stderr,
            trace=tr, artifacts=_artifacts(scratch_path, before, data_path),
            scratch=str(scratch_path), notes=notes, error=error, reported=reported,
            entry_script=script.name, env=run_env_public(run_env), killed_reason=sres.killed_reason,
            not_auditable=not_auditable, val_bytes_utf8=vb, warnings=list(sres.warnings))
    except Exception as exc:  # a bug of ours: still a result, never a traceback
        return fail(f"golf-audit runner error: {type(exc).__name__}: {exc}")
    finally:
        if own_scratch and not keep_scratch:
            shutil.rmtree(scratch_path, ignore_errors=True)


def _exec_source_texts(exec_sources: dict[str, str], cap: int = 2_000_000) -> list[dict]:
    """Code the submission exec'd from strings (packed payloads), for judges quoting
    "<string>" frames; capped in total size."""
    out, total = [], 0
    for path, filename in exec_sources.items():
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            continue
        if total + len(text) > cap:
            break
        total += len(text)
        out.append({"filename": filename, "text": text})
    return out


def extra_site_dirs() -> list[str]:
    """Optional packages for submission runs kept out of the main environment (e.g. triton,
    ~1 GB, used to run Triton kernels in its CPU interpreter): $GOLF_AUDIT_EXTRA_SITE
    (os.pathsep-separated), else <cache>/site-extra when it exists."""
    env = os.environ.get("GOLF_AUDIT_EXTRA_SITE")
    if env is not None:
        return [p for p in env.split(os.pathsep) if p]
    default = default_cache_dir() / "site-extra"
    return [str(default)] if default.is_dir() else []


def _paths_in(options: dict) -> set[str]:
    """Absolute paths of existing files among option values (a value may be a list)."""
    out = set()
    for value in options.values():
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, str) and v.startswith("/") and os.path.exists(v):
                out.add(str(Path(v).resolve()))
    return out


def _aliased_paths(value, alias: Aliases):
    """An option value with each existing absolute path replaced by its path inside the sandbox."""
    if isinstance(value, (list, tuple)):
        return [_aliased_paths(v, alias) for v in value]
    if isinstance(value, str) and value.startswith("/") and os.path.exists(value):
        return alias(str(Path(value).resolve()))
    return value


def _hidden_folders(candidates: list[str], scratch: Path) -> list[str]:
    """Host folders to cover inside the sandbox: those that exist outside /tmp (private there
    anyway) and hold neither the Python that runs nor the scratch folder."""
    keep = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), scratch.resolve()]
    out = []
    for c in candidates:
        p = Path(c).resolve()
        if not p.is_dir() or p == Path("/") or str(p).startswith(tempfile.gettempdir()):
            continue
        if any(k == p or p in k.parents for k in keep):
            continue
        out.append(str(p))
    return sorted(set(out))


def checkout_root() -> Path:
    """The folder that holds the `harness` package: the sandboxed run imports golf-audit from
    here (PYTHONPATH), never from whatever an editable install points at."""
    return Path(__file__).resolve().parents[3]


def run_env_public(env: dict[str, str]) -> dict[str, str]:
    """The env worth reporting (drops our plumbing)."""
    hide = {"PYTHONPATH", "PATH", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "TORCHINDUCTOR_CACHE_DIR",
            "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES"}
    return {k: v for k, v in sorted(env.items()) if k not in hide}


def _explain(sres: sandbox.SandboxResult, records: list[dict], scratch: Path,
             timeout_s: float) -> tuple[str | None, str | None]:
    """(one-line error, not-auditable reason) for a failed run; (None, None) when it passed."""
    reason = sres.killed_reason
    if reason == "timeout":
        last = _last_line(sres.stdout)
        return f"timeout after {timeout_s:.0f}s (last output: {last[:120]!r})", f"timeout after {timeout_s:.0f}s"
    if reason in ("output-cap", "process-limit", "cpu-time", "file-size"):
        return f"sandbox limit: {reason}", f"sandbox limit: {reason}"
    crash = next((r["crash"] for r in records if r.get("crash")), None)
    if crash is not None:
        where = ""
        if crash.get("frame"):
            f = crash["frame"]
            where = f" at {f['path']}:{f['line']}"
        msg = f"{crash['type']}: {crash['message']}{where}"
        if reason == "memory":
            return f"out of memory: {msg}", "out of memory"
        if crash.get("not_auditable"):
            return crash["not_auditable"], crash["not_auditable"]
        if reason == "sandbox-violation":
            return f"sandbox violation: {msg}", None
        missing = explain_missing(msg) if crash["type"] in ("ModuleNotFoundError", "ImportError") else None
        return f"crash: {msg}" + (f" (missing import: {missing})" if missing else ""), None
    if sres.returncode != 0:
        where = _submission_frame_from_stderr(sres.stderr, scratch)
        last = _last_line(sres.stderr) or _last_line(sres.stdout)
        prefix = {"memory": "out of memory", "sandbox-violation": "sandbox violation"}.get(reason or "", "crash")
        return f"{prefix}: exit {sres.returncode}: {last}" + (f" at {where}" if where else ""), \
            ("out of memory" if reason == "memory" else None)
    return None, None
