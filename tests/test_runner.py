"""The runner end to end: a small CUDA-style training script (written here, in the shape of a
contest script) runs on CPU inside the sandbox on toy data, and its printed scores, crash
reasons and artifacts come back in RunResult."""
from __future__ import annotations

import base64
import random
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness.dynamic.run import sandbox
from harness.dynamic.run import runner
from harness.dynamic.trace.reported import parse_reported

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sandbox.available_isolation() is None, reason="no sandbox here")]

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there been one all we their has would when if so "
         "model token score train valid byte value golf audit river stone light water music paper "
         "garden window number people little world between during").split()


def _make_toy_data(out: Path, vocab_size: int = 1024, n_val: int = 6000, n_train: int = 20000) -> dict:
    """Stand-in for reference_model.toy_data when that module is absent: a BPE tokenizer on
    random English-like text and shards in the challenge format, BOS between documents."""
    import sentencepiece as spm

    rng = random.Random(0)
    syll = ["ka", "lo", "mi", "ne", "ru", "sta", "ver", "qu", "zo", "tha", "pri", "dé", "ön", "ß"]
    lexicon = WORDS + ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    docs = [" ".join(rng.choice(lexicon) for _ in range(rng.randint(20, 80))).capitalize() + "."
            for _ in range(1500)]
    (out / "tokenizers").mkdir(parents=True, exist_ok=True)
    text_path = out / "corpus.txt"
    text_path.write_text("\n".join(docs))
    prefix = out / "tokenizers" / f"toy_{vocab_size}_bpe"
    spm.SentencePieceTrainer.train(input=str(text_path), model_prefix=str(prefix), vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, bos_id=1, eos_id=-1, pad_id=-1,
                                   unk_id=0, minloglevel=2,
                                   character_coverage=1.0)
    sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    stream = []
    for d in docs * 4:
        stream += [1] + sp.encode(d)
    ds = out / "datasets" / f"fineweb10B_sp{vocab_size}"
    ds.mkdir(parents=True, exist_ok=True)
    val = np.array(stream[:n_val], dtype=np.uint16)
    train = np.array(stream[n_val:n_val + n_train], dtype=np.uint16)
    runner.write_shard(ds / "fineweb_val_000000.bin", val)
    runner.write_shard(ds / "fineweb_train_000000.bin", train)
    return {"tokenizer": str(prefix) + ".model", "data_path": str(ds),
            "train_files": [str(ds / "fineweb_train_000000.bin")],
            "val_files": [str(ds / "fineweb_val_000000.bin")], "n_val_tokens": int(val.size),
            "vocab_size": vocab_size}


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    try:
        return runner.get_toy_data()  # built once per machine under the golf-audit cache
    except ImportError:  # reference_model.toy_data not written yet
        return _make_toy_data(tmp_path_factory.mktemp("toy"))


# A contest-shaped script: CUDA everywhere, compile, autocast, flash-attn import, inference_mode
# eval, DDP under torchrun, int8+zlib roundtrip, the challenge's byte LUT for val_bpb.
CUDA_SCRIPT = textwrap.dedent('''
    import glob, io, math, os, sys, zlib
    import numpy as np
    import sentencepiece as spm
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP
    from flash_attn_interface import flash_attn_func

    class Hyperparameters:
        data_path = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
        tokenizer_path = os.environ.get("TOKENIZER_PATH", "./data/tokenizers/fineweb_1024_bpe.model")
        num_layers = int(os.environ.get("NUM_LAYERS", 9))
        model_dim = int(os.environ.get("MODEL_DIM", 512))
        num_heads = int(os.environ.get("NUM_HEADS", 8))
        num_kv_heads = int(os.environ.get("NUM_KV_HEADS", 4))
        train_seq_len = int(os.environ.get("TRAIN_SEQ_LEN", 1024))
        iterations = int(os.environ.get("ITERATIONS", 20000))
        vocab_size = int(os.environ.get("VOCAB_SIZE", 1024))
        crash_at = os.environ.get("CRASH_AT", "")

    def load(pattern):
        out = []
        for f in sorted(glob.glob(pattern)):
            header = np.fromfile(f, dtype="<i4", count=256)
            out.append(np.fromfile(f, dtype="<u2", count=int(header[2]), offset=1024))
        return torch.from_numpy(np.concatenate(out).astype(np.int64))

    class Attn(nn.Module):
        def __init__(self, d, h, kv):
            super().__init__()
            self.h, self.kv, self.hd = h, kv, d // h
            self.q = nn.Linear(d, d, bias=False)
            self.k = nn.Linear(d, kv * self.hd, bias=False)
            self.v = nn.Linear(d, kv * self.hd, bias=False)
            self.o = nn.Linear(d, d, bias=False)
        def forward(self, x):
            b, s, d = x.shape
            q = self.q(x).view(b, s, self.h, self.hd)
            k = self.k(x).view(b, s, self.kv, self.hd)
            v = self.v(x).view(b, s, self.kv, self.hd)
            return self.o(flash_attn_func(q, k, v, causal=True).reshape(b, s, d))

    class GPT(nn.Module):
        def __init__(self, a):
            super().__init__()
            self.emb = nn.Embedding(a.vocab_size, a.model_dim)
            self.blocks = nn.ModuleList(Attn(a.model_dim, a.num_heads, a.num_kv_heads) for _ in range(a.num_layers))
            self.head = nn.Linear(a.model_dim, a.vocab_size, bias=False)
        def forward(self, x, y):
            h = self.emb(x)
            for blk in self.blocks:
                h = h + blk(F.rms_norm(h, (h.size(-1),)))
            logits = self.head(F.rms_norm(h, (h.size(-1),))).float()
            return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum")

    def luts(sp, n):
        base = torch.zeros(n, dtype=torch.int64); space = torch.zeros(n, dtype=torch.bool)
        boundary = torch.zeros(n, dtype=torch.bool)
        for i in range(sp.get_piece_size()):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                boundary[i] = True; continue
            if sp.is_byte(i):
                base[i] = 1; continue
            p = sp.id_to_piece(i)
            if p.startswith("\\u2581"):
                space[i] = True; p = p[1:]
            base[i] = len(p.encode())
        return base, space, boundary

    @torch.inference_mode()
    def eval_val(model, val, seq, device, lut):
        base, space, boundary = lut
        n = (val.numel() - 1) // seq * seq
        x = val[:n].view(-1, seq).to(device); y = val[1:n + 1].view(-1, seq).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        tot = torch.zeros((), device=device, dtype=torch.float64) + loss.double()
        nbytes = (base[y] + (space[y] & ~boundary[x]).long()).sum().double()
        if dist.is_initialized():
            dist.all_reduce(tot); dist.all_reduce(nbytes)
            world = dist.get_world_size()
            tot, nbytes = tot / world, nbytes / world
        vl = tot.item() / y.numel()
        return vl, vl / math.log(2) * y.numel() / nbytes.item()

    def main():
        a = Hyperparameters()
        assert torch.cuda.is_available()
        distributed = "RANK" in os.environ
        if distributed:
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", int(os.environ["LOCAL_RANK"])))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.manual_seed(0); torch.cuda.manual_seed_all(0)
        sp = spm.SentencePieceProcessor(model_file=a.tokenizer_path)
        lut = luts(sp, a.vocab_size)
        lut = tuple(t.to(device) for t in lut)
        train = load(os.path.join(a.data_path, "fineweb_train_*.bin"))
        val = load(os.path.join(a.data_path, "fineweb_val_*.bin"))
        base_model = GPT(a).cuda()
        model = torch.compile(base_model, dynamic=False)
        if distributed:
            model = DDP(model, device_ids=[local_rank], broadcast_buffers=False)
        opt = torch.optim.Adam(base_model.parameters(), lr=3e-3)
        seq = a.train_seq_len
        for step in range(a.iterations):
            i = step * 4 * seq
            x = train[i:i + 4 * seq].view(4, seq).to(device, non_blocking=True)
            y = train[i + 1:i + 1 + 4 * seq].view(4, seq).pin_memory().cuda()
            if a.crash_at == "train":
                raise RuntimeError("boom in training")
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=True):
                loss = model(x, y) / y.numel()
            opt.zero_grad(); loss.backward(); opt.step()
            torch.cuda.synchronize()
            print(f"step:{step + 1}/{a.iterations} train_loss:{loss.item():.4f}")
        print(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 1024 // 1024} MiB")
        sd = {k: (v * 127 / (v.abs().max() + 1e-8)).round().to(torch.int8) for k, v in base_model.state_dict().items()}
        buf = io.BytesIO(); torch.save(sd, buf)
        blob = zlib.compress(buf.getvalue())
        if int(os.environ.get("RANK", 0)) == 0:
            with open("final_model.int8.ptz", "wb") as fh:
                fh.write(blob)
        vl, vb = eval_val(model, val, seq, device, lut)
        print(f"final_int8_zlib_roundtrip val_loss:{vl:.4f} val_bpb:{vb:.4f}")
        print(f"final_int8_zlib_roundtrip_exact val_loss:{vl:.8f} val_bpb:{vb:.8f}")
        if dist.is_initialized():
            dist.destroy_process_group()

    if __name__ == "__main__":
        main()
''')


@pytest.fixture()
def submission(tmp_path):
    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / "train_gpt.py").write_text(CUDA_SCRIPT)
    (folder / "README.md").write_text("torchrun --standalone --nproc_per_node=8 train_gpt.py\n")
    return folder


def test_cuda_script_runs_on_cpu_and_scores_are_parsed(submission, toy_data):
    r = runner.run_submission(submission, env={}, toy_data=toy_data, trace=False, timeout_s=120)
    assert r.error is None, (r.error, r.stderr[-3000:])
    assert r.exit_code == 0
    labels = {rep.label: rep for rep in r.reported}
    exact = labels["final_int8_zlib_roundtrip_exact"]
    assert exact.decimals == 8 and labels["final_int8_zlib_roundtrip"].decimals == 4
    assert 0 < exact.val_loss < 20 and 0 < exact.val_bpb < 20
    assert abs(labels["final_int8_zlib_roundtrip"].val_bpb - exact.val_bpb) < 1e-4
    assert r.artifacts.get("final_model.int8.ptz", 0) > 0
    assert "train_gpt.py" not in r.artifacts  # unchanged submission files are not artifacts
    notes = "\n".join(r.notes)
    assert "toy env: NUM_LAYERS=2" in notes and "toy env: ITERATIONS=3" in notes
    assert "torch.compile -> identity (ran eager)" in notes
    assert "inference_mode -> no_grad" in notes
    assert "flash_attn -> scaled_dot_product_attention" in notes
    assert "sandbox: " in notes
    assert r.val_bytes_utf8 and r.val_bytes_utf8 > 0
    # The script's own LUT-based bpb and our byte count agree: bpb * bytes = nats / ln 2 summed.
    n_scored = (toy_data["n_val_tokens"] - 1) // 128 * 128
    assert r.trace is None and "not traced: tracing off" in notes
    assert n_scored > 0


def test_crash_reports_exception_and_submission_line(submission, toy_data):
    r = runner.run_submission(submission, env={"CRASH_AT": "train"}, toy_data=toy_data, trace=False,
                              timeout_s=120)
    assert r.exit_code != 0
    assert r.error is not None and r.error.startswith("crash: RuntimeError: boom in training at train_gpt.py:")
    line = int(r.error.rsplit(":", 1)[1])
    assert "boom in training" in CUDA_SCRIPT.splitlines()[line - 1]


def test_timeout_is_reported(submission, toy_data):
    (submission / "train_gpt.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    r = runner.run_submission(submission, env={}, toy_data=toy_data, trace=False, timeout_s=5)
    assert r.killed_reason == "timeout"
    assert r.error.startswith("timeout after 5s")


def test_val_override_reaches_the_script(submission, toy_data):
    (submission / "train_gpt.py").write_text(textwrap.dedent('''
        import glob, os, numpy as np
        f = sorted(glob.glob(os.path.join(os.environ["DATA_PATH"], "fineweb_val_*.bin")))[0]
        h = np.fromfile(f, dtype="<i4", count=256)
        t = np.fromfile(f, dtype="<u2", count=int(h[2]), offset=1024)
        print(f"n={t.size} first={t[:4].tolist()}")
        print(f"probe val_loss:{float(t.sum() % 97):.3f} val_bpb:1.500")
    '''))
    override = np.array([1, 5, 6, 7] + [9] * 96, dtype=np.uint16)
    r = runner.run_submission(submission, env={}, toy_data=toy_data, trace=False, timeout_s=60,
                              val_override=override)
    assert r.error is None, r.stderr
    assert "n=100 first=[1, 5, 6, 7]" in r.stdout
    assert r.reported[0].label == "probe" and r.reported[0].decimals == 3


def test_no_entry_script_is_not_auditable(tmp_path, toy_data):
    (tmp_path / "README.md").write_text("only a log here")
    r = runner.run_submission(tmp_path, env={}, toy_data=toy_data, trace=False)
    assert r.error and r.error.startswith("no entry script") and r.not_auditable


def test_python312_fstrings_are_rewritten_in_script_and_packed_payload(submission, toy_data):
    # PEP 701 syntax (nested same quotes) directly in the script and inside an exec'd payload.
    payload = 'y = {"k": 7}\nprint(f"packed {y["k"]}")\n' + "# padding so the source is saved\n" * 8
    (submission / "train_gpt.py").write_text(
        'x = {"a": 1}\nprint(f"direct {x["a"]}")\n'
        f'import base64\nexec(base64.b64decode({base64.b64encode(payload.encode())!r}).decode())\n')
    r = runner.run_submission(submission, env={}, toy_data=toy_data, trace=False, timeout_s=60)
    assert r.error is None, (r.error, r.stderr[-2000:])
    assert "direct 1" in r.stdout and "packed 7" in r.stdout
    notes = "\n".join(r.notes)
    if sys.version_info < (3, 12):
        assert "rewrite: train_gpt.py: 1 Python 3.12 f-string(s) rewritten" in notes
        assert "rewrite: <string>: 1 Python 3.12 f-string(s) rewritten" in notes
    assert "exec'd sources saved: 1" in notes


def test_unparseable_script_is_not_auditable(submission, toy_data):
    (submission / "train_gpt.py").write_text("def broken(:\n    pass\n")
    r = runner.run_submission(submission, env={}, toy_data=toy_data, trace=False, timeout_s=60)
    assert r.not_auditable and "does not compile under Python" in r.not_auditable
    assert r.error == r.not_auditable


def test_torchrun_two_ranks_with_gloo(submission, toy_data):
    r1 = runner.run_submission(submission, env={}, toy_data=toy_data, trace=False, timeout_s=150, nproc=2)
    assert r1.error is None, (r1.error, r1.stderr[-3000:])
    labels = {rep.label for rep in r1.reported}
    assert "final_int8_zlib_roundtrip_exact" in labels
    assert "shim used: init_process_group('nccl') -> gloo" in "\n".join(r1.notes)


def test_val_bytes_match_lut_rule(toy_data):
    val = runner.read_shard(toy_data["val_files"][0])
    decoded, lut = runner.val_bytes_utf8(val, toy_data["tokenizer"])
    assert decoded == lut
    assert decoded > val.size  # several bytes per token on average


def test_logparse_keeps_decimals_and_labels():
    out = "\n".join([
        "val_bpb:enabled tokenizer_kind=sentencepiece",
        "step:3/3 val_loss:6.9301 val_bpb:4.1044 train_time:0ms",
        "final_sliding_window_exact val_loss:2.12345678 val_bpb:1.23456789",
        "[rank0] legal_ttt_exact val_loss:2.1 val_bpb:1.250",
        "ttt_final val_loss: 2.0 val_bpb: 1.2",
    ])
    reps = parse_reported(out)
    assert [r.label for r in reps] == ["step:3/3", "final_sliding_window_exact", "legal_ttt_exact", "ttt_final"]
    assert [r.decimals for r in reps] == [4, 8, 3, 1]
    assert reps[1].val_bpb == 1.23456789


def test_traced_run_yields_one_trace_with_reported_and_run_end(submission, toy_data):
    pytest.importorskip("harness.dynamic.trace.tracer")
    from harness.dynamic.trace.events import Reported, RunEnd, RunStart, Scored

    r = runner.run_submission(submission, env={}, toy_data=toy_data, trace=True, timeout_s=150)
    assert r.error is None, (r.error, r.stderr[-3000:])
    assert r.trace is not None, r.notes
    assert len(r.trace.of(RunStart)) == 1
    assert r.trace.of(Scored), "the final eval's scores were not traced"
    assert {e.label for e in r.trace.of(Reported)} >= {"final_int8_zlib_roundtrip_exact"}
    (end,) = r.trace.of(RunEnd)
    assert end.exit_code == 0 and end.val_bytes_utf8 == r.val_bytes_utf8 > 0
    assert r.trace.submission_dir == str(submission.resolve())


def test_submission_flags_are_shrunk_to_toy_scale():
    from harness.dynamic.cpu import toy_env

    flags, notes = toy_env.shrink_flags({"TTT_ENABLED": "1", "TTT_EPOCHS": "3", "TTT_CHUNK_SIZE": "256",
                                         "TRAIN_SEQ_LEN": "2048", "TTT_LR": "0.01"})
    # switches and rates pass; epochs keep their multi-epoch shape (2); lengths go to toy scale
    assert flags == {"TTT_ENABLED": "1", "TTT_EPOCHS": "2", "TTT_CHUNK_SIZE": "128",
                     "TRAIN_SEQ_LEN": "128", "TTT_LR": "0.01"}
    assert len(notes) == 3 and all("shrunk" in n for n in notes)
    paths, notes = toy_env.shrink_flags({"DATA_PATH": "/root/code/data", "TOKENIZER_PATH": "/x.model",
                                         "NCCL_IB_DISABLE": "1"})
    assert paths == {} and len(notes) == 3  # the toy run's own data, never the submission's paths
    one_epoch, _ = toy_env.shrink_flags({"TTT_EPOCHS": "1"})
    assert one_epoch == {"TTT_EPOCHS": "1"}  # never raised
    # a re-evaluation of a saved artifact (PR #2140's eval logs: TTT_EVAL_ONLY=1) has no artifact
    # to load in a toy run that trains and evaluates at once: dropped, and said
    resumed, notes = toy_env.shrink_flags({"TTT_EVAL_ONLY": "1", "SKIP_TRAINING": "1", "EVAL_ONLY": "0",
                                           "NGRAM_TILT_ENABLED": "1"})
    assert resumed == {"EVAL_ONLY": "0", "NGRAM_TILT_ENABLED": "1"}
    assert sum("saved artifact" in n for n in notes) == 2


def test_step_switches_move_inside_the_toy_run(tmp_path):
    from harness.dynamic.cpu import toy_env

    (tmp_path / "train_gpt.py").write_text(
        "import os\nrecur_start = int(os.environ.get('RECUR_START_STEP', 3000))\n"
        "swa = int(os.environ.get('SWA_START_STEP', 2))\nwarm = int(os.environ.get('MUON_MOMENTUM_WARMUP_STEPS', 1500))\n")
    env, _ = toy_env.toy_env(tmp_path, data_path="/d/datasets/x", tokenizer_path="/t.model")
    assert env["RECUR_START_STEP"] == "1"  # a switch a real run crosses happens in the toy run too
    assert "SWA_START_STEP" not in env  # already inside the 3 toy steps
    assert env["MUON_MOMENTUM_WARMUP_STEPS"] == "1"  # the profile's own clamp, not a switch
    flags, _ = toy_env.shrink_flags({"RECUR_START_STEP": "3000"})  # the README's command line
    assert flags == {"RECUR_START_STEP": "1"}


def test_a_zero_period_is_kept_only_where_the_script_guards_it(tmp_path):
    from harness.dynamic.cpu import toy_env

    read = "import os\nclass H:\n    val_loss_every = int(os.environ.get('VAL_LOSS_EVERY', 500))\nargs = H()\n"
    # PR #440's shape: `step % args.val_loss_every` with no `> 0` test divides by zero at 0
    (tmp_path / "train_gpt.py").write_text(read + "for step in range(3):\n    if step % args.val_loss_every == 0:\n"
                                          "        pass\n")
    env, _ = toy_env.toy_env(tmp_path, data_path="/d/datasets/x", tokenizer_path="/t.model")
    assert int(env["VAL_LOSS_EVERY"]) > 1000  # never reached by the toy run, and no modulo by zero
    # the same when the period comes from the README's command (PR #1545: VAL_LOSS_EVERY=9999)
    source = (tmp_path / "train_gpt.py").read_text()
    flags, _ = toy_env.shrink_flags({"VAL_LOSS_EVERY": "9999"}, source=source)
    assert int(flags["VAL_LOSS_EVERY"]) > 1000
    (tmp_path / "train_gpt.py").write_text(read + "for step in range(3):\n"
                                          "    if args.val_loss_every > 0 and step % args.val_loss_every == 0:\n"
                                          "        pass\n")
    env, _ = toy_env.toy_env(tmp_path, data_path="/d/datasets/x", tokenizer_path="/t.model")
    assert env["VAL_LOSS_EVERY"] == "0"  # the baseline's "never"


def test_the_sandbox_imports_golf_audit_from_this_checkout():
    # the sandbox hides /tmp: an editable install pointing at another checkout must not be relied on
    root = runner.checkout_root()
    assert (root / "harness" / "__init__.py").is_file() and (root / "rules").is_dir()


def test_the_run_shows_no_sign_of_the_audit(submission, toy_data):
    # What a submission can read about its run (paths, environment, folder, GPU, nvidia-smi)
    # must not say "audit": a script that looks for one would take its legal path only here.
    # Under bubblewrap the tool's own checkout is mounted at a neutral path and hidden where it is.
    checkout = str(runner.checkout_root())
    (submission / "train_gpt.py").write_text(textwrap.dedent(f"""
        import os, subprocess, sys, torch
        seen = [os.getcwd(), " ".join(sys.argv), " ".join(os.listdir(".")), " ".join(sys.path),
                " ".join(f"{{k}}={{v}}" for k, v in os.environ.items()),
                torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
                subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout]
        print("SEEN " + " | ".join(seen).replace("\\n", " "))
        print("CHECKOUT", sorted(os.listdir({checkout!r})) if os.path.isdir({checkout!r}) else [])
    """))
    r = runner.run_submission(submission, env={}, toy_data=toy_data, trace=False, timeout_s=120)
    assert r.error is None, r.stderr[-2000:]
    seen = next(line for line in r.stdout.splitlines() if line.startswith("SEEN "))
    assert "H100" in seen  # the GPU a real run reports
    assert "audit" not in seen.lower(), seen
    if sandbox.available_isolation() == "bwrap":
        assert checkout not in seen, seen
        assert "CHECKOUT []" in r.stdout, r.stdout[-500:]  # its files are not where they live


WRITTEN_HYPERPARAMETERS = '''import os
class Hyperparameters:
    num_layers = 11  # written, not read from the environment
    model_dim: int = 512
    num_heads = int(os.environ.get("NUM_HEADS", 8))
    mlp_hidden = 64
    layer_of_interest = 9
NUM_KV_HEADS = 4
args = Hyperparameters()
'''


def test_written_hyperparameters_are_shrunk_on_their_own_lines():
    from harness.dynamic.cpu import toy_env

    new, notes = toy_env.shrink_literals(WRITTEN_HYPERPARAMETERS)
    old_lines, new_lines = WRITTEN_HYPERPARAMETERS.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)  # the trace's line numbers are the folder's
    assert new_lines[2] == "    num_layers = 2  # written, not read from the environment"
    assert new_lines[3] == "    model_dim: int = 64"
    assert new_lines[7] == "NUM_KV_HEADS = 2"
    # read from the environment (the env profile's business), already small, or not a knob
    assert [new_lines[i] for i in (4, 5, 6)] == [old_lines[i] for i in (4, 5, 6)]
    assert len(notes) == 3 and all(n.startswith(toy_env.LITERAL_NOTE) for n in notes)
    assert "num_layers = 11 written in the script (line 3), run with 2" in notes[0]
    assert toy_env.shrink_literals("def broken(:\n") == ("def broken(:\n", [])
    # nanoGPT's config dataclass (PRs #181, #875); a kernel's small BLOCK_SIZE is not a sequence length
    gpt = ("class GPTConfig:\n    block_size: int = 1024\n    n_layer: int = 8\n    n_head: int = 6\n"
           "    n_embd: int = 384\nBLOCK_SIZE = 64\n")
    new, notes = toy_env.shrink_literals(gpt)
    assert new.splitlines()[1:] == ["    block_size: int = 128", "    n_layer: int = 2", "    n_head: int = 4",
                                    "    n_embd: int = 64", "BLOCK_SIZE = 64"]
    # a script written from scratch (PR #2070): its own names, a size written as arithmetic
    new, notes = toy_env.shrink_literals("emb_dim = 512\nmax_context = 1024 * 8  # tokens\nd_model = 32\n"
                                         "max_steps = 340000\nconf = {'max_time': 10*60}\n")
    assert new == ("emb_dim = 64\nmax_context = 128  # tokens\nd_model = 32\nmax_steps = 3\n"
                   "conf = {'max_time': 120}\n")
    assert "max_context = 1024 * 8 written in the script (line 2), run with 128" in notes[1]


# PR #1545's shape: the model's sizes are returned by functions of a configs.py the entry imports
CONFIGS = '''def model_a() -> dict:
    return dict(arch_name="A", num_gdn_layers=10, model_dim=512, num_heads=8, mlp_mult=3.0)


SMALL = {"mlp_hidden": 128, "vocab_size": 8192, "lr": 0.02, 3: 512, "val_batch_size": 32}
'''


def test_sizes_in_config_dicts_are_shrunk_in_the_imported_module(tmp_path, toy_data):
    from harness.dynamic.cpu import toy_env

    new, notes = toy_env.shrink_literals(CONFIGS, where="configs.py")
    assert new.splitlines()[1] == ('    return dict(arch_name="A", num_gdn_layers=10, model_dim=64, num_heads=4, '
                                   'mlp_mult=3.0)')
    # already small, not a knob, not a name, or made larger by the profile (in a dict, only ever smaller)
    assert new.splitlines()[4] == ('SMALL = {"mlp_hidden": 128, "vocab_size": 1024, "lr": 0.02, 3: 512, '
                                   '"val_batch_size": 32}')
    assert "model_dim = 512 written in configs.py (line 2), run with 64" in " ".join(notes) and len(notes) == 3
    assert toy_env.imported_modules("import configs\nfrom .arch import Net\nimport torch.nn as nn\n") == \
        {"configs", "arch", "torch"}

    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / "configs.py").write_text(CONFIGS)
    (folder / "train_gpt.py").write_text("from configs import model_a\nprint('dim', model_a()['model_dim'])\n")
    r = runner.run_submission(folder, env={}, toy_data=toy_data, trace=False, timeout_s=60)
    assert r.error is None and "dim 64" in r.stdout, r.stderr[-1000:]
    assert any("written in configs.py (line 2)" in n for n in r.notes)
    assert (folder / "configs.py").read_text() == CONFIGS  # the folder itself is never edited


def test_a_run_that_fails_with_written_hyperparameters_shrunk_is_rerun_as_written(tmp_path, toy_data):
    folder = tmp_path / "sub"
    folder.mkdir()
    # a hard-coded layer index: fine with 11 layers, out of range with the toy's 2
    (folder / "train_gpt.py").write_text(WRITTEN_HYPERPARAMETERS +
                                         "blocks = list(range(args.num_layers))\nprint('block', blocks[args.layer_of_interest])\n")
    r = runner.run_submission(folder, env={}, toy_data=toy_data, trace=False, timeout_s=60)
    assert r.error is None and "block 9" in r.stdout
    assert r.notes[0].startswith(runner.LITERALS_RERUN_NOTE) and "IndexError" in r.notes[0]
    assert not any(n.startswith("toy scale (literal): num_layers") for n in r.notes)  # the second run kept 11
    (folder / "train_gpt.py").write_text(WRITTEN_HYPERPARAMETERS + "print('layers', args.num_layers, args.model_dim)\n")
    r = runner.run_submission(folder, env={}, toy_data=toy_data, trace=False, timeout_s=60)
    assert r.error is None and "layers 2 64" in r.stdout
    assert (folder / "train_gpt.py").read_text().count("= 11") == 1  # the folder itself is never edited


def test_the_entry_script_is_found_through_a_shell_script_the_readme_runs(tmp_path):
    # PR #903's shape: the README says `bash run_jepa_bpe.sh`, the torchrun line is in that script
    (tmp_path / "README.md").write_text("Setup: `bash setup.sh`\n\n```bash\nbash run_bpe.sh\n```\n")
    (tmp_path / "setup.sh").write_text("pip install -r requirements.txt\n")
    (tmp_path / "run_bpe.sh").write_text("OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=8 train_jepa.py\n")
    (tmp_path / "train_jepa.py").write_text("print('x')\n")
    (tmp_path / "helper.py").write_text("")
    assert runner.find_entry_script(tmp_path) == tmp_path / "train_jepa.py"
    (tmp_path / "run_bpe.sh").unlink()
    assert runner.find_entry_script(tmp_path) is None


def test_the_one_script_with_a_main_guard_is_the_entry_script(tmp_path):
    # PR #651's shape: train_hybrid.py beside a helper module, no README
    (tmp_path / "train_hybrid.py").write_text("import wandb_utils\n\nif __name__ == '__main__':\n    print('x')\n")
    (tmp_path / "wandb_utils.py").write_text("def log(x):\n    pass\n")
    assert runner.find_entry_script(tmp_path) == tmp_path / "train_hybrid.py"
    (tmp_path / "other.py").write_text('if __name__ == "__main__":\n    pass\n')
    assert runner.find_entry_script(tmp_path) is None  # two scripts: which one the run means is unknown
