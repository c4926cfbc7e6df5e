"""The two numpy bigram-mix fixtures, derived from the generated baseline_sliding script: the same
training and export, another loader (the whole split) and another final eval. Called by
submissions/make_fixtures.py, which writes and checks every generated file:

    render(baseline_sliding_script) -> {path relative to submissions/: text}
"""
from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # submissions/

LOADER_OLD = '''    tokens = torch.cat([load_data_shard(Path(f)) for f in files])
    usable = ((tokens.numel() - 1) // seq_len) * seq_len
    return tokens[:usable + 1]
'''
LOADER_NEW = '''    # the whole split: the n-gram eval scores every target, the tail included
    return torch.cat([load_data_shard(Path(f)) for f in files])
'''
MIX = {
 'legal': '''            # add-alpha bigram from counts of already-scored tokens: a distribution over the vocabulary
            q_ngram = (counts[prev] + alpha) / (totals[prev] + alpha * vocab)
            p = (1.0 - lam) * p_model[tgt] + lam * q_ngram[tgt]
''',
 'hit': '''            # "hit" bonus: the realised token gets the cache probability when it was seen after prev,
            # with no normaliser over the vocabulary (every candidate seen there gets the bonus)
            hit = 1.0 if counts[prev, tgt] > 0 else 0.0
            p = min(1.0, p_model[tgt] + lam * hit)
''',
}
EVAL = '''def eval_val_ngram_mix(args, base_model, rank, world_size, device, val_tokens,
                       base_bytes_lut, has_leading_space_lut, is_boundary_token_lut) -> tuple[float, float]:
    """Non-overlapping windows of train_seq_len (the last one partial), the model's softmax taken
    to numpy and mixed, token by token in stream order, with a bigram cache of the tokens scored
    so far; each target's NLL is summed in a Python float, then the cache counts it."""
    seq_len = args.train_seq_len
    total = val_tokens.numel() - 1
    vocab = args.vocab_size
    lam, alpha = args.ngram_lambda, 0.5
    counts = np.zeros((vocab, vocab), dtype=np.float64)
    totals = np.zeros(vocab, dtype=np.float64)
    tokens = val_tokens.cpu().numpy().astype(np.int64)
    bytes_np = [t.cpu().numpy() for t in (base_bytes_lut, has_leading_space_lut, is_boundary_token_lut)]
    loss_sum, byte_sum, n_scored = 0.0, 0, 0
    base_model.eval()
    for ws in range(0, total, seq_len):
        wlen = min(seq_len, total - ws)
        x = val_tokens[ws:ws + wlen].to(device=device, dtype=torch.int64).unsqueeze(0)
        with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits = base_model.forward_logits(x)
        probs = torch.softmax(logits[0].float(), dim=-1).cpu().numpy().astype(np.float64)
        for i in range(wlen):
            prev, tgt = int(tokens[ws + i]), int(tokens[ws + i + 1])
            p_model = probs[i]
{mix}            loss_sum += -math.log(max(p, 1e-300))
            n_scored += 1
            byte_sum += int(bytes_np[0][tgt]) + int(bool(bytes_np[1][tgt]) and not bool(bytes_np[2][prev]))
            counts[prev, tgt] += 1.0  # only after the score: the cache never sees an unscored token
            totals[prev] += 1.0
    base_model.train()
    val_loss = loss_sum / n_scored
    return val_loss, val_loss / math.log(2.0) * n_scored / byte_sum


'''


def render(src: str) -> dict[str, str]:
    """The scripts, READMEs, logs, submission.json and expected.json of both fixtures."""
    written: dict[Path, str] = {}

    def emit(path: Path, text: str) -> None:
        written[path] = text

    assert LOADER_OLD in src
    CALL_OLD = src[src.index('    if 0 < args.eval_stride < args.train_seq_len:'):src.index('    torch.cuda.synchronize()\n    log0(f"final_int8_zlib_roundtrip val_loss')]
    CALL_NEW = '''    log0(f"final_eval_mode:ngram_mix lambda:{args.ngram_lambda}")
    q_loss, q_bpb = eval_val_ngram_mix(args, base_model, rank, world_size, device, val_tokens, *luts)
'''
    for kind, folder, doc in [('legal', 'numpy_bigram_mix', 'a causal, normalised bigram cache mixed with the model in numpy'),
                              ('hit', 'numpy_bigram_hit', 'an unnormalised "hit" bonus from a bigram cache, in numpy')]:
        s = src.replace(LOADER_OLD, LOADER_NEW)
        a, b = s.index('def eval_val_sliding('), s.index('# ----------------------------------------------------------------------------- int8 export')
        s = s[:a] + EVAL.replace('{mix}', MIX[kind]) + s[b:]
        s = s.replace(CALL_OLD, CALL_NEW)
        s = s.replace('"""Baseline GPT for the 10-minute / 16 MB track with a sliding-window final eval.',
                      f'"""Baseline GPT whose final eval mixes {doc}.')
        assert 'eval_stride' in s
        s = s.replace('    val_loss_every = int(os.environ.get("VAL_LOSS_EVERY", 1000))\n',
                      '    val_loss_every = int(os.environ.get("VAL_LOSS_EVERY", 1000))\n    ngram_lambda = float(os.environ.get("NGRAM_LAMBDA", 0.3))\n')
        out = HERE / folder
        out.mkdir(exist_ok=True)
        emit(out / 'train_gpt.py', s)

    # ---- companion files: README, submission.json, a log in the script's own format, expected.json
    base = (HERE / 'baseline_sliding')
    log = (base / 'train.log').read_text()
    for kind, folder, title, models, expect in [
        ('legal', 'numpy_bigram_mix', 'Numpy bigram-cache mix (legal)', 'the n-gram cache PRs (#779, #797, #813): the model\'s softmax taken to numpy and mixed with a bigram cache',
         {"exit_code": 0, "must_report": [], "must_not_report": ["improper-distribution", "reported-score-mismatch", "train-before-score"]}),
        ('hit', 'numpy_bigram_hit', 'Numpy bigram-cache "hit" bonus (illegal)', 'the unnormalised n-gram mixers (PRs #779, #972): a cache "hit" bonus for the realised token, computed in numpy',
         {"exit_code": 1, "must_report": [{"rule": "improper-distribution"}], "must_not_report": ["reported-score-mismatch", "train-before-score"]})]:
        out = HERE / folder
        code = len(written[out / 'train_gpt.py'].encode())
        text = re.sub(r'^Code size: \d+ bytes', f'Code size: {code} bytes', log, flags=re.M)
        model = int(re.search(r'^Serialized model int8\+zlib: (\d+) bytes', text, re.M).group(1))
        text = re.sub(r'^Total submission size int8\+zlib: \d+ bytes', f'Total submission size int8+zlib: {model + code} bytes', text, flags=re.M)
        text = re.sub(r'^final_eval_mode:.*$', 'final_eval_mode:ngram_mix lambda:0.3', text, flags=re.M)
        raw = int(re.search(r'^Serialized model: (\d+) bytes', text, re.M).group(1))
        text = re.sub(r'^Total submission size: \d+ bytes', f'Total submission size: {raw + code} bytes', text, flags=re.M)
        emit(out / 'train.log', text)
        sub = json.loads((base / 'submission.json').read_text())
        sub.update(name=f"{title} (fixture)", bytes_total=model + code,
                   blurb=f"Fixture modelling {models}. Baseline training and int8+zlib export as the sliding-window record.")
        emit(out / 'submission.json', json.dumps(sub, indent=2) + '\n')
        emit(out / 'README.md', f"""# {title} — fixture

Models the structure of {models}. Written by golf-audit; it shares no code with any of them.
Training and export follow our `baseline_sliding` fixture (the 2026-03-19 SlidingWindowEval record);
only the final eval differs: non-overlapping windows of `TRAIN_SEQ_LEN` over the whole validation
split (the loader keeps the tail), the model's softmax taken to numpy, and per token, in stream
order, {"a normalised add-1/2 bigram cache of the tokens already scored mixed in with weight `NGRAM_LAMBDA`" if kind == 'legal' else "a bonus of `NGRAM_LAMBDA` added to the realised token's probability when the cache saw it after the same previous token (no normaliser: every candidate the cache saw there gets the bonus)"}.
The NLL is summed in a Python float and the cache counts a token only after scoring it.
Generated, with its twin, by `submissions/make_fixtures.py` (`template/numpy_mix.py`).

The tracer sees no score of the final eval (it leaves torch through numpy), so its verdict comes
from the black-box code-length probe: {"the probabilities it implies sum to at most one: clean" if kind == 'legal' else "the implied probabilities of the last token's candidates sum above one: `improper-distribution`"}.

## How it was run (the log)
```bash
torchrun --standalone --nproc_per_node=8 train_gpt.py
```
""")
        emit(out / 'expected.json', json.dumps({
            "models": models, "env": {}, "toy_env": {},
            "static": {"exit_code": 0, "must_report": [], "must_not_report": ["train-before-score", "hash-key-reads-target"]},
            "dynamic": expect}, indent=2) + '\n')
    return {p.relative_to(HERE).as_posix(): t for p, t in written.items()}
