"""The vetted list of third-party modules contest scripts import (harness/dynamic/cpu/packages.py)."""
from __future__ import annotations

import importlib

import pytest

from harness.dynamic.cpu.packages import INSTALLED, VETTED, explain_missing


@pytest.mark.parametrize("module", [p.module for p in VETTED if p.how == INSTALLED])
def test_every_installed_package_is_importable(module):
    # install.sh (the runtime extra) must really provide what the list says it does
    importlib.import_module(module)


def test_a_missing_cuda_only_import_says_why():
    why = explain_missing("No module named 'cutlass_evt_fusion'")
    assert why.startswith("`cutlass_evt_fusion` cannot run here: a CUDA extension")


def test_an_unknown_import_is_named():
    assert "not in golf-audit's vetted package list" in explain_missing("No module named 'nitrust_py'")
    assert explain_missing("division by zero") is None
