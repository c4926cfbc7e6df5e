"""The hand-shaped fixtures are generated: submissions/make_fixtures.py fills one template
(submissions/template/) and every committed train_gpt.py (and the packed source) is byte for byte
what it writes, so a change goes through the template and the generator, not one fork."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUBMISSIONS = REPO / "submissions"
GENERATOR = SUBMISSIONS / "make_fixtures.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_fixtures", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_fixtures"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_check_mode_passes_on_the_committed_tree():
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"run `python submissions/make_fixtures.py`:\n{proc.stdout}{proc.stderr}"
    assert proc.stdout == ""


def test_every_fixture_script_is_generated(gen):
    """Each fixture folder outside the evasion corpus (which has its own generator) gets its
    train_gpt.py from the template."""
    folders = {p.parent.name for p in SUBMISSIONS.glob("*/expected.json")}
    generated = {rel.split("/")[0] for rel in gen.render_all() if rel.endswith("/train_gpt.py")}
    assert folders == generated
    assert "packed/train_gpt_source.py.txt" in gen.render_all()


def test_stale_reports_a_script_that_differs_by_one_byte(gen):
    files = gen.render_all()
    assert gen.stale(files) == []
    edited = dict(files, **{"hash_leak/train_gpt.py": files["hash_leak/train_gpt.py"] + " "})
    assert gen.stale(edited) == ["hash_leak/train_gpt.py"]
    assert gen.stale({"no_such_fixture/train_gpt.py": "x"}) == ["no_such_fixture/train_gpt.py"]


def test_fill_is_strict(gen):
    assert gen.fill("a %%X%% b\n%%BLOCK%%\nc", {"X": "1", "BLOCK": "  d\n"}) == "a 1 b\n  d\n\nc"
    assert gen.fill("a\n%%BLOCK%%\nc", {"BLOCK": ""}) == "a\nc"
    with pytest.raises(KeyError):
        gen.fill("%%MISSING%%", {})
    with pytest.raises(ValueError, match="without a slot"):
        gen.fill("plain", {"UNUSED": "x"})
    with pytest.raises(ValueError, match="one line"):
        gen.fill("x = %%V%%", {"V": "1\n2"})


def test_the_template_has_no_slot_left_in_any_output(gen):
    for fx in gen.FIXTURES:
        assert gen.SLOT.search(gen.render(fx)) is None, fx.path
