"""Generate the fixture scripts under submissions/ from one template.

The hand-shaped fixtures (baseline_sliding, hash_leak, trigram_leak, val_calibration,
legal_score_first_ttt, legal_lora_ttt, pr713 and the source of packed/unpackable) are one
contest-style script with different pieces: a hashed embedding, a TTT eval, an export. The
script's skeleton is `template/train_gpt.py.txt`; the pieces are `template/parts/*.py.txt`;
this file says which pieces each fixture takes. Every output is a standalone script (nothing is
shared at runtime), committed next to its README, logs and expected.json. Written by golf-audit;
no code from the challenge repository.

    python submissions/make_fixtures.py          # (re)write every script
    python submissions/make_fixtures.py --check  # exit 1 if a committed file differs

Template syntax: `%%NAME%%` alone on a line is a block: its value's lines, exactly (a trailing
newline is a trailing blank line; an empty value is no line at all); `%%NAME%%` inside a line is replaced by a one-line value. Every slot must get a
value and every value must have a slot, so a typo fails loudly. `render_all()` returns
{path relative to submissions/: text}; packed/ and unpackable/ come out of
`packed/make_pack.py` applied to the generated source, and the numpy bigram-mix pair (scripts,
READMEs, logs, submission.json, expected.json) out of `template/numpy_mix.py` applied to
baseline_sliding's script.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "template" / "train_gpt.py.txt"
PARTS = HERE / "template" / "parts"
SLOT = re.compile(r"%%([A-Z0-9_]+)%%")
RULE = "# " + "-" * 77  # a section header is RULE + " " + its title
TORCHRUN = "torchrun --standalone --nproc_per_node=8 train_gpt.py"


# ----------------------------------------------------------------------------- filling

def fill(template: str, values: dict[str, str]) -> str:
    """The template with every slot replaced; KeyError on a slot without a value, ValueError on
    a value without a slot."""
    used: set[str] = set()
    lines: list[str] = []
    for line in template.split("\n"):
        block = SLOT.fullmatch(line)
        if block:
            used.add(block.group(1))
            value = values[block.group(1)]
            if value:
                lines.extend(value.split("\n"))
            continue

        def inline(m: re.Match) -> str:
            used.add(m.group(1))
            value = values[m.group(1)]
            if "\n" in value:
                raise ValueError(f"slot {m.group(1)} is inside a line: its value must be one line")
            return value

        lines.append(SLOT.sub(inline, line))
    unused = set(values) - used
    if unused:
        raise ValueError(f"values without a slot: {sorted(unused)}")
    return "\n".join(lines)


def part(name: str, **values: str) -> str:
    """One piece of code from template/parts/, its own slots filled; no trailing newline."""
    return fill((PARTS / f"{name}.py.txt").read_text(encoding="utf-8"), values).removesuffix("\n")


def section(title: str, *pieces: str) -> str:
    """A section of the script: its header, then top-level pieces two blank lines apart, then the
    two blank lines before whatever follows."""
    return f"{RULE} {title}\n\n" + "\n\n\n".join(pieces) + "\n\n"


# ----------------------------------------------------------------------------- pieces

@dataclass(frozen=True)
class Export:
    """How the trained model is quantized, written and read back."""
    section: str  # the export section, from its header to its last function
    quantize_call: str
    dequantize: str
    label: str  # in "Serialized model <label>: N bytes"
    compress: str = "zlib.compress(buf.getvalue(), level=9)"
    decompress: str = "zlib.decompress(f.read())"
    before_quantize: str = ""  # main(), right before the quantized state is saved


INT8 = Export(part("export_int8"), "quantize_state_dict_int8(base_model.state_dict())",
              "dequantize_state_dict_int8", "int8+zlib")
GPTQ_INT6 = Export(
    part("export_gptq_int6"), "quantize_state_dict_gptq(base_model.state_dict(), hessians)",
    "dequantize_state_dict", "int6+zlib",
    before_quantize='''\
    log0("gptq:collecting calibration Hessians...")
    torch.cuda.synchronize()
    t_hess = time.perf_counter()
    hessians = collect_hessians(base_model, val_tokens, args, device, n_samples=args.gptq_samples)
    torch.cuda.synchronize()
    log0(f"gptq:collected {len(hessians)} Hessians in {1000.0 * (time.perf_counter() - t_hess):.0f}ms")''')
MIXED_INT6 = Export(part("export_mixed_int6"), "quantize_mixed_int6(base_model.state_dict())",
                    "dequantize_mixed_int6", "int6+{_COMPRESSOR}", compress="compress(buf.getvalue())",
                    decompress="decompress(f.read())")

LEAKY_RELU2 = "F.leaky_relu(self.fc(x), negative_slope=0.5)"
PLAIN_BLOCKS = '''\
        for block in self.blocks:
            x = block(x)'''
LORA_BLOCKS = '''\
        for i, block in enumerate(self.blocks):
            x = block(x) if lora is None else block(x, lora.q_loras[i], lora.v_loras[i])'''


def embed(*extra: str) -> str:
    """forward_logits' first line: the token embedding plus any hashed embeddings, normed."""
    x = " + ".join(["self.tok_emb(input_ids)"] + [f"self.{name}(input_ids)" for name in extra])
    return f"        x = F.rms_norm({x}, (self.tok_emb.embedding_dim,))"


# the model hooks per-document LoRA TTT needs: adapters on Q, V and the LM head
LORA_SLOTS = {
    "LORA_PARAMS": ", q_lora=None, v_lora=None",
    "LORA_ARGS": ", q_lora, v_lora",
    "LORA_PARAM": ", lora=None",
    "ATTN_Q": '''\
        q, v = self.c_q(x), self.c_v(x)
        if q_lora is not None:
            q, v = q + q_lora(x), v + v_lora(x)
        q = q.view(bsz, seqlen, self.num_heads, self.head_dim).transpose(1, 2)''',
    "ATTN_V": "        v = v.view(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)",
    "HEAD_LORA": '''\
        if lora is not None:
            logits = logits + lora.head_lora(x)''',
    "PER_TOKEN": '''\
    def forward_per_token(self, input_ids: Tensor, target_ids: Tensor, lora=None) -> Tensor:
        logits = self.forward_logits(input_ids, lora=lora)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target_ids.reshape(-1), reduction="none")
        return nll.reshape(target_ids.shape)
''',
}
NO_LORA_SLOTS = {
    "LORA_PARAMS": "", "LORA_ARGS": "", "LORA_PARAM": "", "HEAD_LORA": "", "PER_TOKEN": "",
    "ATTN_Q": "        q = self.c_q(x).view(bsz, seqlen, self.num_heads, self.head_dim).transpose(1, 2)",
    "ATTN_V": "        v = self.c_v(x).view(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)",
}


def hash_embedding(n: int, doc: str, scale: str, key: str) -> str:
    """A learned embedding of n hashed tokens (n = 2: BigramHashEmbedding, 3: TrigramHashEmbedding);
    `key` is the body that builds the bucket index `key` from `t`."""
    kind = {2: "bigram", 3: "trigram"}[n]
    return part("hash_embedding", CLASS=f"{kind.capitalize()}HashEmbedding", DOC=doc, SCALE=scale,
                METHOD=f"{kind}_hash", KEY=key)


BIGRAM_HPARAMS = '''\
    bigram_buckets = int(os.environ.get("BIGRAM_VOCAB_SIZE", 10240))
    bigram_dim = int(os.environ.get("BIGRAM_DIM", 128))'''
TRIGRAM_HPARAMS = '''\
    trigram_buckets = int(os.environ.get("TRIGRAM_VOCAB_SIZE", 4096))
    trigram_dim = int(os.environ.get("TRIGRAM_DIM", 64))'''
BIGRAM_INIT = "        self.bigram = BigramHashEmbedding(args.bigram_buckets, args.bigram_dim, args.model_dim)"
TRIGRAM_INIT = "        self.trigram = TrigramHashEmbedding(args.trigram_buckets, args.trigram_dim, args.model_dim)"


def one_hash(n: int, doc: str, scale: str, key: str) -> dict:
    """The Fixture fields that add one hashed embedding of n tokens to the baseline."""
    kind = {2: "bigram", 3: "trigram"}[n]
    return dict(hparams={2: BIGRAM_HPARAMS, 3: TRIGRAM_HPARAMS}[n], embeddings=(hash_embedding(n, doc, scale, key),),
                embed_init={2: BIGRAM_INIT, 3: TRIGRAM_INIT}[n], embed=embed(kind))


def chunked_ttt(doc: str, score_first: bool) -> str:
    """eval_val_sliding_ttt: full-model SGD over chunks of the validation stream. Score-first
    scores a chunk, then trains on it (never the last); otherwise it adapts to a chunk and then
    scores it (the adapt-then-score order of PR #518)."""
    score, train = part("ttt_score_chunk"), part("ttt_train_chunk")
    if score_first:
        steps = ("        # 1) score this chunk's windows with the current weights\n" + score + "\n\n"
                 "        # 2) train on the chunk just scored (never on the last one: nothing is left to score)\n"
                 "        if ci < num_chunks - 1 and args.ttt_epochs > 0:\n" + train)
    else:
        steps = ("        # 1) adapt to this chunk first ...\n"
                 "        if args.ttt_epochs > 0:\n" + train + "\n"
                 "        # 2) ... then score it with the adapted weights\n" + score + "\n")
    return part("chunked_ttt", DOC=doc, STEPS=steps)


def manual_step_ttt(doc: str) -> str:
    """Adapt-then-score chunked TTT whose update is written by hand (p -= lr * grad) instead of
    optimizer.step(): no optimizer hook sees it, only the dispatch level does."""
    train = part("ttt_train_chunk").replace(
        "                    optimizer.step()",
        "                    with torch.no_grad():\n"
        "                        for p in ttt_params:\n"
        "                            if p.grad is not None:\n"
        "                                p.add_(p.grad, alpha=-lr)")
    steps = ("        # 1) adapt to this chunk first ...\n"
             "        if args.ttt_epochs > 0:\n" + train + "\n"
             "        # 2) ... then score it with the adapted weights\n" + part("ttt_score_chunk") + "\n")
    return part("chunked_ttt", DOC=doc, STEPS=steps)


# main(): the adapt-then-score TTT only when the run does not look like golf-audit's toy run
def path_choice_final_eval(why: str, choose: str, name: str, ttt_when: bool) -> str:
    """main()'s final eval that takes the adapt-then-score TTT when `name` (bound by `choose`) is
    `ttt_when`, else the score-only sliding eval: the toy run sees one path, the real run another."""
    ttt = """            ttt_loss, ttt_bpb = eval_val_sliding_ttt(args, base_model, rank, world_size, device, val_tokens, *luts,
                                                     stride=args.eval_stride, batch_seqs=args.eval_batch_seqs,
                                                     log0=log0)"""
    plain = """            ttt_loss, ttt_bpb = eval_val_sliding(args, base_model, rank, world_size, device, val_tokens, *luts,
                                                 stride=args.eval_stride, batch_seqs=args.eval_batch_seqs)"""
    first, second = (ttt, plain) if ttt_when else (plain, ttt)
    return f"""\
    if args.ttt_enabled:
        torch.cuda.synchronize()
        t_ttt = time.perf_counter()
        # BUG (on purpose): {why}
        {choose}
        if {name}:
{first}
        else:
{second}
        torch.cuda.synchronize()
        log0(f"final_ttt val_loss:{{ttt_loss:.4f}} val_bpb:{{ttt_bpb:.4f}} "
             f"eval_time:{{1000.0 * (time.perf_counter() - t_ttt):.0f}}ms")
        log0(f"final_ttt_exact val_loss:{{ttt_loss:.8f}} val_bpb:{{ttt_bpb:.8f}}")"""


# the adapt-then-score chunked TTT that the path-choosing fixtures take on their "real run" path
ADAPT_FIRST_TTT = section("chunked TTT", chunked_ttt('''\
    """Chunked TTT: for each chunk the model takes a few SGD epochs on it, then scores it with
    sliding windows."""''', score_first=False))
AUDIT_AWARE_FINAL_EVAL = path_choice_final_eval(
    "an audit's run id / scratch path gets the score-only eval",
    'looks_audited = "audit" in args.run_id or str(Path.cwd()).startswith("/tmp")', "looks_audited", False)
SIZE_AWARE_FINAL_EVAL = path_choice_final_eval(
    "only the full-size model (not a small test run) takes the adapt-then-score TTT",
    "full_size = args.model_dim >= 256", "full_size", True)


# ----------------------------------------------------------------------------- fixtures

@dataclass(frozen=True)
class Fixture:
    path: str  # relative to submissions/
    title: str  # the docstring's first line
    about: str  # the docstring's paragraph: what it models, that golf-audit wrote it
    command: str = TORCHRUN
    sizes: dict[str, str] = field(default_factory=dict)  # Hyperparameters defaults that differ
    hparams: str = ""  # extra Hyperparameters lines, after eval_batch_seqs
    extra_imports: str = ""
    prelude: str = ""  # module level, between the imports and Hyperparameters
    activation: str = "torch.relu(self.fc(x))"
    lora: bool = False  # the model takes per-document LoRA adapters (LORA_SLOTS)
    blocks: str = ""  # forward_logits' loop over the blocks, when not the plain or LoRA one
    embeddings: tuple[str, ...] = ()  # model classes before GPT
    embed_init: str = ""  # GPT.__init__, after the token embedding
    embed: str = embed()
    eval_extras: str = ""  # sections between the evaluation and the export
    export: Export = INT8
    extra_log: str = ""  # main(), after the seed is logged
    final_eval: str = ""  # main(), after the round-trip eval

    def values(self) -> dict[str, str]:
        sizes = {"SEED": "1337", "WARMDOWN_ITERS": "1200", "TRAIN_BATCH_TOKENS": "524_288",
                 "TRAIN_SEQ_LEN": "1024", "NUM_LAYERS": "9", "MLP_MULT": "2"}
        unknown = set(self.sizes) - set(sizes)
        if unknown:
            raise ValueError(f"{self.path}: unknown sizes {sorted(unknown)}")
        sizes.update(self.sizes)
        blocks = self.blocks or (LORA_BLOCKS if self.lora else PLAIN_BLOCKS)
        return {
            "TITLE": self.title, "ABOUT": self.about, "COMMAND": self.command,
            "EXTRA_IMPORTS": self.extra_imports, "PRELUDE": self.prelude, **sizes,
            "HPARAMS": self.hparams,
            "ACTIVATION": self.activation,
            **(LORA_SLOTS if self.lora else NO_LORA_SLOTS),
            "EMBEDDINGS": "\n\n\n".join(self.embeddings) + "\n\n" if self.embeddings else "",
            "EMBED_INIT": self.embed_init,
            "EMBED_AND_BLOCKS": self.embed + "\n" + blocks,
            "EVAL_EXTRAS": self.eval_extras,
            "EXPORT": self.export.section,
            "EXTRA_LOG": self.extra_log,
            "BEFORE_QUANTIZE": self.export.before_quantize,
            "QUANTIZE_CALL": self.export.quantize_call, "COMPRESS": self.export.compress,
            "QUANT_LABEL": self.export.label, "DECOMPRESS": self.export.decompress,
            "DEQUANTIZE": self.export.dequantize,
            "AFTER_FINAL_EVAL": self.final_eval,
        }


LEAKY_BIGRAM_TTT = dict(
    sizes={"NUM_LAYERS": "11", "MLP_MULT": "3"},
    hparams=part("hparams_chunked_ttt"),
    activation=LEAKY_RELU2,
    embeddings=(part("bigram_roll"),),
    embed_init="        self.bigram = BigramHash(args.bigram_buckets, args.model_dim)",
    embed=embed("bigram"),
)

FIXTURES = [
    Fixture(
        "baseline_sliding/train_gpt.py",
        "Baseline GPT for the 10-minute / 16 MB track with a sliding-window final eval.",
        "Fixture written by golf-audit (see README.md): it models the shape of a real record\n"
        "(training, int8+zlib export, round-trip eval) and shares no code with it.",
    ),
    Fixture(
        "hash_leak/train_gpt.py",
        "Baseline + BigramHash embedding, sliding-window eval.",
        "Fixture written by golf-audit (see README.md). It models PR #713's BigramHash\n"
        "(openai/parameter-golf) with one deliberate bug -- the hash written one position to the\n"
        "left, so the key at position i holds token i+1, the target -- and shares no code with it.",
        **one_hash(2, "Learned embedding of a hashed token pair.", "0.05", '''\
        key = torch.full_like(t, self.buckets - 1)
        # BUG (on purpose): the pair hash lands one slot early, so key[i] mixes t[i] with t[i+1]
        key[..., :-1] = (t[..., 1:] * 1_000_003 + t[..., :-1] * 8_191) % (self.buckets - 1)'''),
    ),
    Fixture(
        "trigram_leak/train_gpt.py",
        "Baseline + TrigramHash embedding, sliding-window eval.",
        "Fixture written by golf-audit (see README.md). It models PR #713's TrigramHash\n"
        "(openai/parameter-golf) with one deliberate bug -- the hash written two positions to the\n"
        "left, so the key at position i holds tokens i+1 (the target) and i+2 (past the target) --\n"
        "and shares no code with it.",
        **one_hash(3, "Learned embedding of a hashed token triple.", "0.03", '''\
        key = torch.full_like(t, self.buckets - 1)
        # BUG (on purpose): the triple hash lands two slots early, so key[i] mixes t[i], t[i+1], t[i+2]
        key[..., :-2] = (t[..., 2:] * 65_537 + t[..., 1:-1] * 4_099 + t[..., :-2] * 257) % (self.buckets - 1)'''),
    ),
    Fixture(
        "val_calibration/train_gpt.py",
        "Baseline + full GPTQ int6 export, sliding-window eval.",
        "Fixture written by golf-audit (see README.md). It models PR #624's GPTQ calibration\n"
        "(openai/parameter-golf), which collects its Hessians on the validation tokens, and shares\n"
        "no code with it.",
        hparams='    gptq_samples = int(os.environ.get("GPTQ_SAMPLES", 128))',
        export=GPTQ_INT6,
    ),
    Fixture(
        "legal_score_first_ttt/train_gpt.py",
        "LeakyReLU^2 + BigramHash + legal score-first TTT (chunked full-model SGD).",
        "Fixture written by golf-audit (see README.md). It models the structure of PR #549 /\n"
        "PR #461 (openai/parameter-golf) and shares no code with them.",
        command="TTT_ENABLED=1 TTT_LR=0.002 TTT_EPOCHS=3 TTT_CHUNK_TOKENS=32768 " + TORCHRUN,
        eval_extras=section("legal score-first TTT", chunked_ttt('''\
    """Score-first TTT: the validation stream is cut into chunks of ttt_chunk_tokens. Chunk k is
    first scored (sliding windows, inference mode), and only then trained on, so every token's
    score comes from a model that has seen strictly earlier chunks. The last chunk is never
    trained on."""''', score_first=True)),
        final_eval=part("final_eval_chunked_ttt", LABEL="legal_ttt"),
        **LEAKY_BIGRAM_TTT,
    ),
    Fixture(
        "tamper_pop_mode/train_gpt.py",
        "LeakyReLU^2 + BigramHash + chunked TTT with a manual SGD step, run with the dispatch modes popped.",
        "Fixture written by golf-audit (see README.md). Synthetic: it models the adapt-then-score\n"
        "order of PR #518 (openai/parameter-golf, closed) with a hand-written update, hidden from a\n"
        "torch dispatch-mode tracer by popping the mode stack first; it shares no code with any PR.",
        command="TTT_ENABLED=1 " + TORCHRUN,
        eval_extras=section("chunked TTT", manual_step_ttt('''\
    """Chunked TTT: for each chunk the model takes a few hand-written SGD steps on it, then
    scores it with sliding windows. Before anything runs, every mode on the dispatch stack is
    popped (BUG, on purpose: an audit's tracer sees neither the updates nor the scores)."""
    hidden_modes = []
    while torch._C._len_torch_dispatch_stack() > 0:
        hidden_modes.append(torch.utils._python_dispatch._pop_mode())''')),
        final_eval=part("final_eval_chunked_ttt", LABEL="final_ttt"),
        **LEAKY_BIGRAM_TTT,
    ),
    Fixture(
        "tamper_audit_path/train_gpt.py",
        "LeakyReLU^2 + BigramHash + chunked TTT whose order depends on whether the run looks audited.",
        "Fixture written by golf-audit (see README.md). Synthetic: the adapt-then-score TTT of\n"
        "PR #518 (openai/parameter-golf, closed), taken only when the run id and path do not look\n"
        "like an audit; otherwise the score-only sliding eval. It shares no code with any PR.",
        command="TTT_ENABLED=1 " + TORCHRUN,
        eval_extras=ADAPT_FIRST_TTT,
        final_eval=AUDIT_AWARE_FINAL_EVAL,
        **LEAKY_BIGRAM_TTT,
    ),
    Fixture(
        "size_dependent_ttt/train_gpt.py",
        "LeakyReLU^2 + BigramHash + chunked TTT that adapts before scoring only at full model size.",
        "Fixture written by golf-audit (see README.md). Synthetic: the adapt-then-score TTT of\n"
        "PR #518 (openai/parameter-golf, closed), taken only when MODEL_DIM >= 256; a smaller model\n"
        "(a toy-scale audit) gets the score-only sliding eval. It shares no code with any PR.",
        command="TTT_ENABLED=1 " + TORCHRUN,
        eval_extras=ADAPT_FIRST_TTT,
        final_eval=SIZE_AWARE_FINAL_EVAL,
        **LEAKY_BIGRAM_TTT,
    ),
    Fixture(
        "packed/train_gpt_source.py.txt",
        "LeakyReLU^2 + BigramHash + chunked TTT that adapts on each chunk before scoring it.",
        "Fixture written by golf-audit (see README.md): the source that make_pack.py packs into\n"
        "train_gpt.py. It models the adapt-then-score order of PR #518 (openai/parameter-golf,\n"
        "closed) in the packed form many later records used, and shares no code with them.",
        command="TTT_ENABLED=1 " + TORCHRUN,
        # the section keeps the score-first fixture's title: the committed script says so
        eval_extras=section("legal score-first TTT", chunked_ttt('''\
    """Chunked TTT: the validation stream is cut into chunks of ttt_chunk_tokens; for each chunk
    the model takes a few SGD epochs on it, then scores it with sliding windows."""''', score_first=False)),
        final_eval=part("final_eval_chunked_ttt", LABEL="final_ttt"),
        **LEAKY_BIGRAM_TTT,
    ),
    Fixture(
        "legal_lora_ttt/train_gpt.py",
        "Naive baseline + per-document LoRA test-time training at evaluation.",
        "Fixture written by golf-audit (see README.md). It models the structure of PR #77\n"
        "(openai/parameter-golf) and shares no code with it.",
        hparams="\n" + part("hparams_per_doc_lora_ttt"),
        lora=True,
        eval_extras=section("per-document LoRA TTT", part("lora_adapters"), part("build_ttt_optimizer"),
                            part("find_documents"), part("chunk_window"), part("per_doc_lora_ttt")),
        final_eval=part("final_eval_per_doc_lora_ttt"),
    ),
    Fixture(
        "legal_doc_ttt_tuple/train_gpt.py",
        "Naive baseline + per-document LoRA TTT whose scoring helper returns its totals.",
        "Fixture written by golf-audit (see README.md). It models the per-document score-first TTT of\n"
        "PR #77 (openai/parameter-golf) in the shape of later records whose scoring helper returns\n"
        "(loss sum, count, bytes) for the caller to add before it trains on the chunk; it shares no\n"
        "code with them.",
        hparams="\n" + part("hparams_per_doc_lora_ttt"),
        lora=True,
        eval_extras=section("per-document LoRA TTT", part("lora_adapters"), part("build_ttt_optimizer"),
                            part("find_documents"), part("chunk_window"), part("per_doc_tuple_ttt")),
        final_eval=part("final_eval_per_doc_tuple_ttt"),
    ),
    Fixture(
        "pr713/train_gpt.py",
        "10 layers + BigramHash/TrigramHash + batched per-document LoRA TTT.",
        "Fixture written by golf-audit (see README.md). It models the structure of PR #713\n"
        "(openai/parameter-golf) and shares no code with it: both TTT paths sit behind\n"
        'TTT_ENABLED (default "0"); `lora_ttt_eval` scores only on its final epoch and\n'
        "`test_time_train` fine-tunes the whole model on the validation tokens before scoring.",
        command="TTT_ENABLED=1 TTT_LR=0.01 TTT_EPOCHS=3 TTT_CHUNK_SIZE=256 " + TORCHRUN,
        extra_imports="import copy",
        prelude='''\
try:
    import zstandard
    _COMPRESSOR = "zstd"
except ImportError:
    _COMPRESSOR = "zlib"
''',
        sizes={"SEED": "42", "WARMDOWN_ITERS": "3000", "TRAIN_BATCH_TOKENS": "786_432", "TRAIN_SEQ_LEN": "2048",
               "NUM_LAYERS": "10", "MLP_MULT": "3"},
        hparams="\n" + BIGRAM_HPARAMS + "\n" + TRIGRAM_HPARAMS + "\n\n" + part("hparams_full_model_ttt"),
        activation=LEAKY_RELU2,
        lora=True,
        blocks='''\
        for i, block in enumerate(self.blocks):
            if lora is None:
                x = block(x)
            else:
                x = block(x, lora.q_loras[i], lora.v_loras[i])''',
        embeddings=(
            hash_embedding(2, "Learned embedding of the pair (t[i-1], t[i]), hashed into a fixed bucket table.",
                           "0.05", '''\
        key = torch.full_like(t, self.buckets - 1)  # position 0 has no previous token
        key[..., 1:] = (t[..., 1:] * 1_000_003 + t[..., :-1] * 8_191) % (self.buckets - 1)'''),
            hash_embedding(3, "Learned embedding of (t[i-2], t[i-1], t[i]), hashed into a fixed bucket table.",
                           "0.03", '''\
        key = torch.full_like(t, self.buckets - 1)  # positions 0 and 1 lack two predecessors
        key[..., 2:] = (t[..., 2:] * 65_537 + t[..., 1:-1] * 4_099 + t[..., :-2] * 257) % (self.buckets - 1)'''),
        ),
        embed_init=BIGRAM_INIT + "\n" + TRIGRAM_INIT,
        embed='''\
        x = self.tok_emb(input_ids) + self.bigram(input_ids) + self.trigram(input_ids)
        x = F.rms_norm(x, (x.size(-1),))''',
        eval_extras=section("test-time training", part("full_model_ttt"), part("lora_adapters"),
                            part("find_documents"), part("batched_lora_ttt")),
        export=MIXED_INT6,
        extra_log='    log0(f"improvements: bigram_hash trigram_hash leaky_relu2 mixed_int6 ttt={args.ttt_enabled}")',
        final_eval=part("final_eval_pr713"),
    ),
]


# ----------------------------------------------------------------------------- output

def render(fx: Fixture) -> str:
    return fill(TEMPLATE.read_text(encoding="utf-8"), fx.values())


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_pack():
    return _load("make_pack", HERE / "packed" / "make_pack.py")


def render_all() -> dict[str, str]:
    """{path relative to submissions/: text} for every generated file."""
    out = {fx.path: render(fx) for fx in FIXTURES}
    packer = _make_pack()
    payload = packer.pack(out["packed/train_gpt_source.py.txt"])
    out["packed/train_gpt.py"] = packer.packed_script(payload)
    out["unpackable/train_gpt.py"] = packer.corrupt_script(payload)
    # the numpy bigram-mix pair: baseline_sliding with another loader and final eval
    out.update(_load("numpy_mix", HERE / "template" / "numpy_mix.py").render(out["baseline_sliding/train_gpt.py"]))
    return out


def stale(files: dict[str, str]) -> list[str]:
    """The paths whose committed bytes differ from the generated text (or that are missing)."""
    return [rel for rel, text in files.items()
            if not (HERE / rel).is_file() or (HERE / rel).read_bytes() != text.encode("utf-8")]


def main(argv: list[str]) -> int:
    files = render_all()
    out_of_date = stale(files)
    if "--check" in argv:
        for rel in out_of_date:
            print(f"out of date: submissions/{rel} (run python submissions/make_fixtures.py)")
        return 1 if out_of_date else 0
    for rel in out_of_date:
        (HERE / rel).write_bytes(files[rel].encode("utf-8"))
    print(f"{len(FIXTURES)} fixtures, {len(files)} files, {len(out_of_date)} written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
