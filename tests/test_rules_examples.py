"""Tests generated from every static rule's VALID/INVALID examples (the Fixit way): a rule must
report nothing on each VALID example and must report on each INVALID one, at the pinned line,
function and message. A static rule without both kinds of example fails the suite."""
from __future__ import annotations

import pytest

from harness.core.findings import Layer
from harness.core.registry import all_rules
from harness.static.audit import audit_source

STATIC_RULES = [r for r in all_rules() if Layer.STATIC in r.layers and r.has_static()]

VALID_CASES = [(r, i, ex) for r in STATIC_RULES for i, ex in enumerate(r.VALID)]
INVALID_CASES = [(r, i, ex) for r in STATIC_RULES for i, ex in enumerate(r.INVALID)]


def _mine(rule, example):
    result = audit_source(example.code, env=dict(example.env), rules=[rule])
    return result, [f for f in result.findings if f.rule == rule.name]


def test_every_static_rule_has_examples():
    for rule in STATIC_RULES:
        assert rule.VALID, f"{rule.name} has no VALID example"
        assert rule.INVALID, f"{rule.name} has no INVALID example"


def test_rule_ids_and_docs():
    ids = [r.id for r in all_rules()]
    assert len(ids) == len(set(ids))
    for rule in all_rules():
        assert rule.id.startswith("GA") and rule.name == rule.name.lower() and " " not in rule.name
        doc = rule.documentation()
        for section in ("## What it does", "## Why is this bad?", "## References"):
            assert section in doc, f"{rule.name}: documentation lacks {section}"


@pytest.mark.parametrize("rule,index,example", VALID_CASES,
                         ids=[f"{r.name}-VALID_{i}" for r, i, _ in VALID_CASES])
def test_valid(rule, index, example):
    result, mine = _mine(rule, example)
    assert not result.not_audited, [n.reason for n in result.not_audited]
    assert mine == [], f"false leak: {rule.name} reported on VALID_{index} ({example.note}): " + \
        "; ".join(f"line {f.location.line}: {f.message}" for f in mine)


@pytest.mark.parametrize("rule,index,example", INVALID_CASES,
                         ids=[f"{r.name}-INVALID_{i}" for r, i, _ in INVALID_CASES])
def test_invalid(rule, index, example):
    result, mine = _mine(rule, example)
    assert mine, f"leak undetected: {rule.name} missed INVALID_{index} ({example.note})"
    first = mine[0]
    if example.line is not None:
        assert first.location.line == example.line, [f.location.line for f in mine]
    if example.function is not None:
        assert first.location.function == example.function
    if example.message_contains is not None:
        assert example.message_contains in first.message
    assert first.fix, "every finding says what to change"
    assert first.location.source_line, "every finding quotes its line"
