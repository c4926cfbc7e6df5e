"""The shrinking profile: environment values that make a contest script run at toy scale.

A value is set only for a name the submission reads (found by scanning the source of every
.py file in the folder, packed payloads unpacked first). Layer-index knobs (loops, recurrence,
parallel residuals, XSA, value embeddings) are moved into range for the shrunk layer count.
Every value set is returned so the report can list it.
"""
from __future__ import annotations

import ast
import base64
import binascii
import lzma
import re
import threading
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.challenge.flags import ENV_READ, env_defaults_raw

# helper wrappers such as _env_int("NAME", 3) / env("NAME", ...)
_ENV_HELPER = re.compile(r"""\b_?(?:env|e|getenv)[a-z_]*\(\s*['"]([A-Z][A-Z0-9_]{2,})['"]\s*,\s*([^)\n]*)\)""")


@dataclass
class ToyOptions:
    num_layers: int = 2
    model_dim: int = 64  # >= 256 where the quantization path matters (GPTQ fp16 passthrough)
    seq_len: int = 128
    iterations: int = 3
    # Two, not one: epochs are semantic. A multi-epoch TTT that scores on its last epoch (PR #713)
    # is legal-looking with one epoch; two keep the shape at the least cost.
    ttt_epochs: int = 2
    seed: int = 1337
    # apply the profile to hyperparameters written as literals too (see shrink_literals); off
    # when a run failed with them shrunk and was repeated with the script's own values
    literals: bool = True


WALLCLOCK_S = 120  # a toy run's training budget, whatever the script's name for it


def _default_number(text: str | None) -> float | None:
    if not text:
        return None
    m = re.match(r"""\s*['"]?(-?[0-9][0-9_]*\.?[0-9]*(?:e-?[0-9]+)?)['"]?""", text)
    if not m:
        return None
    try:
        return float(m.group(1).replace("_", ""))
    except ValueError:
        return None


def _clamp(limit: float) -> Callable[[float | None], str | None]:
    """Set `limit` only when the script's default is larger (or unknown)."""
    def f(default: float | None) -> str | None:
        if default is not None and default <= limit:
            return None
        return _fmt(limit)
    return f


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def profile(opts: ToyOptions) -> dict[str, str | Callable[[float | None], str | None]]:
    """Name -> fixed value, or a function of the script's default (None = leave it)."""
    L, D, S = opts.num_layers, opts.model_dim, opts.seq_len
    return {
        # model shape
        "NUM_LAYERS": str(L), "MODEL_DIM": str(D), "EMBEDDING_DIM": str(D),
        "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "VOCAB_SIZE": "1024",
        "MLP_HIDDEN": _clamp(4 * D), "VE_DIM": _clamp(max(16, D // 2)),
        "BIGRAM_DIM": _clamp(max(16, D // 2)), "BIGRAM_HASH_DIM": _clamp(max(16, D // 2)),
        "ROPE_DIMS": _clamp(D // 4 // 2 * 2 if D // 4 < 16 else 16),
        "MTP_NUM_HEADS": _clamp(1),
        # sequence / batch
        "TRAIN_SEQ_LEN": str(S), "EVAL_SEQ_LEN": str(S), "ROPE_TRAIN_SEQ_LEN": str(S),
        "TTT_EVAL_SEQ_LEN": str(S),
        "TRAIN_BATCH_TOKENS": str(16 * S),  # a multiple of 8 x seq_len (8 // world_size accumulation)
        "VAL_BATCH_SIZE": "8192", "VAL_BATCH_TOKENS": "8192",
        "EVAL_BATCH_SEQS": _clamp(8), "EVAL_BATCH_SIZE": _clamp(8), "SW_EVAL_BATCH": _clamp(8),
        "EVAL_STRIDE": str(S // 2),
        # schedule
        "ITERATIONS": str(opts.iterations), "WARMUP_STEPS": "0", "WARMDOWN_ITERS": "1",
        "VAL_LOSS_EVERY": "0", "TRAIN_LOG_EVERY": "1", "MAX_WALLCLOCK_SECONDS": str(WALLCLOCK_S),
        "MUON_MOMENTUM_WARMUP_STEPS": _clamp(1), "SWA_EVERY": _clamp(1), "LAWA_FREQ": _clamp(1),
        "GPTQ_RESERVE_SECONDS": _clamp(0), "GPTQ_RESERVE_MS": _clamp(0),
        "GPTQ_CALIBRATION_BATCHES": _clamp(2), "GPTQ_CALIB_BATCHES": _clamp(2),
        "GPTQ_CALIB_SAMPLES": _clamp(4), "GPTQ_BATCH_SIZE": _clamp(2), "GPTQ_BLOCK_SIZE": _clamp(64),
        # calibration sequences the model generates itself, token by token
        "GPTQ_NSAMPLES": _clamp(4), "GPTQ_NUM_SEQS": _clamp(4), "GPTQ_SEQLEN": _clamp(S),
        "GPTQ_GEN_LEN": _clamp(S),
        "SEED": str(opts.seed),
        # layer indices into range for L layers
        "LOOP_START": "0", "LOOP_END": str(L - 1), "NUM_LOOPS": _clamp(1),
        "RECUR_LAYERS": str(L - 1), "PARALLEL_START_LAYER": str(L - 1),
        "PARALLEL_RESIDUAL_START": str(L - 1), "XSA_LAST_N": _clamp(L), "VE_LAYERS": str(L - 1),
        "N_INT6_LAYERS": _clamp(L), "TTT_FREEZE_BLOCKS": _clamp(L - 1),
        "CANON_AC_LAYERS": str(L - 1), "REPEAT_UNTIE_MLP_LAYERS": str(L - 1), "INT4_LAYERS": "",
        # test-time training kept small
        "TTT_EPOCHS": _clamp(opts.ttt_epochs), "GLOBAL_TTT_EPOCHS": _clamp(opts.ttt_epochs),
        "TTT_CHUNK_SIZE": _clamp(S), "TTT_CHUNK_TOKENS": _clamp(2 * S),
        "GLOBAL_TTT_CHUNK_TOKENS": _clamp(2 * S), "TTT_BATCH_SIZE": _clamp(2),
        "TTT_BATCH_SEQS": _clamp(2), "GLOBAL_TTT_BATCH_SEQS": _clamp(2), "TTT_GRAD_STEPS": _clamp(1),
        "TTT_LORA_RANK": _clamp(4), "LORA_RANK": _clamp(4), "TTT_EVAL_BATCHES": _clamp(4),
        "PHASED_TTT_PREFIX_DOCS": _clamp(4), "GLOBAL_TTT_WARMUP_CHUNKS": _clamp(1),
        "TTT_DOC_LIMIT": _clamp(64), "GLOBAL_TTT_DOC_LIMIT": _clamp(64),
        "SLOT_STEPS": _clamp(2),
    }


# ---------------------------------------------------------------- source scanning
def _const_eval(node: ast.AST, aliases: dict[str, str]):
    """Evaluate a packing expression with a whitelist: string/bytes literals, +, .encode/.decode,
    base64/zlib/lzma decoders and lzma constants. Never runs submission code."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes, int)):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _const_eval(node.left, aliases) + _const_eval(node.right, aliases)
    if isinstance(node, ast.List):
        return [_const_eval(e, aliases) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_const_eval(k, aliases): _const_eval(v, aliases) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        mod = aliases.get(node.value.id)
        if mod == "lzma" and node.attr.isupper():
            return getattr(lzma, node.attr)
        raise ValueError("attribute")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        f = node.func
        if f.attr in ("decode", "encode") and not node.keywords:
            target = _const_eval(f.value, aliases)
            return target.decode() if f.attr == "decode" else target.encode()
        if isinstance(f.value, ast.Name):
            mod = aliases.get(f.value.id)
            allowed = {("base64", "b85decode"), ("base64", "b64decode"), ("base64", "a85decode"),
                       ("zlib", "decompress"), ("lzma", "decompress")}
            if (mod, f.attr) in allowed:
                import importlib
                fn = getattr(importlib.import_module(mod), f.attr)
                args = [_const_eval(a, aliases) for a in node.args]
                kwargs = {k.arg: _const_eval(k.value, aliases) for k in node.keywords}
                return fn(*args, **kwargs)
    raise ValueError("unsupported")


# The probes prepare their runs in threads; CPython 3.11's ast.parse keeps its recursion-depth
# bookkeeping per interpreter, and two threads parsing at once can raise "SystemError: AST
# constructor recursion depth mismatch" (seen in the suite on the opaque_hash_key evasion).
# Every parse here goes through _parse.
_AST_LOCK = threading.Lock()


def _parse(source: str) -> ast.Module | None:
    """The source's ast, parsed under _AST_LOCK; None when it does not parse."""
    try:
        with _AST_LOCK:
            return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def unpack_payloads(source: str) -> list[str]:
    """Sources packed one layer deep as exec(<decoder chain>(literal)); [] when none."""
    tree = _parse(source)
    if tree is None:
        return []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "exec" and node.args:
            try:
                value = _const_eval(node.args[0], aliases)
            except (ValueError, TypeError, lzma.LZMAError, zlib.error, binascii.Error, UnicodeError, KeyError):
                continue
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str):
                out.append(value)
    return out


def submission_sources(folder: Path) -> str:
    """All .py text of the folder, with packed payloads appended."""
    texts = []
    for p in sorted(Path(folder).rglob("*.py")):
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        texts.append(text)
        # packs can be nested (a payload that is itself a pack): unpack up to 4 layers, so the
        # env knobs of the innermost source are seen (submissions/evasion/packed_twice)
        layer = unpack_payloads(text)
        for _ in range(4):
            if not layer:
                break
            texts.extend(layer)
            layer = [inner for payload in layer for inner in unpack_payloads(payload)]
    return "\n".join(texts)


def env_reads(source: str) -> dict[str, float | None]:
    """Env var names the source reads -> the numeric default when one is visible."""
    found: dict[str, float | None] = {}
    for rx in (ENV_READ, _ENV_HELPER):
        for m in rx.finditer(source):
            name, default = m.group(1), _default_number(m.group(2))
            if name not in found or found[name] is None:
                found[name] = default
    return found


_STEP_SWITCH = re.compile(r"(?:START|BEGIN|AFTER|ENABLE|ACTIVATE)_(?:AT_)?STEPS?$")

# Flags of a second invocation that re-evaluates a saved artifact (`TTT_EVAL_ONLY=1`): the toy run
# trains and evaluates in one process, so there is no artifact to load and the flag is dropped.
_RESUME_MODE = re.compile(r"(?:^|_)(?:EVAL_ONLY|SKIP_TRAIN(?:ING)?|NO_TRAIN(?:ING)?|LOAD_(?:ARTIFACT|CHECKPOINT|MODEL)|RESUME(?:_FROM)?)$")

_LAYER_LISTS = {"VE_LAYERS", "RECUR_LAYERS", "CANON_AC_LAYERS", "REPEAT_UNTIE_MLP_LAYERS", "INT4_LAYERS"}


# Paths, identity and process layout: the runner's, whatever the submission's command line said
# (a README's DATA_PATH=/root/code/... would point the toy run at files that do not exist).
RUNNER_OWNED = frozenset({"DATA_PATH", "TOKENIZER_PATH", "RUN_ID", "DATA_DIR", "DATASETS_DIR", "OUT_DIR",
                          "OMP_NUM_THREADS", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                          "PYTHONPATH", "PATH", "HOME", "HF_HOME"})


def shrink_flags(flags: dict[str, str], opts: ToyOptions | None = None,
                 source: str = "") -> tuple[dict[str, str], list[str]]:
    """The submission's own flags (README/logs command lines) at toy scale. A flag the profile
    also sets is shrunk like a script default: a clamp applies to the flag's value (TTT_EPOCHS=3
    becomes 2), a fixed toy value replaces it (TTT_CHUNK_SIZE=256 would exceed the toy
    TRAIN_SEQ_LEN and skip chunks). Flags outside the profile (switches such as TTT_ENABLED=1)
    pass through unchanged. `source`: the submission's code, for the periods (`_period`)."""
    rules = profile(opts or ToyOptions())
    out: dict[str, str] = {}
    notes: list[str] = []
    for name, value in flags.items():
        if name in RUNNER_OWNED or name.startswith(("NCCL_", "TORCH_", "CUDA_")):
            notes.append(f"submission flag {name}={value} not used: the toy run sets its own")
            continue
        if _RESUME_MODE.search(name) and value not in ("0", "", "false", "False"):
            notes.append(f"submission flag {name}={value} not used: it re-runs a saved artifact; "
                         "the toy run trains and evaluates in one run")
            continue
        rule = rules.get(name)
        if rule is None:
            number = _default_number(value)
            if _STEP_SWITCH.search(name) and number is not None and number > (opts or ToyOptions()).iterations:
                out[name] = "1"  # a step switch the real run crosses: crossed in the toy run too
                notes.append(f"submission flag {name}={value} shrunk to 1 (toy scale)")
            else:
                out[name] = value
            continue
        if callable(rule):
            number = _default_number(value)
            shrunk = rule(number) if number is not None else None
            new = shrunk if shrunk is not None else value
        else:
            new = rule
        new = _period(name, new, source)
        out[name] = new
        if new != value:
            notes.append(f"submission flag {name}={value} shrunk to {new} (toy scale)")
    return out, notes


_PERIOD = re.compile(r"_(EVERY|FREQ)$")
_NEVER = "1000000000"


def _unguarded_modulo(source: str, env_name: str) -> bool:
    """The script reads `env_name` into a name it takes a modulo by (`step % args.x`) and never
    tests that name against 0 (`args.x > 0`, `if args.x and ...`)."""
    bound = re.findall(r"(\w+)\s*(?::[^=\n]*)?=[^\n]*environ(?:\.get\(|\[)\s*['\"]" + env_name + r"['\"]", source)
    for attr in set(bound):
        if not re.search(r"%\s*(?:[\w.]+\.)?" + attr + r"\b", source):
            continue
        guarded = re.search(r"\b" + attr + r"\s*(?:>|!=)\s*0\b|\bif\s+(?:[\w.]+\.)?" + attr + r"\s+and\b", source)
        if not guarded:
            return True
    return False


def _period(name: str, value: str, source: str) -> str:
    """A period set to 0 ("never": VAL_LOSS_EVERY=0) is what the baseline's `every > 0 and step %
    every == 0` means, but a script that takes `step % every` unguarded divides by zero there
    (PR #440; PR #1545 through its README's VAL_LOSS_EVERY=9999): such a script gets a period the
    toy run never reaches instead."""
    if value == "0" and _PERIOD.search(name) and source and _unguarded_modulo(source, name):
        return _NEVER
    return value


def toy_env(folder: Path, *, data_path: str, tokenizer_path: str, run_id: str = "",
            opts: ToyOptions | None = None, source: str | None = None) -> tuple[dict[str, str], list[str]]:
    """(env values to set, notes). Paths are always set (scripts read them under many names)."""
    opts = opts or ToyOptions()
    source = source if source is not None else submission_sources(folder)
    reads = env_reads(source)
    env: dict[str, str] = {}
    raw = env_defaults_raw(source)
    for name, rule in profile(opts).items():
        if name not in reads:
            continue
        if name in _LAYER_LISTS and raw.get(name, "x") == "":
            continue  # the feature is off by default: moving its layers would switch it on
        value = rule(reads[name]) if callable(rule) else rule
        if value is not None:
            env[name] = value
    for name, value in list(env.items()):
        env[name] = _period(name, value, source)
    # Step-based switches (RECUR_START_STEP=3000: depth recurrence turns on mid-training) are
    # moved inside the toy run, so the code the final eval runs with is the code a real run ends
    # with (a 3-step run would otherwise evaluate the model in its never-switched state).
    for name, default in reads.items():
        if name not in env and _STEP_SWITCH.search(name) and default is not None and default > opts.iterations:
            env[name] = "1"
    # Paths and identity: set unconditionally, they are harmless when unread.
    env.update({"DATA_PATH": data_path, "TOKENIZER_PATH": tokenizer_path, "RUN_ID": run_id or str(uuid.uuid4())})
    data_root = str(Path(data_path).parent.parent)  # .../data
    # DATA_DIR is the data root (scripts join "datasets/fineweb10B_spN" and "tokenizers");
    # DATASETS_DIR is the per-vocabulary shard folder, like DATA_PATH.
    for name, value in (("DATA_DIR", data_root), ("DATASETS_DIR", data_path)):
        if name in reads:
            env[name] = value
    notes = [f"toy env: {k}={v}" for k, v in sorted(env.items())]
    unknown_big = sorted(n for n, d in reads.items() if n not in env and d is not None and d >= 1000
                         and n not in ("ROPE_BASE",))
    if unknown_big:
        notes.append("toy env: left at script default (large, not in profile): " + ", ".join(unknown_big[:20]))
    return env, notes


# ---------------------------------------------------------------- hard-coded hyperparameters
LITERAL_NOTE = "toy scale (literal):"


def _written_names(opts: ToyOptions) -> dict[str, str | Callable[[float | None], str | None]]:
    """Other spellings of the profile's shape for sizes written as numbers: nanoGPT's config
    fields (`n_layer`, `n_embd`, `n_head`, `block_size` in a `GPTConfig` dataclass: PRs #181,
    #875) and the width / context / length names of scripts written from scratch (`emb_dim`,
    `d_model`, `max_context`, `max_steps`, `max_time`: PR #2070). These only shrink (a kernel's
    BLOCK_SIZE = 64 stays)."""
    S, D, steps = opts.seq_len, opts.model_dim, opts.iterations
    return {"N_LAYER": str(opts.num_layers), "N_EMBD": str(D), "N_HEAD": "4", "BLOCK_SIZE": _clamp(S),
            "EMB_DIM": _clamp(D), "D_MODEL": _clamp(D),
            "MAX_CONTEXT": _clamp(S), "MAX_SEQ_LEN": _clamp(S), "CONTEXT_LENGTH": _clamp(S),
            # training length: a loop over `range(max_steps)` left at a wall-clock budget (#2070)
            "MAX_STEPS": _clamp(steps), "MAX_ITERS": _clamp(steps), "NUM_STEPS": _clamp(steps),
            "TRAIN_STEPS": _clamp(steps), "MAX_TIME": _clamp(WALLCLOCK_S)}


_ARITH = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.FloorDiv: lambda a, b: a // b, ast.Pow: lambda a, b: a ** b}


def _number(node: ast.expr) -> float | None:
    """The value of a number written as a literal or as arithmetic on literals (`1024 * 8`),
    else None."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        a, b = _number(node.left), _number(node.right)
        if a is None or b is None or (type(node.op) is ast.Pow and abs(b) > 64) or \
                (type(node.op) is ast.FloorDiv and b == 0):
            return None
        return float(_ARITH[type(node.op)](a, b))
    return None


def shrink_literals(source: str, opts: ToyOptions | None = None, where: str = "the script") -> tuple[str, list[str]]:
    """(source, notes): the profile applied to hyperparameters the script writes as numbers
    instead of reading them from the environment (`model_dim = 512` in a `Hyperparameters`
    class body, `NUM_LAYERS = 11` at module level; `model_dim=512` in a `dict(...)` or
    `{"model_dim": 512}` config as a configs.py returns them, PR #1545, there only made smaller).
    A script like that (PR #961) otherwise runs its full-size model at "toy" scale: 27M
    parameters, minutes per run. A knob is rewritten when its upper-cased name is in the
    profile and the script reads no environment variable of that name; the number is replaced
    where it stands, so every line keeps its number and the trace's lines are the folder's. Same rules as an env default: a
    clamp shrinks only a larger value. `where` names the file in the notes. Unparsable source
    comes back unchanged."""
    tree = _parse(source)
    if tree is None:
        return source, []
    opts = opts or ToyOptions()
    rules = {**profile(opts), **_written_names(opts)}
    reads = env_reads(source)
    lines = source.splitlines(keepends=True)
    edits: dict[tuple[int, int], tuple[int, str, str, str]] = {}  # (line, start col) -> (end col, name, old, new)

    def consider(name: str, value: ast.expr, only_smaller: bool = False) -> None:
        written = _number(value)
        if written is None or value.lineno != value.end_lineno:
            return
        knob = name.upper()
        rule = rules.get(knob)
        if rule is None or knob in reads:
            return
        new = rule(written) if callable(rule) else rule
        number = _default_number(new)  # None for a non-number (a layer list): left as written
        if number is None or number == written or (only_smaller and number > written):
            return
        old = lines[value.lineno - 1].encode("utf-8")[value.col_offset:value.end_col_offset].decode("utf-8")
        edits[(value.lineno, value.col_offset)] = (value.end_col_offset, name, old, new)

    for body in [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        for st in body:
            if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
                consider(st.targets[0].id, st.value)
            elif isinstance(st, ast.AnnAssign) and st.value is not None and isinstance(st.target, ast.Name):
                consider(st.target.id, st.value)
    # config dicts, dict(model_dim=512, ...) and {"model_dim": 512, ...}: only ever made smaller. A
    # dict key is a weaker sign of the profile's knob than a hyperparameter's name (PR #2070's
    # "val_batch_size": 32 counts sequences; the profile's VAL_BATCH_SIZE counts tokens)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            for kw in node.keywords:
                if kw.arg:
                    consider(kw.arg, kw.value, only_smaller=True)
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and isinstance(k.value, str) and k.value.isidentifier():
                    consider(k.value, v, only_smaller=True)
    notes = []
    for (line, start), (end, name, old, new) in sorted(edits.items(), key=lambda e: (e[0][0], -e[0][1])):
        raw = lines[line - 1].encode("utf-8")
        lines[line - 1] = (raw[:start] + new.encode("utf-8") + raw[end:]).decode("utf-8")
        notes.append(f"{LITERAL_NOTE} {name} = {old} written in {where} (line {line}), run with {new}")
    return "".join(lines), notes


def imported_modules(source: str) -> set[str]:
    """Top-level names of the modules `source` imports (`import configs`, `from configs import
    get_config`, `from .configs import x`): where a folder's own modules are found."""
    tree = _parse(source)
    if tree is None:
        return set()
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level <= 1:
            out.add(node.module.split(".")[0])
    return out
