"""The reference model as a contest-style script: configured only by environment variables
(DATA_PATH, TOKENIZER_PATH, NUM_LAYERS, MODEL_DIM, ITERATIONS, TRAIN_SEQ_LEN, VAL_BATCH_SIZE,
EVAL_MODE, TTT_ENABLED, MAX_WALLCLOCK_SECONDS, SEED, PRESET, BROKEN, ...; see hyperparams.py),
run with `python train_gpt.py` or `torchrun --standalone --nproc_per_node=N train_gpt.py`.

It loads the package it sits in from its own folder, so a copy of this folder runs the copied
code, as a submission folder would.
"""
import importlib.util
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location("reference_model", here / "__init__.py",
                                                  submodule_search_locations=[str(here)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["reference_model"] = package
    spec.loader.exec_module(package)
    from reference_model.train import main

    main()
