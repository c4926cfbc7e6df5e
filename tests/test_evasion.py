"""The evasion corpus (submissions/evasion/): illegal evals written to slip past static analysis.

Each variant's expected.json names the layers that must catch it (`caught_by`: "static", "trace",
"probe") and what each must report. "Caught by a layer" means an active finding from that layer
at medium severity or above (so the audit fails); a low-severity note such as packed-source does
not count.

- static: every variant, fast.
- dynamic (slow): variants whose caught_by names trace/probe are run under the tracer (probes only
  where caught_by names "probe", budget 3) on a validation stream cut to ~10k tokens: all 20 in
  about 2.5 minutes on the 2-core dev machine (6-15 s each), so CI runs them all.
  `pytest -m evasion_full tests/test_evasion.py` selects just these.

`python tests/test_evasion.py --table` runs every layer (probes included) on every variant and
prints the table (variant, caught by static?, by trace?, by probes?).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.helpers import function_matches

ROOT = Path(__file__).resolve().parents[1]
EVASION = ROOT / "submissions" / "evasion"
VARIANTS = sorted(p.parent for p in EVASION.glob("*/expected.json"))
IDS = [p.name for p in VARIANTS]
LAYERS = ("static", "trace", "probe")
SHORT_VAL_TOKENS = 12_000
PROBE_BUDGET = 3


def expected_of(folder: Path) -> dict:
    return json.loads((folder / "expected.json").read_text())


def caught(result, layer: str) -> list:
    """Active findings of `layer` that fail the audit (severity >= medium)."""
    from harness.core.findings import Severity

    return [f for f in result.active_findings if f.layer.value == layer and f.severity >= Severity.MEDIUM]


def missing(result, layer: str, items: list[dict]) -> list[dict]:
    """The must_report items that `layer` did not report."""
    found = caught(result, layer)
    out = []
    for item in items:
        names = [item["rule"]] if "rule" in item else list(item["any_of"])
        hits = [f for f in found if f.rule in names
                and (not item.get("function") or function_matches(f.location.function, item["function"]))]
        if not hits:
            out.append(item)
    return out


def _summary(result) -> str:
    return (f"findings {[(f.rule, f.layer.value, f.severity.name, f.location.function) for f in result.findings]}; "
            f"not audited {[n.reason for n in result.not_audited]}")


# ---------------------------------------------------------------- the corpus itself
def _generator():
    spec = importlib.util.spec_from_file_location("make_variants", EVASION / "make_variants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_variants"] = module
    spec.loader.exec_module(module)
    return module


def test_corpus_has_at_least_15_variants():
    assert len(VARIANTS) >= 15, IDS


def test_generated_files_are_current():
    gen = _generator()
    files = gen.render_all()
    stale = [rel for rel, text in files.items()
             if not (EVASION / rel).is_file() or (EVASION / rel).read_text(encoding="utf-8") != text]
    assert not stale, f"run `python submissions/evasion/make_variants.py`: out of date: {stale}"
    generated = {rel.split("/")[0] for rel in files}
    on_disk = {p.name for p in EVASION.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert on_disk == generated, f"folders not made by the generator: {sorted(on_disk - generated)}"


@pytest.mark.parametrize("folder", VARIANTS, ids=IDS)
def test_variant_files(folder: Path):
    for name in ("train_gpt.py", "README.md", "submission.json", "expected.json"):
        assert (folder / name).is_file(), f"{folder.name}: {name} missing"
    readme = " ".join((folder / "README.md").read_text().split())
    assert "golf-audit" in readme and "shares no code" in readme
    assert "PR #" in readme, f"{folder.name}: README must name the PR it models"
    sub = json.loads((folder / "submission.json").read_text())
    for field in ("name", "author", "github_id", "val_bpb", "bytes_total", "blurb", "date"):
        assert field in sub
    exp = expected_of(folder)
    assert exp["caught_by"] and set(exp["caught_by"]) <= set(LAYERS), exp["caught_by"]
    compile((folder / "train_gpt.py").read_text(), str(folder / "train_gpt.py"), "exec")


# ---------------------------------------------------------------- static layer
@pytest.mark.parametrize("folder", VARIANTS, ids=IDS)
def test_static(folder: Path):
    from harness.static.audit import audit_folder_static

    exp = expected_of(folder)
    result = audit_folder_static(folder, env=exp["env"])
    if "static" not in exp["caught_by"]:
        # built to evade this layer: any verdict is allowed, but never a crash or "not audited"
        assert result.not_audited == [], [n.reason for n in result.not_audited]
        return
    assert caught(result, "static"), f"{folder.name}: static layer missed it: {_summary(result)}"
    assert not missing(result, "static", exp["static"]["must_report"]), (
        f"{folder.name}: static must report {missing(result, 'static', exp['static']['must_report'])}: "
        f"{_summary(result)}")
    assert int(result.exit_code()) == exp["static"]["exit_code"]


# ---------------------------------------------------------------- dynamic layers
def make_short_toy_data(out: Path) -> dict:
    """The harness's toy data with the validation shard cut (at a document start) to about
    SHORT_VAL_TOKENS tokens: the same code paths, a quarter of the run time."""
    import numpy as np

    from harness.dynamic.run.runner import get_toy_data
    from reference_model.data import BOS_ID, read_shard, write_shard

    data = dict(get_toy_data())
    val = read_shard(data["val_files"][0])
    starts = np.flatnonzero(val[:SHORT_VAL_TOKENS + 1] == BOS_ID)
    cut = int(starts[-1]) if len(starts) > 1 and starts[-1] > 0 else min(SHORT_VAL_TOKENS, len(val))
    path = out / "fineweb_val_000000.bin"
    write_shard(path, val[:cut])
    data.update(val_files=[str(path)], val_glob=str(out / "fineweb_val_[0-9]*.bin"), n_val_tokens=cut)
    return data


@pytest.fixture(scope="module")
def short_toy_data(tmp_path_factory):
    return make_short_toy_data(tmp_path_factory.mktemp("evasion_val"))


def run_dynamic_for(folder: Path, toy_data: dict, probes: bool | None = None):
    from harness.dynamic.audit import run_dynamic

    exp = expected_of(folder)
    if probes is None:
        probes = bool(exp.get("dynamic", {}).get("probes"))
    return run_dynamic(folder, {"env": exp["env"], "probes": probes, "probe_budget": PROBE_BUDGET,
                                "toy_data": toy_data})


def _dynamic_params():
    out = []
    for folder in VARIANTS:
        if {"trace", "probe"} & set(expected_of(folder)["caught_by"]):
            out.append(pytest.param(folder, id=folder.name, marks=[pytest.mark.slow, pytest.mark.evasion_full, pytest.mark.dynamic_e2e]))
    return out


@pytest.mark.parametrize("folder", _dynamic_params())
def test_dynamic(folder: Path, short_toy_data):
    exp = expected_of(folder)
    result = run_dynamic_for(folder, short_toy_data)
    items = exp["dynamic"]["must_report"]
    for layer in ("trace", "probe"):
        if layer not in exp["caught_by"]:
            continue
        assert caught(result, layer), f"{folder.name}: {layer} layer missed it: {_summary(result)}"
        want = [dict((k, v) for k, v in i.items() if k != "layer") for i in items if i["layer"] == layer]
        gone = missing(result, layer, want)
        assert not gone, f"{folder.name}: {layer} must report {gone}: {_summary(result)}"
    assert int(result.exit_code()) == exp["dynamic"]["exit_code"], _summary(result)


# ---------------------------------------------------------------- the table (manual)
def table(probes_everywhere: bool = True) -> str:
    """Run every layer on every variant; a Markdown table of what caught what."""
    import tempfile
    import time

    from harness.static.audit import audit_folder_static

    data = make_short_toy_data(Path(tempfile.mkdtemp(prefix="evasion_val")))
    rows = ["| variant | static | trace | probes | required (caught_by) | rules | dynamic s |",
            "|---|---|---|---|---|---|---|"]
    for folder in VARIANTS:
        exp = expected_of(folder)
        st = audit_folder_static(folder, env=exp["env"])
        t0 = time.perf_counter()
        dyn = run_dynamic_for(folder, data, probes=True if probes_everywhere else None)
        dt = time.perf_counter() - t0
        got = {"static": caught(st, "static"), "trace": caught(dyn, "trace"), "probe": caught(dyn, "probe")}
        marks = {k: ("yes" if v else "no") for k, v in got.items()}
        # a probe finding that names the same site as a trace finding is folded into it
        folded = [f for f in got["trace"] if any("confirmed by the" in e and "probe" in e for e in f.evidence)]
        if folded and not got["probe"]:
            marks["probe"] = "yes (folded into the trace finding)"
        if any(n.layer.value == "probe" for n in dyn.not_audited):
            marks["probe"] += " (not run: " + "; ".join(n.reason for n in dyn.not_audited
                                                        if n.layer.value == "probe")[:80] + ")"
        rules = sorted({f"{f.layer.value}:{f.rule}" for fs in got.values() for f in fs})
        rows.append(f"| {folder.name} | {marks['static']} | {marks['trace']} | {marks['probe']} | "
                    f"{', '.join(exp['caught_by'])} | {', '.join(rules)} | {dt:.0f} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's harness, not whichever one is installed
    if "--table" in sys.argv:
        print(table())
