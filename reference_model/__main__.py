"""Command line:

    python -m reference_model make-toy-data --out DIR
    python -m reference_model train --preset toy|baseline --data DIR --out DIR [--broken NAME]
    python -m reference_model eval --out DIR [--mode standard|sliding|ttt-sgd|ttt-lora] [--broken NAME]

Flags are written into the environment variables hyperparams.py reads; other knobs can be set
as environment variables directly (e.g. ITERATIONS=50).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

from .hyperparams import BROKEN_NAMES, EVAL_MODES, PRESETS, Hyperparameters, apply_env_overrides


def data_paths(data: str) -> tuple[str, str]:
    """(DATA_PATH, TOKENIZER_PATH) for a make-toy-data folder (or a challenge-style data/)."""
    root = Path(data).resolve()
    datasets = sorted((root / "datasets").glob("fineweb10B_sp*"))
    tokenizers = sorted((root / "tokenizers").glob("*.model"))
    if len(datasets) != 1 or len(tokenizers) != 1:
        raise SystemExit(f"--data {data}: expected one datasets/fineweb10B_sp*/ and one tokenizers/*.model")
    return str(datasets[0]), str(tokenizers[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference_model")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-toy-data", help="generate text, train the BPE tokenizer, write shards")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-tokens", type=int, default=None)
    p.add_argument("--val-docs", type=int, default=None)
    p = sub.add_parser("train", help="train, quantize, then run every eval mode")
    p.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    p.add_argument("--data", required=True, help="a make-toy-data folder")
    p.add_argument("--out", required=True)
    p.add_argument("--broken", choices=BROKEN_NAMES, default=None)
    p.add_argument("--mode", choices=EVAL_MODES, default=None, help="only this eval mode")
    p = sub.add_parser("eval", help="load the artifact in --out and run the eval modes")
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=EVAL_MODES, default=None)
    p.add_argument("--broken", choices=BROKEN_NAMES, default=None)
    args = parser.parse_args(argv)

    if args.command == "make-toy-data":
        from .toy_data import make_toy_data

        kwargs = {k: v for k, v in (("train_tokens", args.train_tokens), ("val_docs", args.val_docs)) if v is not None}
        info = make_toy_data(args.out, seed=args.seed, **kwargs)
        print(json.dumps(info, indent=1))
        return 0

    from .hyperparams import from_env
    from .train import main as train_main

    if args.command == "train":
        os.environ["DATA_PATH"], os.environ["TOKENIZER_PATH"] = data_paths(args.data)
        os.environ["OUT_DIR"] = args.out
        if args.broken:
            os.environ["BROKEN"] = args.broken
        if args.mode:
            os.environ["EVAL_MODE"] = args.mode
        train_main(from_env(args.preset))
        return 0

    saved = Path(args.out) / "run_config.json"
    if not saved.exists():
        raise SystemExit(f"eval: {saved} not found (run `train --out {args.out}` first)")
    known = {f.name for f in fields(Hyperparameters)}
    h = Hyperparameters(**{k: v for k, v in json.loads(saved.read_text()).items() if k in known})
    apply_env_overrides(h)
    h.out_dir = args.out
    h.eval_mode = args.mode or "all"
    if args.broken:
        h.broken = args.broken
    train_main(h, evaluate_only=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
