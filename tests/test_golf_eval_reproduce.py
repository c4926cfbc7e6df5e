"""golf-eval reproduce: command construction, env, timing and artifact measurement.

The end-to-end test runs a tiny script we wrote (it prints challenge-format lines, writes an
artifact, and under-reports its eval time) under real torchrun with one process."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.evaluation.verify_report import UsageError
from harness.evaluation.capture import Capture, ReproduceOptions
from harness.evaluation.reproduce import (
    build_command,
    changed_files,
    env_from_docs,
    parse_env_pairs,
    pick_model_file,
    reproduce,
    run_env,
    scratch_copy,
    time_phases,
)
from harness.core.findings import ExitCode

REPO = Path(__file__).resolve().parents[1]


def test_build_command_is_torchrun_standalone():
    cmd = build_command("train_gpt.py", 8, ["torchrun"])
    assert cmd == ["torchrun", "--standalone", "--nproc_per_node=8", "train_gpt.py"]


def test_env_from_readme_and_precedence(tmp_path):
    (tmp_path / "README.md").write_text(
        "Run:\n```bash\nNUM_LAYERS=10 TTT_ENABLED=1 SEED=7 torchrun --standalone --nproc_per_node=8 train_gpt.py\n```\n"
        "Other text with FOO=bar not on a command line.\n")
    (tmp_path / "run.sh").write_text("export TTT_EPOCHS=3\n")
    env, sources = env_from_docs(tmp_path)
    assert env == {"NUM_LAYERS": "10", "TTT_ENABLED": "1", "TTT_EPOCHS": "3"}  # SEED is ours to set
    assert any("README.md:3" in s for s in sources)
    opts = ReproduceOptions(env={"NUM_LAYERS": "2"}, data=tmp_path / "d", tokenizer=tmp_path / "t.model")
    full, added = run_env(42, opts, env, base={"PATH": "/bin"})
    assert added["NUM_LAYERS"] == "2" and added["TTT_ENABLED"] == "1" and added["SEED"] == "42"
    assert added["DATA_PATH"].endswith("/d") and full["PATH"] == "/bin"


def test_parse_env_pairs_rejects_garbage():
    assert parse_env_pairs(["A=1", "B_2=x=y"]) == {"A": "1", "B_2": "x=y"}
    with pytest.raises(UsageError):
        parse_env_pairs(["no_equals"])


def test_scratch_copy_leaves_old_logs_behind(tmp_path):
    src = tmp_path / "src"
    (src / "logs").mkdir(parents=True)
    (src / "train_gpt.py").write_text("x")
    (src / "train_seed1.log").write_text("old")
    (src / "logs" / "a.txt").write_text("old")
    (src / "README.md").write_text("r")
    dst = scratch_copy(src, tmp_path / "dst")
    assert sorted(p.name for p in dst.iterdir()) == ["README.md", "train_gpt.py"]


def test_artifact_pick_and_changed_files():
    before = {"train_gpt.py": (10, 1.0), "README.md": (5, 1.0)}
    after = dict(before, **{"final_model.pt": (9000, 2.0), "final_model.int8.ptz": (1200, 2.0),
                            "logs/x.txt": (50, 2.0)})
    files = changed_files(before, after)
    assert set(files) == {"final_model.pt", "final_model.int8.ptz", "logs/x.txt"}
    assert pick_model_file(files) == "final_model.int8.ptz"  # not the raw .pt, not the log


def test_time_phases_uses_our_clock():
    lines = [(0.5, "seed:1"), (1.0, "step:1/2 train_loss:3 train_time:100ms step_avg:100ms"),
             (3.0, "step:2/2 train_loss:3 train_time:2000ms step_avg:1000ms"),
             (3.1, "Total submission size int8+zlib: 1234 bytes"),
             (8.0, "final_roundtrip val_loss:2.0 val_bpb:1.2 eval_time:1000ms"),
             (9.0, "ttt:starting epochs=2"), (20.0, "ttt:epoch=2/2 loss=1"),
             (25.0, "final_ttt val_loss:1.9 val_bpb:1.1")]
    log, t = time_phases(Capture(lines, 0, 26.0))
    assert t["measured_train_s"] == pytest.approx(3.0)
    assert t["measured_train_loop_s"] == pytest.approx(2.0)
    phases = t["phases"]
    assert [p.label for p in phases] == ["final_roundtrip", "final_ttt"]
    assert phases[0].measured_s == pytest.approx(5.0) and phases[0].logged_s == pytest.approx(1.0)
    assert phases[1].measured_s == pytest.approx(17.0) and phases[1].logged_s is None
    assert t["measured_eval_s"] == pytest.approx(22.0)
    assert t["measured_after_train_s"] == pytest.approx(23.0)


FAKE_SCRIPT = r'''
import os, sys, time
seed = int(os.environ["SEED"])
rank = int(os.environ.get("RANK", "0"))
assert os.environ.get("FAKE_FLAG") == "on", "README env not passed"
def log(msg):
    if rank == 0:
        print(msg, flush=True)
log(f"seed:{seed}")
log("step:1/2 train_loss:3.0 train_time:100ms step_avg:100ms")
time.sleep(0.3)
log("step:2/2 val_loss:2.5 val_bpb:1.5 train_time:400ms step_avg:200ms")
blob = os.urandom(3000 + seed % 7)
if rank == 0:
    open("final_model.int8.ptz", "wb").write(blob)
code = len(open(__file__, "rb").read())
log(f"Code size: {code} bytes")
log(f"Total submission size int8+zlib: {len(blob) + code} bytes")
time.sleep(0.6)  # the eval: the script reports only 10 ms of it
b = 1.2 + seed * 1e-6
log(f"final_int8_zlib_roundtrip val_loss:{b * 1.6885:.4f} val_bpb:{b:.4f} eval_time:10ms")
log("ttt:starting epochs=1")
time.sleep(0.4)
log(f"final_ttt val_loss:{b * 1.6885 - 0.1:.4f} val_bpb:{b - 0.06:.4f}")
'''


def _fake_submission(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "train_gpt.py").write_text(FAKE_SCRIPT)
    (root / "README.md").write_text("`FAKE_FLAG=on torchrun --standalone --nproc_per_node=8 train_gpt.py`\n")
    (root / "submission.json").write_text(json.dumps(
        {"name": "fake", "github_id": "us", "author": "us", "date": "2026-01-01", "val_bpb": 1.14,
         "bytes_total": 4000}))
    return root


@pytest.mark.slow
def test_reproduce_end_to_end_with_torchrun(tmp_path):
    sub = _fake_submission(tmp_path / "fake")
    opts = ReproduceOptions(seeds=[1, 2], nproc=1, data=tmp_path, tokenizer=tmp_path / "tok.model",
                            timeout_s=120, scratch=tmp_path / "scratch",
                            torchrun=[sys.executable, "-m", "torch.distributed.run"])
    rep = reproduce(sub, opts)
    assert [r.seed for r in rep.runs] == [1, 2]
    for run in rep.runs:
        assert run.rc == 0, Path(run.log_path).read_text()
        assert run.command[-3:] == ["--standalone", "--nproc_per_node=1", "train_gpt.py"]
        assert run.env_added["FAKE_FLAG"] == "on" and run.env_added["SEED"] == str(run.seed)
        # Our clock sees the eval the script under-reports (10 ms printed, ~1 s real).
        assert run.measured_eval_s is not None and run.measured_eval_s > 0.8
        assert run.logged["eval_logged_s"] == pytest.approx(0.01)
        assert run.model_file == "final_model.int8.ptz"
        assert run.measured_artifact_bytes == run.logged["artifact_bytes"]
    assert any("not in any printed time" in n for n in rep.notes)
    # verify ran on the fresh logs: the untimed final_ttt pass makes the eval time unverifiable.
    assert rep.fresh is not None and rep.fresh.score_label == "final_ttt"
    assert {c.name: c.status for c in rep.fresh.checks}["eval-time"] == "unverified"
    assert rep.exit_code() in (ExitCode.FINDINGS, ExitCode.NOT_AUDITABLE)
    rows = {r["seed"]: r for r in rep.rows}
    assert rows[1]["eval_s"]["measured"] > rows[1]["eval_s"]["fresh_log"]


def test_reproduce_usage_errors(tmp_path):
    with pytest.raises(UsageError):
        reproduce(tmp_path / "missing", ReproduceOptions())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError):
        reproduce(tmp_path / "empty", ReproduceOptions())


@pytest.mark.slow
def test_reproduce_cli_json(tmp_path, capsys):
    from harness.cli.eval import main

    sub = _fake_submission(tmp_path / "fake")
    code = main(["--format", "json", "reproduce", str(sub), "--seeds", "3", "--nproc", "1",
                 "--data", str(tmp_path), "--tokenizer", str(tmp_path / "tok.model"), "--timeout", "120"])
    data = json.loads(capsys.readouterr().out)
    assert data["command"] == "reproduce" and data["exit_code"] == code
    assert code in (1, 3)  # the untimed final_ttt pass: never 0
    (run,) = data["runs"]
    assert run["rc"] == 0 and run["measured_eval_s"] > 0.8
    assert data["rows"][0]["artifact_bytes"]["measured_files"] == run["logged"]["artifact_bytes"]


# ---- --toy: timing lines by tailing the script's log, measuring code, through the runner ----------


def test_stamp_lines_matches_in_order_and_carries_unmatched():
    from harness.evaluation.toy import stamp_lines

    tailed = [(1.0, "seed:42"), (2.0, "step:1/2 train_loss:3"), (3.0, "x"), (4.0, "step:2/2 train_loss:2"),
              (9.0, "final val_loss:2 val_bpb:1.2"), (9.5, "step:1/2 train_loss:3")]
    stdout = ["logs/run.txt", "seed:42", "step:1/2 train_loss:3", "x", "warning from rank 1",
              "step:2/2 train_loss:2", "final val_loss:2 val_bpb:1.2"]
    stamped, matched = stamp_lines(stdout, tailed)
    assert matched == 4  # "logs/run.txt" and the warning are not in the file; "x" is too short to match
    assert [t for t, _ in stamped] == [0.0, 1.0, 2.0, 2.0, 2.0, 4.0, 9.0]
    assert [line for _, line in stamped] == stdout
    # a repeated line takes its next occurrence, never an earlier one
    stamped, _ = stamp_lines(["step:1/2 train_loss:3", "step:1/2 train_loss:3"], tailed)
    assert [t for t, _ in stamped] == [2.0, 9.5]


def test_log_tail_stamps_complete_lines_only(tmp_path):
    from harness.evaluation.toy import LogTail

    (tmp_path / "logs").mkdir()
    (tmp_path / "notes.txt").write_text("shipped with the folder\n")
    log = tmp_path / "logs" / "run.txt"
    tail = LogTail(tmp_path, skip={"notes.txt"})
    log.write_text("seed:1\nstep:1/2 tra")
    tail.poll()
    assert [s for _, s in tail.lines] == ["seed:1"]
    with open(log, "a") as fh:
        fh.write("in_loss:3\n")
    tail.poll()
    assert [s for _, s in tail.lines] == ["seed:1", "step:1/2 train_loss:3"]
    assert tail.lines[0][0] <= tail.lines[1][0]
    log.write_text("again\n")  # recreated (the runner's rerun): read from the start
    tail.poll()
    assert tail.lines[-1][1] == "again"


def test_code_size_follows_local_imports(tmp_path):
    from harness.evaluation.code_size import code_bytes

    pkg = tmp_path / "mymodel"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train_gpt.py").write_text("import sys\nif __name__ == '__main__':\n    from mymodel.train import main\n")
    (pkg / "train.py").write_text("import torch\nfrom . import quant\nfrom .model import GPT\n")
    (pkg / "model.py").write_text("import math\n")
    (pkg / "quant.py").write_text("from .model import GPT\n")
    (pkg / "toy_tools.py").write_text("from .model import GPT  # a tool next to the model, never imported\n")
    total, files = code_bytes(pkg, pkg / "train_gpt.py")
    assert files == ["__init__.py", "model.py", "quant.py", "train.py", "train_gpt.py"]
    assert total == sum((pkg / f).stat().st_size for f in files)
    # a single-file script counts itself only
    (tmp_path / "solo").mkdir()
    (tmp_path / "solo" / "train_gpt.py").write_text("import os, torch\n")
    assert code_bytes(tmp_path / "solo", tmp_path / "solo" / "train_gpt.py")[1] == ["train_gpt.py"]


def test_passes_with_equal_scores_but_different_times_stay_apart():
    """A toy run's untrained model prints (almost) the same loss for the roundtrip and the
    sliding-window pass; their own times keep them two passes, so both count in the eval sum."""
    from harness.evaluation.logs import parse_log_text

    log = parse_log_text("\n".join([
        "step:3/3 val_loss:6.1687 val_bpb:2.5355 train_time:416ms step_avg:138.80ms",
        "final_int8_zlib_roundtrip val_loss:6.1688 val_bpb:2.5356 eval_time:205ms",
        "final_int8_zlib_roundtrip_exact val_loss:6.16878753 val_bpb:2.53559503",
        "final_sliding_window val_loss:6.1685 val_bpb:2.5355 stride:64 eval_time:408ms",
        "final_sliding_window_exact val_loss:6.16851901 val_bpb:2.53548466",
        # twins of one pass, timed in other units and precision: still one pass
        "legal_ttt val_loss:6.0574 val_bpb:2.4898 eval_time:412.3s",
        "legal_ttt_exact val_loss:6.05736409 val_bpb:2.48979596 eval_time:412345ms"]))
    assert [p.label for p in log.phases] == ["final_int8_zlib_roundtrip", "final_sliding_window", "legal_ttt"]
    assert log.eval_logged_s == pytest.approx(0.205 + 0.408 + 412.3)


def _runner_available() -> bool:
    try:
        from harness.dynamic.run import runner  # noqa: F401
    except ImportError:
        return False
    return True


TOY_FOLDERS = ["submissions/pr713", "reference_model"]


@pytest.fixture(scope="module", params=TOY_FOLDERS)
def toy_report(request, tmp_path_factory):
    """One seed of `golf-eval reproduce --toy` (2 gloo processes on CPU), run once per folder."""
    if not _runner_available():
        pytest.skip("harness.dynamic.run.runner not available")
    opts = ReproduceOptions(seeds=[42], nproc=2, toy=True, timeout_s=90,
                            scratch=tmp_path_factory.mktemp("toy"))
    return request.param, reproduce(REPO / request.param, opts)


@pytest.mark.slow
def test_reproduce_toy(toy_report):
    folder, rep = toy_report
    (run,) = rep.runs
    assert run.rc == 0 and not run.error, f"{run.error}\n" + "\n".join(run.notes)
    assert rep.toy_problems() == []
    # our clock, from the lines of the log file the script writes while it runs
    assert 0 < run.measured_train_loop_s <= run.measured_train_s < run.wall_s
    assert run.measured_eval_s > 0 and run.measured_after_train_s >= run.measured_eval_s
    timed = [p for p in run.phases if p.logged_s is not None]
    assert timed and all(p.measured_s > 0 for p in run.phases)
    assert run.logged["train_s"] > 0 and run.logged["eval_logged_s"] > 0
    # artifact: the compressed model on disk + the code files = the total the fresh log prints
    assert run.model_file and run.model_file.endswith(".ptz")
    assert run.measured_artifact_bytes == run.logged["artifact_bytes"]
    assert run.code_bytes == run.logged["code_bytes"]
    # verify ran on the fresh log, and found the same numbers
    assert rep.fresh is not None and rep.fresh.target.endswith("(fresh logs)")
    (seed_row,) = rep.fresh.seeds
    assert seed_row.seed == 42 and seed_row.log == "train_seed42.log"
    assert seed_row.artifact_bytes == run.measured_artifact_bytes
    assert seed_row.train_s == pytest.approx(run.logged["train_s"])
    checks = {c.name: c.status for c in rep.fresh.checks}
    assert checks["artifact-size"] == "pass" and checks["train-time"] == "pass"
    row = rep.rows[0]
    assert row["train_s"]["measured_loop"] == run.measured_train_loop_s
    assert row["artifact_bytes"]["fresh_log"] == row["artifact_bytes"]["measured_files"]
    # a toy run never says the (8xH100) claims hold or fail
    assert rep.exit_code() == ExitCode.NOT_AUDITABLE
    assert all(c.status == "info" for c in rep.fresh.checks
               if c.name in ("claimed-score", "val_loss-field", "bytes_total-field", "significance"))
    if folder == "submissions/pr713":
        # claimed 1.1160 is ttt_final's; the fresh log has that line, at toy-scale value
        assert rep.claimed.score_label == "ttt_final" and row["val_bpb"]["label"] == "ttt_final"
        assert row["val_bpb"]["claimed"] == pytest.approx(1.116) and row["val_bpb"]["fresh_log"] > 1.5
        assert run.env_added["TTT_EPOCHS"] == "2"  # the README's 3, shrunk to toy scale by the runner
        # the full-model TTT pass prints no time of its own; our clock measures it
        untimed = [p for p in run.phases if p.logged_s is None]
        assert untimed and untimed[0].measured_s > 0
        assert run.measured_eval_s > run.logged["eval_logged_s"]
    else:
        assert rep.claimed is not None and not rep.claimed.seeds  # no logs, no claims: nothing to compare
        assert len(run.code_files) > 1 and "train_gpt.py" in run.code_files  # multi-file code counted


@pytest.mark.slow
def test_reproduce_toy_reports(toy_report):
    from rich.console import Console

    from harness.reports.reproduce import render_reproduce_text, reproduce_json, reproduce_markdown

    _, rep = toy_report
    (run,) = rep.runs
    console = Console(record=True, width=160, file=open("/dev/null", "w"))
    render_reproduce_text(rep, console)
    text = console.export_text()
    assert "exit 3: toy run complete" in text and "not verified at toy scale" in text
    assert f"{run.measured_artifact_bytes:,} bytes measured; log {run.logged['artifact_bytes']:,}" in text
    assert "verify on the fresh logs:" in text
    data = json.loads(reproduce_json(rep))
    assert data["exit_code"] == 3 and data["toy_complete"] is True and data["toy_problems"] == []
    assert "toy run complete" in reproduce_markdown(rep)
