"""Toy data made here, never downloaded: synthetic English-like documents from a seeded
generator, a sentencepiece BPE tokenizer trained on them (the challenge's settings: vocab 1024,
pad 0, BOS 1, EOS 2, UNK 3, byte fallback, no dummy prefix), and train/val shards laid out
like the challenge's data folder:

    OUT/tokenizers/toy_1024_bpe.model
    OUT/datasets/fineweb10B_sp1024/fineweb_train_000000.bin
    OUT/datasets/fineweb10B_sp1024/fineweb_val_000000.bin

What makes it learnable: a small grammar, Zipf-distributed word choice, and a per-document
topic (a few nouns, verbs, adjectives and names that recur through the document), so a model
adapted to a document's earlier part predicts its later part better -- what TTT exploits.
Some words carry accented letters, so multi-byte UTF-8 and byte-fallback tokens are exercised.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from .data import BOS_ID, read_shard, write_shard
from .eval import decoded_bytes

GENERATOR_VERSION = 1

DETERMINERS = ["the", "a", "this", "that", "every", "one", "some", "her", "his", "their", "our"]
PREPOSITIONS = ["in", "on", "under", "near", "beside", "across", "through", "over", "behind", "with"]
CONNECTIVES = ["and", "but", "so", "while", "because", "although", "then", "until"]
ADVERBS = ["slowly", "quietly", "again", "often", "never", "always", "suddenly", "gently", "later", "soon"]
REAL_NOUNS = ("river stone light water music paper garden window number people world city road "
              "house tree field market letter story song table door bridge island mountain ship "
              "village forest teacher child friend engine clock lamp painting winter summer "
              "morning evening harbor station library kitchen record machine signal").split()
REAL_VERBS = ("found carried opened watched built painted followed crossed wrote heard kept moved "
              "remembered answered described measured repaired visited lifted counted").split()
REAL_ADJECTIVES = ("old new small large quiet bright dark warm cold long short green blue red "
                   "early late strange careful gentle heavy").split()
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sta", "ver", "qu", "zo", "tha", "pri", "dé", "ön", "ma",
             "ti", "bel", "sor", "an", "el", "ur", "vin", "cha", "gor", "lis", "fe", "nü", "ra", "tos"]


def _invent_word(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(low, high)))


def _zipf_cum_weights(n: int) -> list[float]:
    total, out = 0.0, []
    for i in range(n):
        total += 1.0 / (i + 1) ** 1.1
        out.append(total)
    return out


class _Lexicon:
    def __init__(self, rng: random.Random):
        self.nouns = REAL_NOUNS + [_invent_word(rng, 2, 3) for _ in range(500)]
        self.verbs = REAL_VERBS + [_invent_word(rng, 1, 2) + "ed" for _ in range(150)]
        self.adjectives = REAL_ADJECTIVES + [_invent_word(rng, 1, 2) + rng.choice(["ic", "ous", "al", "y"])
                                             for _ in range(150)]
        self.names = [_invent_word(rng, 2, 3).capitalize() for _ in range(300)]
        self.cum_weights = {k: _zipf_cum_weights(len(getattr(self, k))) for k in ("nouns", "verbs", "adjectives", "names")}

    def pick(self, rng: random.Random, kind: str, topic: dict) -> str:
        # Most words come from the document's topic; the rest from the global Zipf law.
        if rng.random() < 0.6:
            return rng.choice(topic[kind])
        return rng.choices(getattr(self, kind), cum_weights=self.cum_weights[kind])[0]


def _sentence(rng: random.Random, lex: _Lexicon, topic: dict) -> str:
    def noun_phrase() -> str:
        words = [rng.choice(DETERMINERS)]
        if rng.random() < 0.5:
            words.append(lex.pick(rng, "adjectives", topic))
        words.append(lex.pick(rng, "nouns", topic))
        return " ".join(words)

    form = rng.randrange(5)
    if form == 0:
        s = f"{noun_phrase()} {lex.pick(rng, 'verbs', topic)} {noun_phrase()} {rng.choice(PREPOSITIONS)} {noun_phrase()}"
    elif form == 1:
        s = f"{lex.pick(rng, 'names', topic)} {lex.pick(rng, 'verbs', topic)} {noun_phrase()} {rng.choice(ADVERBS)}"
    elif form == 2:
        s = (f"in {rng.randint(1200, 2024)} {lex.pick(rng, 'names', topic)} {lex.pick(rng, 'verbs', topic)} "
             f"{rng.randint(2, 999)} {lex.pick(rng, 'nouns', topic)}s")
    elif form == 3:
        s = (f"{noun_phrase()} {lex.pick(rng, 'verbs', topic)} {noun_phrase()}, {rng.choice(CONNECTIVES)} "
             f"{lex.pick(rng, 'names', topic)} {lex.pick(rng, 'verbs', topic)} {noun_phrase()}")
    else:
        s = f"{noun_phrase()} of {lex.pick(rng, 'names', topic)} was {lex.pick(rng, 'adjectives', topic)}"
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", "?", ";"])


def _document(rng: random.Random, lex: _Lexicon, n_sentences: int) -> str:
    topic = {
        "nouns": rng.sample(lex.nouns, 10), "verbs": rng.sample(lex.verbs, 5),
        "adjectives": rng.sample(lex.adjectives, 5), "names": rng.sample(lex.names, 3),
    }
    return " ".join(_sentence(rng, lex, topic) for _ in range(n_sentences))


def _n_sentences(rng: random.Random, long: bool) -> int:
    if long:
        return rng.randint(170, 260)  # ~2,300-3,500 tokens: several TTT chunks in one document
    u = rng.random()
    if u < 0.7:
        return rng.randint(2, 18)
    if u < 0.95:
        return rng.randint(18, 70)
    return rng.randint(120, 200)


def _train_tokenizer(texts: list[str], prefix: Path, vocab_size: int, seed: int) -> None:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(prefix), model_type="bpe",
        vocab_size=vocab_size, character_coverage=0.9995, byte_fallback=True, split_digits=True,
        normalization_rule_name="nmt_nfkc", add_dummy_prefix=False,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, hard_vocab_limit=False,
        input_sentence_size=20000, shuffle_input_sentence=True, seed_sentencepiece_size=200000,
        num_threads=1, minloglevel=2,
    )


def _stream(sp, docs: list[str]) -> np.ndarray:
    ids = sp.encode(docs, out_type=int)
    out = []
    for doc in ids:
        out.append(BOS_ID)
        out.extend(doc)
    return np.asarray(out, dtype=np.uint16)


def make_toy_data(out_dir, *, vocab_size: int = 1024, train_tokens: int = 1_000_000, val_docs: int = 48,
                  seed: int = 0) -> dict:
    """Write the toy tokenizer and shards under out_dir (reused when already there with the same
    parameters) and return their paths and counts."""
    import sentencepiece as spm

    out = Path(out_dir).resolve()
    tok_dir, ds_dir = out / "tokenizers", out / "datasets" / f"fineweb10B_sp{vocab_size}"
    model_path = tok_dir / f"toy_{vocab_size}_bpe.model"
    train_path, val_path = ds_dir / "fineweb_train_000000.bin", ds_dir / "fineweb_val_000000.bin"
    params = {"version": GENERATOR_VERSION, "vocab_size": vocab_size, "train_tokens": train_tokens,
              "val_docs": val_docs, "seed": seed}
    params_path = out / "toy_data_params.json"

    def info(val_bytes: int, n_val: int, n_train: int) -> dict:
        return {
            "tokenizer": str(model_path), "data_path": str(ds_dir), "vocab_size": vocab_size,
            "train_files": [str(train_path)], "val_files": [str(val_path)],
            "train_glob": str(ds_dir / "fineweb_train_[0-9]*.bin"), "val_glob": str(ds_dir / "fineweb_val_[0-9]*.bin"),
            "val_text_bytes": val_bytes, "n_val_tokens": n_val, "n_train_tokens": n_train, "seed": seed,
        }

    if params_path.exists() and model_path.exists() and train_path.exists() and val_path.exists():
        saved = json.loads(params_path.read_text())
        if saved.get("params") == params:
            return info(saved["val_text_bytes"], saved["n_val_tokens"], saved["n_train_tokens"])

    lex = _Lexicon(random.Random(seed))
    train_rng, val_rng = random.Random(seed * 1000 + 1), random.Random(seed * 1000 + 2)
    # About 1.3 tokens per word and 11 words per sentence: generate a little more than needed.
    train_docs, words = [], 0
    while words * 1.3 < train_tokens * 1.1:
        doc = _document(train_rng, lex, _n_sentences(train_rng, long=False))
        train_docs.append(doc)
        words += doc.count(" ") + 1
    # Every eighth validation document is long, so TTT chunking runs inside documents.
    val_texts = [_document(val_rng, lex, _n_sentences(val_rng, long=(i % 8 == 0))) for i in range(val_docs)]

    tok_dir.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(train_docs, model_path.with_suffix(""), vocab_size, seed)
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    train = _stream(sp, train_docs)[:train_tokens]
    val = _stream(sp, val_texts)
    write_shard(train_path, train)
    write_shard(val_path, val)
    val_bytes = decoded_bytes(sp, read_shard(val_path))
    params_path.write_text(json.dumps({"params": params, "val_text_bytes": val_bytes,
                                       "n_val_tokens": int(val.size), "n_train_tokens": int(train.size)}))
    return info(val_bytes, int(val.size), int(train.size))
