"""Reachability from main()/__main__ and env flags: a finding on a path that did not run is
listed at low severity, marked not reachable, with the flags that would turn it on; the flags a
submission ran with come from its README/logs/scripts."""
from __future__ import annotations

from pathlib import Path

from harness.core.findings import Severity
from harness.challenge.flags import submission_flags
from harness.static.audit import audit_folder_static, audit_source
from tests.helpers import adapt_then_score

SCRIPT = '''import os
import torch


class Hyperparameters:
    ttt_enabled = bool(int(os.environ.get("TTT_ENABLED", "0")))
    slot_enabled = bool(int(os.environ.get("SLOT_ENABLED", "0")))


''' + adapt_then_score("ttt_eval") + '''

def slot_eval(args, model, val_tokens, chunks):
    use_slot = getattr(args, "slot_enabled", False)
    loss_sum = 0.0
    for s, e in chunks:
        x, y = val_tokens[s:e], val_tokens[s + 1:e + 1]
        if use_slot:
            delta = torch.zeros(8, requires_grad=True)
            slot_opt = torch.optim.AdamW([delta], lr=1e-3)
            slot_loss = model(x, y, delta)
            slot_loss.backward()
            slot_opt.step()
        with torch.no_grad():
            nll = model(x, y)
        loss_sum += nll.item()
    return loss_sum / len(chunks)


def main():
    args = Hyperparameters()
    model, opt, chunks = build()
    val_tokens = load_validation_tokens("fineweb_val_*.bin")
    print(f"val_bpb:{slot_eval(args, model, val_tokens, chunks):.4f}")
    if args.ttt_enabled:
        print(f"ttt_final val_bpb:{ttt_eval(model, val_tokens, opt, chunks):.4f}")


if __name__ == "__main__":
    main()
'''


def _by_function(result):
    return {f.location.function: f for f in result.findings if f.rule == "train-before-score"}


def test_flag_off_by_default_is_low_and_not_reachable():
    found = _by_function(audit_source(SCRIPT))
    assert set(found) == {"ttt_eval", "slot_eval"}
    for name, flag in (("ttt_eval", "TTT_ENABLED"), ("slot_eval", "SLOT_ENABLED")):
        f = found[name]
        assert f.reachable is False and f.flags.get(flag) == "1", (name, f.flags)
        assert f.severity == Severity.LOW and any("not reachable" in e for e in f.evidence)


def test_flag_on_in_env_is_high_and_reachable():
    found = _by_function(audit_source(SCRIPT, env={"TTT_ENABLED": "1"}))
    assert found["ttt_eval"].reachable is True and found["ttt_eval"].severity == Severity.HIGH
    assert found["ttt_eval"].flags == {"TTT_ENABLED": "1"}
    assert found["slot_eval"].reachable is False  # a statement-level guard: `if use_slot:`


def test_readme_command_line_turns_the_flag_on(tmp_path: Path):
    (tmp_path / "train_gpt.py").write_text(SCRIPT)
    (tmp_path / "README.md").write_text("Run:\n\n    TTT_ENABLED=1 SEED=42 torchrun --nproc_per_node=8 train_gpt.py\n")
    assert submission_flags(tmp_path) == {"TTT_ENABLED": "1"}
    result = audit_folder_static(tmp_path)
    assert result.env_flags.get("TTT_ENABLED") == "1"
    assert _by_function(result)["ttt_eval"].severity == Severity.HIGH


def test_log_line_printed_only_behind_a_flag_turns_it_on(tmp_path: Path):
    (tmp_path / "train_gpt.py").write_text(SCRIPT)
    (tmp_path / "train_seed42.log").write_text("step:100 train_loss:2.1\nttt_final val_bpb:1.1160\n")
    result = audit_folder_static(tmp_path)
    assert result.env_flags.get("TTT_ENABLED") == "1"
    f = _by_function(result)["ttt_eval"]
    assert f.reachable is True and f.severity == Severity.HIGH


def test_helper_script_outside_the_run_is_low(tmp_path: Path):
    (tmp_path / "train_gpt.py").write_text("import utils\n\ndef main():\n    utils.go()\n\nmain()\n")
    (tmp_path / "utils.py").write_text("import requests\n\ndef go():\n    return 1\n")
    (tmp_path / "download_data.py").write_text("import requests\n\nrequests.get('https://example.com')\n")
    result = audit_folder_static(tmp_path)
    by_path = {}
    for f in result.findings:
        by_path.setdefault(f.location.path, []).append(f)
    assert all(f.severity == Severity.HIGH for f in by_path["utils.py"]), "imported by the train script"
    assert by_path["download_data.py"] and all(
        f.severity == Severity.LOW and f.reachable is False for f in by_path["download_data.py"])


_PREFIX_BUILDER = """import lzma
from pathlib import Path

def load_val_tokens(path):
    return open(path, "rb").read()

def main(args):
    val_tokens = load_val_tokens(args.val_files)
    blob = lzma.compress(val_tokens[1:1000])
    Path(args.output).write_bytes(blob)

if __name__ == "__main__":
    main(parse())
"""


def test_prep_script_the_readme_runs_keeps_its_val_data_finding(tmp_path: Path):
    """A prefix builder the README tells you to run ships its blob with the run (PR #262's paid
    prefix); a download helper the README runs is still outside the run for other rules."""
    (tmp_path / "train_gpt.py").write_text("def main():\n    return 1\n\nmain()\n")
    (tmp_path / "build_prefix.py").write_text(_PREFIX_BUILDER)
    (tmp_path / "download_data.py").write_text("import requests\n\nrequests.get('https://example.com')\n")
    (tmp_path / "README.md").write_text("```bash\npython3 download_data.py\npython build_prefix.py --val-dir data "
                                        "--output prefix.xz\ntorchrun --standalone train_gpt.py\n```\n")
    result = audit_folder_static(tmp_path)
    stored = [f for f in result.findings if f.location.path == "build_prefix.py"]
    assert [f.rule for f in stored] == ["val-data-in-training"] and stored[0].severity == Severity.HIGH
    assert any("run by a command in the README" in e for e in stored[0].evidence)
    net = [f for f in result.findings if f.location.path == "download_data.py"]
    assert net and all(f.severity == Severity.LOW and f.reachable is False for f in net)
    # the same builder that no command runs is listed at low severity
    (tmp_path / "README.md").write_text("A submission.\n")
    stored = [f for f in audit_folder_static(tmp_path).findings if f.location.path == "build_prefix.py"]
    assert stored and all(f.severity == Severity.LOW for f in stored)


def test_dead_function_is_low():
    code = SCRIPT.replace("        print(f\"ttt_final", "        pass  # print(f\"ttt_final")
    found = _by_function(audit_source(code, env={"TTT_ENABLED": "1"}))
    assert found["ttt_eval"].reachable is False and found["ttt_eval"].severity == Severity.LOW


def test_submission_json_flags(tmp_path: Path):
    (tmp_path / "submission.json").write_text(
        '{"name": "x", "env": {"TTT_ENABLED": "1", "SEED": "42"}, "command": "EMA_ENABLED=0 torchrun train_gpt.py"}')
    assert submission_flags(tmp_path) == {"TTT_ENABLED": "1", "EMA_ENABLED": "0"}


def test_switches_a_hyperparameter_dump_shows_set_otherwise_than_the_default(tmp_path: Path):
    """PR #2140's shape: the run's wrapper set CASEOPS_ENABLED=1, no command line in the folder
    shows it, the log's hyperparameter dump does. Only switches the script reads from the env,
    only where it differs from the default, only where the dumps agree; command lines win."""
    (tmp_path / "train_gpt.py").write_text(SCRIPT + '''
caseops = bool(int(os.environ.get("CASEOPS_ENABLED", "0")))
gate = os.environ.get("GATE", "1") == "1"
split = bool(int(os.environ.get("SPLIT_ENABLED", "0")))
''')
    dump = "Hyperparameters:\n  caseops_enabled: True\n  gate: True\n  ttt_enabled: True\n  distributed: True\n"
    (tmp_path / "train_seed0.log").write_text(dump + "  split_enabled: True\nstep:1/20 train_loss:6.9\n  slot_enabled: True\n")
    (tmp_path / "train_seed1.log").write_text(dump + "  split_enabled: False\n")
    (tmp_path / "README.md").write_text("TTT_ENABLED=0 torchrun --nproc_per_node=8 train_gpt.py\n")
    # gate: the default; distributed: no env read; split: the dumps disagree; slot: not in a dump
    assert submission_flags(tmp_path) == {"TTT_ENABLED": "0", "CASEOPS_ENABLED": "1"}


def test_run_instructions_that_alias_the_val_shard_as_training_data(tmp_path: Path):
    """PR #44's shape: baseline code, and a README that symlinks the validation shard as the
    training shard. Legal look-alikes: the usual download command and a val-only eval path."""
    (tmp_path / "train_gpt.py").write_text("def main():\n    return 1\n\nmain()\n")
    readme = ("# run\n```bash\npython3 data/cached_challenge_fineweb.py --variant sp1024\n"
              "export VAL_FILES=./data/fineweb10B_sp1024/fineweb_val_*.bin\n```\n")
    (tmp_path / "README.md").write_text(readme)
    assert not [f for f in audit_folder_static(tmp_path).findings if f.rule == "val-data-in-training"]
    (tmp_path / "README.md").write_text(readme + "ln -s /d/fineweb_val_000000.bin /d/valonly/fineweb_train_000000.bin\n")
    (tmp_path / "run.sh").write_text("TRAIN_FILES=/d/fineweb_val_000000.bin torchrun train_gpt.py\n")
    found = {(f.location.path, f.location.line): f for f in audit_folder_static(tmp_path).findings
             if f.rule == "val-data-in-training"}
    assert set(found) == {("README.md", 6), ("run.sh", 1)}
    assert all(f.severity == Severity.HIGH for f in found.values())


RANK_GUARDED = SCRIPT.replace('''    if args.ttt_enabled:
        print(f"ttt_final val_bpb:{ttt_eval(model, val_tokens, opt, chunks):.4f}")''', '''    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        print("waiting for rank 0 to finish the ttt eval")
    if rank == 0:
        print(f"ttt_final val_bpb:{ttt_eval(model, val_tokens, opt, chunks):.4f}")''')


def test_a_rank_guard_gates_no_path(tmp_path: Path):
    """Every rank of a distributed run exists: a log line printed only on rank 1 does not make the
    rank-0 path unreachable (PR #1933's PPM mixer runs `if h.rank == 0`)."""
    (tmp_path / "train_gpt.py").write_text(RANK_GUARDED)
    (tmp_path / "train_seed42.log").write_text("waiting for rank 0 to finish the ttt eval\nttt_final val_bpb:1.1\n")
    f = _by_function(audit_folder_static(tmp_path))["ttt_eval"]
    assert f.reachable is True and f.severity == Severity.HIGH and "RANK" not in f.flags


def test_a_comparison_in_another_conjunct_does_not_flip_the_flag(tmp_path: Path):
    """`if use_cache and rank == 0: print("ngram_cache: hits=...")` printed in the logs shows the
    switch was on; the `== 0` belongs to the rank (PR #769 read as NGRAM_CACHE=0 before)."""
    script = SCRIPT.replace('''    if args.ttt_enabled:
        print(f"ttt_final val_bpb:{ttt_eval(model, val_tokens, opt, chunks):.4f}")''', '''    if args.ttt_enabled:
        score = ttt_eval(model, val_tokens, opt, chunks)
    world = len(chunks)
    if args.ttt_enabled and world == 0:
        print(f"ttt_cache_stats: hits={world}")''')
    assert script != SCRIPT
    (tmp_path / "train_gpt.py").write_text(script)
    (tmp_path / "train_seed42.log").write_text("ttt_cache_stats: hits=12\n")
    result = audit_folder_static(tmp_path)
    assert result.env_flags.get("TTT_ENABLED") == "1"
    assert _by_function(result)["ttt_eval"].severity == Severity.HIGH
