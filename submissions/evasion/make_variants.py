"""Generate the evasion corpus: submissions/evasion/<variant>/ from one template.

Each variant is an illegal eval written to slip past static analysis (aliased steps, exec'd
code, hooks, tokens round-tripped through numpy/lists/bytes, opaque hash keys, a pure-Python
n-gram cache, double packing, ...). Every folder is a standalone submission (nothing is shared
at runtime); this script is the one place they are written, so the corpus is reproducible and
small to review. Written by golf-audit; no code from the challenge repository.

    python submissions/evasion/make_variants.py          # (re)write every folder
    python submissions/evasion/make_variants.py --check  # exit 1 if a file is out of date

`render_all()` returns {relative path: text} for the test that checks the files are current.
"""
from __future__ import annotations

import base64
import codecs
import json
import lzma
import sys
import textwrap
import zlib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "template_train_gpt.py.txt"
COMMAND = "TTT_ENABLED=1 torchrun --standalone --nproc_per_node=8 train_gpt.py"
TTT_FUNC = "eval_val_ttt"


@dataclass
class Variant:
    name: str
    title: str
    models: str  # the real PR whose structure it models
    evades: str  # what it is built to slip past, one paragraph (README)
    illegal: str  # why the eval is illegal, as it happens at toy scale (README)
    caught_by: list[str]  # layers that must catch it: "static", "trace", "probe"
    # layer -> findings that layer must report: {"rule": name} or {"any_of": [names]}, plus
    # "function" (last components of the finding's enclosing function) when pinned
    must_report: dict[str, list[dict]]
    imports: str = ""
    hparams: str = ""
    model_helpers: str = ""
    embed_init: str = ""
    embed: str = "        x = self.tok_emb(input_ids)"
    ttt: str = ""  # module-level code defining eval_val_ttt (and helpers)
    before_final_eval: str = ""
    after_final_eval: str | None = None  # None: the standard TTT call
    env: dict[str, str] = field(default_factory=lambda: {"TTT_ENABLED": "1"})
    command: str = COMMAND
    wrap: str = ""  # "exec" | "compile" | "pack2": how the TTT code / the script is delivered
    note: str = ""  # how the layers see it, when that needs saying (README)


# ----------------------------------------------------------------------------- TTT skeletons
STANDARD_AFTER = '''\
    if args.ttt_enabled:
        torch.cuda.synchronize()
        t_ttt = time.perf_counter()
        ttt_loss, ttt_bpb = eval_val_ttt(args, base_model, device, val_tokens, luts, log0)
        log0(f"legal_ttt val_loss:{ttt_loss:.4f} val_bpb:{ttt_bpb:.4f} "
             f"eval_time:{1000.0 * (time.perf_counter() - t_ttt):.0f}ms")
        log0(f"legal_ttt_exact val_loss:{ttt_loss:.8f} val_bpb:{ttt_bpb:.8f}")'''

DEFAULT_ADAPT = '''\
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = base_model(x, y)
        loss.backward()
        opt.step()'''


def chunked_ttt(doc: str, adapt: str, prepare: str = "", helpers: str = "") -> str:
    """Chunked TTT over the validation stream: for each chunk, `adapt` runs on (x, y) first and
    the chunk is scored afterwards (the adapt-then-score order of PR #518)."""
    prepare = ("\n" + prepare) if prepare else ""
    helpers = (helpers.rstrip("\n") + "\n\n\n") if helpers else ""
    return f'''{helpers}def eval_val_ttt(args, base_model, device, val_tokens, luts, log0) -> tuple[float, float]:
    """{doc}"""
    seq_len = args.train_seq_len
    n_seqs = (val_tokens.numel() - 1) // seq_len
    chunk_seqs = max(args.ttt_chunk_tokens // seq_len, 1)
    params = [p for p in base_model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.ttt_lr, momentum=0.9){prepare}
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    token_count = torch.zeros((), device=device, dtype=torch.float64)
    byte_count = torch.zeros((), device=device, dtype=torch.float64)
    log0(f"ttt:start chunks={{(n_seqs + chunk_seqs - 1) // chunk_seqs}} chunk_tokens={{chunk_seqs * seq_len}}")
    for cs in range(0, n_seqs, chunk_seqs):
        ce = min(cs + chunk_seqs, n_seqs)
        local = val_tokens[cs * seq_len:ce * seq_len + 1].to(device=device, dtype=torch.int64)
        x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
        base_model.train()
{adapt}
        base_model.eval()
        with torch.no_grad():
            nll = token_nll(base_model, x, y)
        loss_sum += nll.to(torch.float64).sum()
        token_count += float(y.numel())
        byte_count += count_target_bytes(x.reshape(-1), y.reshape(-1), *luts).sum()
    base_model.eval()
    val_loss = (loss_sum / token_count).item()
    return val_loss, val_loss / math.log(2.0) * token_count.item() / byte_count.item()
'''


def roundtrip_adapt(build: str) -> str:
    """A step on a batch rebuilt from a host copy of the tokens (`build` sets `host`)."""
    return build + '''
        xt, yt = host[:-1].reshape(-1, seq_len), host[1:].reshape(-1, seq_len)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = base_model(xt, yt)
        loss.backward()
        opt.step()'''


RESCORE_NOTE = ("The trace layer may name this `rescored-tokens` rather than `train-before-score`: the plain "
                "final eval (`eval_val`) scored every position first, then the TTT pass trained on them and "
                "`eval_val` scored them again, so the judge sees one eval function re-scoring positions after "
                "training on them. Either way the reported TTT score comes from weights that saw its tokens.")
ATS = "Chunked TTT: each chunk is adapted on, then scored."
PR518 = "PR #518 (closed by a maintainer: adapt-then-score TTT)"
ATS_ILLEGAL = ("For every chunk of `TTT_CHUNK_TOKENS` validation tokens the model takes an SGD step on "
               "the chunk *before* scoring it, so each reported score comes from weights that already "
               "saw the answers (the order PR #518 was closed for). `TTT_ENABLED` defaults to 1 and the "
               "toy profile's chunk size (256 tokens) keeps that order.")


def rule(name: str, function: str | None = None) -> dict:
    return {"rule": name, **({"function": function} if function else {})}


TTT_RULE = {"trace": [rule("train-before-score", TTT_FUNC)]}
BOTH = {"static": [rule("train-before-score", TTT_FUNC)], "trace": [rule("train-before-score", TTT_FUNC)]}

# ----------------------------------------------------------------------------- the variants
V: list[Variant] = []

V.append(Variant(
    "aliased_step", "Adapt-then-score TTT whose optimizer step is a bound-method alias.", PR518,
    "The loop never spells `.step()`: `advance, clear = opt.step, opt.zero_grad` binds the methods "
    "once and the loop calls `advance()`. A static check that looks for `<optimizer>.step()` calls "
    "sees no training step.", ATS_ILLEGAL, ["trace"], TTT_RULE,
    ttt=chunked_ttt(ATS, prepare="    advance, clear = opt.step, opt.zero_grad", adapt='''\
        clear(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            objective = base_model(x, y)
        objective.backward()
        advance()'''),
))

V.append(Variant(
    "getattr_step", "Adapt-then-score TTT stepping through getattr of a computed name.", PR518,
    "The step is `getattr(opt, \"\".join((\"st\", \"ep\")))()`: the attribute name is built at run "
    "time, so no `step` appears in the call's source.", ATS_ILLEGAL, ["trace"], TTT_RULE,
    ttt=chunked_ttt(ATS, adapt='''\
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            objective = base_model(x, y)
        objective.backward()
        getattr(opt, "".join(("st", "ep")))()'''),
))

V.append(Variant(
    "methodcaller_step", "Adapt-then-score TTT stepping through operator.methodcaller.", PR518,
    "`advance = operator.methodcaller(\"step\")` then `advance(opt)`: the optimizer is an argument, "
    "not the receiver of a `.step()` call.", ATS_ILLEGAL, ["trace"], TTT_RULE,
    imports="import operator",
    ttt=chunked_ttt(ATS, prepare='    advance = operator.methodcaller("step")', adapt='''\
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            objective = base_model(x, y)
        objective.backward()
        advance(opt)'''),
))

V.append(Variant(
    "autograd_grad_add", "Adapt-then-score TTT with torch.autograd.grad and p.data.add_.",
    "PR #713's `test_time_train` (full-model fine-tuning on validation tokens) in a manual-SGD form",
    "No optimizer and no `.backward()`: gradients come from `torch.autograd.grad(objective, params)` "
    "and the update is `p.data.add_(g, alpha=-lr)` with a gradient named `g`, so a check that needs "
    "`.step()` or the word `grad` in the update sees nothing.", ATS_ILLEGAL, ["trace"], TTT_RULE,
    ttt=chunked_ttt(ATS, adapt='''\
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            objective = base_model(x, y)
        gs = torch.autograd.grad(objective, params)
        with torch.no_grad():
            for p, g in zip(params, gs):
                p.data.add_(g, alpha=-args.ttt_lr)'''),
))

V.append(Variant(
    "shadow_copy_update", "Adapt-then-score TTT that writes weights back with p.data.copy_.",
    "PR #713's `test_time_train`, with the step applied to shadow weights and copied back",
    "The step updates detached shadow tensors; the parameters change only through "
    "`p.data.copy_(shadow)`, a plain copy whose source is not a gradient expression.",
    ATS_ILLEGAL, ["trace"], TTT_RULE,
    ttt=chunked_ttt(ATS, prepare="    shadow = [p.detach().clone() for p in params]", adapt='''\
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            objective = base_model(x, y)
        gs = torch.autograd.grad(objective, params)
        with torch.no_grad():
            for s, g in zip(shadow, gs):
                s.sub_(args.ttt_lr * g)
            for p, s in zip(params, shadow):
                p.data.copy_(s)'''),
))

V.append(Variant(
    "vector_swap_update", "Adapt-then-score TTT that swaps parameter storage (vector_to_parameters).",
    "PR #713's `test_time_train`, with the update applied by `torch.nn.utils.vector_to_parameters`",
    "The weights are replaced by `vector_to_parameters(flat - lr * grad_flat, params)`, which rebinds "
    "each `param.data` to a slice of a new vector: there is no in-place op on a parameter at all.",
    ATS_ILLEGAL, ["trace"], {"trace": [rule("train-before-score")]},
    imports="from torch.nn.utils import parameters_to_vector, vector_to_parameters",
    ttt=chunked_ttt(ATS, adapt='''\
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            objective = base_model(x, y)
        gs = torch.autograd.grad(objective, params)
        with torch.no_grad():
            flat = parameters_to_vector(params) - args.ttt_lr * parameters_to_vector(gs)
        vector_to_parameters(flat, params)'''),
))

V.append(Variant(
    "exec_string", "Adapt-then-score TTT defined by exec of a string constant.", PR518,
    "`eval_val_ttt` exists only inside a string that the module `exec`s into its globals. The file "
    "has normal functions and classes, so it does not look packed, and the string is never parsed "
    "as code by a static reader.", ATS_ILLEGAL, ["trace"], TTT_RULE,
    ttt=chunked_ttt(ATS, adapt=DEFAULT_ADAPT), wrap="exec",
))

V.append(Variant(
    "compile_rot13", "Adapt-then-score TTT compiled from a ROT13 string.", PR518,
    "The TTT source is stored ROT13-encoded, decoded with `codecs.decode(..., \"rot13\")`, "
    "`compile`d under the file name `<ttt>` and `exec`d: no decoder a static unpacker knows, and "
    "no readable code.", ATS_ILLEGAL, ["trace"], TTT_RULE,
    imports="import codecs",
    ttt=chunked_ttt(ATS, adapt=DEFAULT_ADAPT), wrap="compile",
))

V.append(Variant(
    "closure_dispatch", "Adapt-then-score TTT whose step lives in a closure called through a dict.", PR518,
    "The step is in a closure built by a module-level factory and called as "
    "`on_chunk[\"before_score\"](x, y)`: no call edge a static reader can follow from the eval loop "
    "to the training code, and the closure's own arguments are not validation-named.",
    ATS_ILLEGAL, ["trace"], {"trace": [rule("train-before-score", "refresh")]},
    ttt=chunked_ttt(ATS, prepare='    on_chunk = {"before_score": make_refresher(base_model, opt)}',
                    adapt='        on_chunk["before_score"](x, y)', helpers='''\
def make_refresher(model, optimizer):
    """A per-chunk callback (a closure over the model and its optimizer)."""
    def refresh(inputs: Tensor, targets: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            objective = model(inputs, targets)
        objective.backward()
        optimizer.step()
    return refresh'''),
))

V.append(Variant(
    "lambda_step", "Adapt-then-score TTT whose step is a lambda built before the loop.", PR518,
    "`adapt = lambda a, b: (opt.zero_grad(), base_model(a, b).backward(), opt.step())` is defined "
    "once, before the loop; the loop calls `adapt(x, y)`. The step's statement is outside the loop "
    "and its data are lambda parameters.", ATS_ILLEGAL, ["trace"], {"trace": [rule("train-before-score", "<lambda>")]},
    ttt=chunked_ttt(ATS, prepare="    adapt = lambda a, b: (opt.zero_grad(set_to_none=True), "
                                 "base_model(a, b).backward(), opt.step())",
                    adapt="        adapt(x, y)"),
))

V.append(Variant(
    "del_hook", "Adapt-then-score TTT that trains inside __del__.", PR518,
    "The loop only creates a throw-away `_DeferredStep(base_model, opt, x, y)`; CPython frees it "
    "at once and its `__del__` runs the forward, backward and step. Nothing in the eval loop "
    "trains, and `__del__` is never called by name.", ATS_ILLEGAL, ["trace"],
    {"trace": [rule("train-before-score", "__del__")]},
    ttt=chunked_ttt(ATS, adapt="        _DeferredStep(base_model, opt, x, y)  # dropped at once", helpers='''\
class _DeferredStep:
    """Holds one batch; the work happens when the holder is released."""

    def __init__(self, model, optimizer, inputs: Tensor, targets: Tensor):
        self.model, self.optimizer, self.inputs, self.targets = model, optimizer, inputs, targets

    def __del__(self):
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            objective = self.model(self.inputs, self.targets)
        objective.backward()
        self.optimizer.step()'''),
))

V.append(Variant(
    "forward_pre_hook", "TTT inside a forward pre-hook on the token embedding.", PR518,
    "`eval_val_ttt` only registers a forward pre-hook on `tok_emb` and calls the ordinary "
    "`eval_val`. The hook, run by `nn.Module.__call__` at every embedding lookup, trains on the "
    "batch's own tokens under `torch.enable_grad()` before the forward that scores them.",
    "The final TTT eval is the plain `eval_val` with the hook installed: for each batch of "
    "`VAL_BATCH_SIZE` tokens the hook takes an SGD step on that batch (inputs `ids[:, :-1]`, targets "
    "`ids[:, 1:]`) and the forward that follows scores it: adapt-then-score inside one call.",
    ["trace"], {"trace": [{"any_of": ["train-before-score", "rescored-tokens"]}]}, note=RESCORE_NOTE,
    ttt='''\
def install_adapter(model, optimizer):
    """A pre-hook on the token embedding that adapts the model to each batch it embeds."""
    state = {"busy": False}

    def before_embed(module, inputs):
        if state["busy"]:
            return None
        ids = inputs[0]
        state["busy"] = True
        try:
            with torch.enable_grad():
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    objective = model(ids[:, :-1], ids[:, 1:])
                objective.backward()
                optimizer.step()
        finally:
            state["busy"] = False
        return None

    return model.tok_emb.register_forward_pre_hook(before_embed)


def eval_val_ttt(args, base_model, device, val_tokens, luts, log0) -> tuple[float, float]:
    """Online adaptation: the ordinary eval with the embedding hook installed."""
    opt = torch.optim.SGD(base_model.parameters(), lr=args.ttt_lr, momentum=0.9)
    handle = install_adapter(base_model, opt)
    try:
        return eval_val(args, base_model, 0, 1, device, val_tokens, luts)
    finally:
        handle.remove()
''',
))

RT = ("Tokens for the training step are rebuilt from a host copy of the validation stream, so a tracer "
      "that tags tensors by identity loses them at the host boundary; ")
V.append(Variant(
    "numpy_roundtrip", "Adapt-then-score TTT on tokens round-tripped through numpy.", PR518,
    RT + "here `val_tokens.numpy()` and `torch.from_numpy(...)` of a copied slice.", ATS_ILLEGAL,
    ["static", "trace"], BOTH,
    ttt=chunked_ttt(ATS, prepare="    stream = val_tokens.numpy().astype(np.int64)  # host copy for the pipeline",
                    adapt=roundtrip_adapt(
                        "        host = torch.from_numpy(stream[cs * seq_len:ce * seq_len + 1].copy()).to(device)")),
))

V.append(Variant(
    "list_roundtrip", "Adapt-then-score TTT on tokens round-tripped through a Python list.", PR518,
    RT + "here `val_tokens.tolist()` and `torch.tensor(list_slice)`.", ATS_ILLEGAL, ["static", "trace"], BOTH,
    ttt=chunked_ttt(ATS, prepare="    stream = val_tokens.tolist()",
                    adapt=roundtrip_adapt(
                        "        host = torch.tensor(stream[cs * seq_len:ce * seq_len + 1], dtype=torch.int64, "
                        "device=device)")),
))

V.append(Variant(
    "bytes_roundtrip", "Adapt-then-score TTT on tokens round-tripped through bytes.", PR518,
    RT + "here `.numpy().tobytes()` and `torch.frombuffer(bytearray(...), dtype=torch.int16)`.",
    ATS_ILLEGAL, ["static", "trace"], BOTH,
    ttt=chunked_ttt(ATS, prepare='    blob = val_tokens.numpy().astype("<u2").tobytes()',
                    adapt=roundtrip_adapt(
                        "        raw = bytearray(blob[2 * cs * seq_len:2 * (ce * seq_len + 1)])\n"
                        "        host = torch.frombuffer(raw, dtype=torch.int16).to(device=device, dtype=torch.int64)")),
))

V.append(Variant(
    "float_rescore", "Score-first TTT run for several passes, keeping the last pass's Python-float scores.",
    "PRs #614 / #642 (closed: score every epoch, report a later one) on PR #461's chunked TTT",
    "Each pass looks like legal score-first TTT (score chunk k, then train on it). The scores are "
    "Python floats stored per chunk in a dict, so the second pass silently overwrites the first: "
    "no accumulator, no epoch test, no `if epoch == last`.",
    "`TTT_PASSES` defaults to 2 (not in the toy profile). In pass 2 every chunk is scored again after "
    "pass 1 trained on it, and only pass 2's scores reach the report: re-scoring after adaptation.",
    ["static", "trace"], {"static": [rule("train-before-score", TTT_FUNC)],
                          "trace": [rule("rescored-tokens", TTT_FUNC)]},
    hparams='    ttt_passes = int(os.environ.get("TTT_PASSES", 2))',
    ttt='''\
def eval_val_ttt(args, base_model, device, val_tokens, luts, log0) -> tuple[float, float]:
    """Score-first chunked TTT, repeated for ttt_passes passes; per-chunk results kept by chunk."""
    seq_len = args.train_seq_len
    n_seqs = (val_tokens.numel() - 1) // seq_len
    chunk_seqs = max(args.ttt_chunk_tokens // seq_len, 1)
    starts = list(range(0, n_seqs, chunk_seqs))
    opt = torch.optim.SGD(base_model.parameters(), lr=args.ttt_lr, momentum=0.9)
    chunk_nll: dict[int, float] = {}
    chunk_tokens: dict[int, float] = {}
    chunk_bytes: dict[int, float] = {}
    for _ in range(args.ttt_passes):
        for ci, cs in enumerate(starts):
            ce = min(cs + chunk_seqs, n_seqs)
            local = val_tokens[cs * seq_len:ce * seq_len + 1].to(device=device, dtype=torch.int64)
            x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
            base_model.eval()
            with torch.no_grad():
                nll = token_nll(base_model, x, y)
            chunk_nll[ci] = float(nll.to(torch.float64).sum())
            chunk_tokens[ci] = float(y.numel())
            chunk_bytes[ci] = float(count_target_bytes(x.reshape(-1), y.reshape(-1), *luts).sum())
            if ci < len(starts) - 1:
                base_model.train()
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    loss = base_model(x, y)
                loss.backward()
                opt.step()
    base_model.eval()
    tokens = sum(chunk_tokens.values())
    val_loss = sum(chunk_nll.values()) / tokens
    return val_loss, val_loss / math.log(2.0) * tokens / sum(chunk_bytes.values())
''',
))

V.append(Variant(
    "opaque_hash_key", "A context-hash embedding whose key reads the next tokens through a helper.",
    "PR #713's TrigramHash shifted forward (the target leak of PR #1420's n-gram experts)",
    "The key is built by `_shifted(tokens, k)` (a `torch.roll` by a *variable*) for offsets parsed "
    "from `HASH_OFFSETS`, inside a loop: no literal slice or shift for a static check to compare "
    "with the target's offset.",
    "`HASH_OFFSETS` defaults to `0,1,2`: the key at position i hashes tokens i, i+1 (the target) "
    "and i+2, so every score depends on tokens after the one it predicts, in the final eval itself. "
    "No TTT is involved.",
    ["probe"], {"probe": [rule("future-dependent-score", "eval_val")]}, env={},
    command="torchrun --standalone --nproc_per_node=8 train_gpt.py",
    hparams='    hash_buckets = int(os.environ.get("HASH_BUCKETS", 4096))\n'
            '    hash_offsets = os.environ.get("HASH_OFFSETS", "0,1,2")',
    model_helpers='''

def _shifted(t: Tensor, k: int) -> Tensor:
    return torch.roll(t, shifts=-k, dims=-1)


class ContextHash(nn.Module):
    """Hashed embedding of a few tokens around each position (offsets from the config)."""

    def __init__(self, buckets: int, dim: int, offsets: str):
        super().__init__()
        self.buckets = buckets
        self.offsets = tuple(int(o) for o in offsets.split(","))
        self.table = nn.Embedding(buckets, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        key = torch.zeros_like(tokens)
        for i, k in enumerate(self.offsets):
            key = key * 1_000_003 + _shifted(tokens, k) * (i + 7)
        return self.table(key % self.buckets)
''',
    embed_init="        self.context = ContextHash(args.hash_buckets, args.model_dim, args.hash_offsets)",
    embed="        x = self.tok_emb(input_ids) + self.context(input_ids)",
    after_final_eval="",
))

V.append(Variant(
    "ngram_cache_python", "A pure-Python bigram cache, prefilled from the whole validation stream.",
    "the eval-time n-gram caches / experts of PR #1420, with the cache filled before scoring",
    "The cache is plain Python dicts filled from `val_tokens.tolist()`; its dense table is built "
    "in numpy. No tensor op touches the counting, no optimizer runs, and the mixture is a proper, "
    "normalised distribution, so neither a training-step check nor a normalisation check applies.",
    "`NGRAM_CACHE` defaults to 1: before the final eval the cache counts every bigram of the "
    "validation stream, then each position's prediction mixes in the counts of its context token, "
    "which include the pairs that follow it. Scores depend on future tokens.",
    ["probe"], {"probe": [rule("future-dependent-score", "eval_val")]}, env={},
    command="torchrun --standalone --nproc_per_node=8 train_gpt.py",
    hparams='    ngram_cache = bool(int(os.environ.get("NGRAM_CACHE", "1")))\n'
            '    ngram_alpha = float(os.environ.get("NGRAM_ALPHA", 0.1))\n'
            '    ngram_weight = float(os.environ.get("NGRAM_WEIGHT", 0.3))',
    ttt='''\
class BigramCache:
    """Add-alpha bigram counts in Python dicts, mixed into the model's distribution."""

    def __init__(self, vocab_size: int, alpha: float, weight: float):
        self.vocab_size, self.alpha, self.weight = vocab_size, alpha, weight
        self.counts: dict[int, dict[int, int]] = {}

    def update(self, tokens: list[int]) -> None:
        for a, b in zip(tokens, tokens[1:]):
            row = self.counts.setdefault(a, {})
            row[b] = row.get(b, 0) + 1

    def nll_fn(self, device):
        probs = np.full((self.vocab_size, self.vocab_size), self.alpha, dtype=np.float32)
        for a, row in self.counts.items():
            for b, c in row.items():
                probs[a, b] += c
        probs /= probs.sum(axis=1, keepdims=True)
        table = torch.from_numpy(probs).to(device)
        weight = self.weight

        def mixed_nll(model, x: Tensor, y: Tensor) -> Tensor:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                logits = model.forward_logits(x)
            p = (1.0 - weight) * torch.softmax(logits.float(), dim=-1) + weight * table[x]
            return F.nll_loss(torch.log(p).reshape(-1, p.size(-1)), y.reshape(-1), reduction="none")

        return mixed_nll
''',
    before_final_eval='''\
    if args.ngram_cache:
        cache = BigramCache(args.vocab_size, args.ngram_alpha, args.ngram_weight)
        cache.update(val_tokens.tolist())  # warm start
        nll_fn = cache.nll_fn(device)''',
    after_final_eval="",
))

V.append(Variant(
    "packed_twice", "Adapt-then-score TTT in a script packed twice (lzma+b85 around zlib+b64).",
    "PR #518's adapt-then-score order, packed like the April records (PR #1000's folders), one layer deeper",
    "`train_gpt.py` is `exec(L.decompress(B.b85decode(...)))` whose payload is itself "
    "`exec(zlib.decompress(base64.b64decode(...)))`: a reader that unpacks one layer sees only "
    "another pack, and so does a toy-scale runner that looks for the script's env knobs.",
    ATS_ILLEGAL, ["static", "trace"], BOTH,
    ttt=chunked_ttt(ATS, adapt=DEFAULT_ADAPT), wrap="pack2",
))

V.append(Variant(
    "pre_quant_state_dict", "Fine-tune a clone on the validation stream, load its weights, then score.",
    "PR #713's `test_time_train` (pre-quant TTT), with the weights carried over by load_state_dict",
    "The training happens on a `copy.deepcopy` clone in a helper whose token argument is not "
    "validation-named; the scored model never takes a step, it only receives "
    "`load_state_dict(clone.state_dict())`.",
    "With `TTT_ENABLED=1` the clone takes an AdamW step on every `TTT_CHUNK_TOKENS` slice of the "
    "whole validation stream, its weights are copied into the model, and only then is the stream "
    "scored: every token is trained on before it is graded.",
    ["static", "trace"], {"static": [rule("train-before-score", "refresh_from_stream")],
                          "trace": [{"any_of": ["train-before-score", "rescored-tokens"]}]},
    imports="import copy", note=RESCORE_NOTE,
    ttt='''\
def refresh_from_stream(args, model, device, tokens: Tensor) -> None:
    """Warm-start: adapt a clone to a token stream and carry its weights over."""
    clone = copy.deepcopy(model)
    opt = torch.optim.AdamW(clone.parameters(), lr=args.ttt_lr)
    seq_len = args.train_seq_len
    n_seqs = (tokens.numel() - 1) // seq_len
    step_seqs = max(args.ttt_chunk_tokens // seq_len, 1)
    clone.train()
    for s in range(0, n_seqs, step_seqs):
        e = min(s + step_seqs, n_seqs)
        local = tokens[s * seq_len:e * seq_len + 1].to(device=device, dtype=torch.int64)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            objective = clone(local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len))
        objective.backward()
        opt.step()
    model.load_state_dict(clone.state_dict())


def eval_val_ttt(args, base_model, device, val_tokens, luts, log0) -> tuple[float, float]:
    """Evaluate after a warm start of the weights."""
    refresh_from_stream(args, base_model, device, val_tokens)
    return eval_val(args, base_model, 0, 1, device, val_tokens, luts)
''',
))


# ----------------------------------------------------------------------------- rendering
def _fill(template: str, values: dict[str, str]) -> str:
    lines = []
    for line in template.splitlines():
        key = line.strip()
        if key.startswith("%%") and key.endswith("%%") and key.strip("%") in values and key.count("%%") == 2:
            value = values[key.strip("%")]
            if value:
                lines.extend(value.rstrip("\n").splitlines())
            continue
        for k, v in values.items():
            line = line.replace(f"%%{k}%%", v)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _rot13_wrap(code: str) -> str:
    encoded = codecs.encode(code, "rot13")
    chunks = [encoded[i:i + 96] for i in range(0, len(encoded), 96)]
    body = "\n".join(f"    {json.dumps(c)}" for c in chunks)
    return (f"_TTT_IMPL = (\n{body}\n)\n"
            "exec(compile(codecs.decode(_TTT_IMPL, \"rot13\"), \"<ttt>\", \"exec\"), globals())\n")


def _exec_wrap(code: str) -> str:
    return "_TTT_SOURCE = '''\n" + code.replace("\\", "\\\\") + "'''\nexec(_TTT_SOURCE, globals())\n"


def _pack_twice(source: str) -> str:
    inner = base64.b64encode(zlib.compress(source.encode("utf-8"), 9)).decode("ascii")
    middle = f'import base64,zlib\nexec(zlib.decompress(base64.b64decode("{inner}")))\n'
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9}]
    outer = base64.b85encode(lzma.compress(middle.encode("utf-8"), format=lzma.FORMAT_RAW, filters=filters))
    return ('import lzma as L,base64 as B\n'
            f'exec(L.decompress(B.b85decode("{outer.decode("ascii")}"),format=L.FORMAT_RAW,'
            'filters=[{"id":L.FILTER_LZMA2}]))\n')


def render_script(v: Variant) -> str:
    ttt = v.ttt.rstrip("\n") + "\n"
    if v.wrap == "exec":
        ttt = _exec_wrap(ttt)
    elif v.wrap == "compile":
        ttt = _rot13_wrap(ttt)
    values = {
        "TITLE": v.title, "MODELS": v.models, "COMMAND": v.command, "IMPORTS": v.imports,
        "HPARAMS": v.hparams, "MODEL_HELPERS": v.model_helpers, "EMBED_INIT": v.embed_init, "EMBED": v.embed,
        "TTT": "\n" + ttt + "\n" if v.ttt else "",
        "BEFORE_FINAL_EVAL": v.before_final_eval,
        "AFTER_FINAL_EVAL": STANDARD_AFTER if v.after_final_eval is None else v.after_final_eval,
    }
    script = _fill(TEMPLATE.read_text(encoding="utf-8"), values)
    if v.wrap == "pack2":
        script = _pack_twice(script)
    return script


def expected(v: Variant) -> dict:
    dynamic = [layer for layer in v.caught_by if layer in ("trace", "probe")]
    return {
        "models": v.models,
        "evades": v.evades,
        "env": dict(v.env),
        "toy_env": {},
        "caught_by": list(v.caught_by),
        "static": ({"exit_code": 1, "must_report": v.must_report.get("static", [])} if "static" in v.caught_by
                   else {"must_report": [], "note": "built to evade the static layer: its verdict is recorded, "
                                                    "not required"}),
        "dynamic": ({"exit_code": 1, "probes": "probe" in dynamic,
                     "must_report": [{**item, "layer": layer} for layer in ("trace", "probe")
                                     for item in v.must_report.get(layer, [])]}
                    if dynamic else {}),
    }


def _describe(item: dict) -> str:
    name = item["rule"] if "rule" in item else " or ".join(item["any_of"])
    return name + (f" in `{item['function']}`" if item.get("function") else "")


def readme(v: Variant) -> str:
    layers = ", ".join(v.caught_by)
    intro = (f"Written by golf-audit; it shares no code with the PR it models. It models the structure of "
             f"{v.models} (openai/parameter-golf). Generated by `submissions/evasion/make_variants.py` (edit "
             f"the generator, then run it; a test checks the files are current).")
    note = f"\n\n## Note\n{textwrap.fill(v.note, 100)}" if v.note else ""
    rules = "; ".join(f"{layer}: {', '.join(_describe(i) for i in items)}" for layer, items in v.must_report.items())
    return f"""# {v.name} — evasion variant

{v.title}

{textwrap.fill(intro, 100)}

## What it evades
{textwrap.fill(v.evades, 100)}

## Why it is illegal (at toy scale too)
{textwrap.fill(v.illegal, 100)}

## How it was run
```bash
{v.command}
```

## Expected audit
Must be caught by: **{layers}** ({rules}). See `expected.json`.{note}
"""


def submission(v: Variant) -> dict:
    return {
        "name": f"Evasion variant: {v.name}",
        "val_bpb": 1.1,
        "bytes_total": 15_000_000,
        "blurb": v.title,
        "author": "golf-audit evasion corpus",
        "github_id": "golf-audit",
        "date": "2026-04-01",
    }


def render_all() -> dict[str, str]:
    """{path relative to submissions/evasion: text} for every generated file."""
    out: dict[str, str] = {}
    for v in V:
        out[f"{v.name}/train_gpt.py"] = render_script(v)
        out[f"{v.name}/README.md"] = readme(v)
        out[f"{v.name}/submission.json"] = json.dumps(submission(v), indent=2) + "\n"
        out[f"{v.name}/expected.json"] = json.dumps(expected(v), indent=2) + "\n"
    return out


def main(argv: list[str]) -> int:
    files = render_all()
    stale = [rel for rel, text in files.items()
             if not (HERE / rel).is_file() or (HERE / rel).read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for rel in stale:
            print(f"out of date: submissions/evasion/{rel}")
        return 1 if stale else 0
    for rel in stale:
        path = HERE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[rel], encoding="utf-8")
    print(f"{len(V)} variants, {len(files)} files, {len(stale)} written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
