"""Generated from the rules themselves: every rule with a trace or probe layer carries
TRACE_VALID / TRACE_INVALID synthetic traces (`harness.dynamic.judge.synthetic.TraceExample`), and its
`judge()` must report nothing on each VALID trace and at least one finding on each INVALID one,
at the pinned function/line/message when given. A dynamic rule without examples fails."""
from __future__ import annotations

import pytest

from harness.core.findings import Layer
from harness.core.registry import all_rules


def _dynamic_rules():
    return [r for r in all_rules() if Layer.TRACE in r.layers or Layer.PROBE in r.layers]


def _cases():
    for rule in _dynamic_rules():
        for kind, examples in (("TRACE_VALID", rule.TRACE_VALID), ("TRACE_INVALID", rule.TRACE_INVALID)):
            for i, example in enumerate(examples):
                yield pytest.param(rule, kind, example, id=f"{rule.name}-{kind}_{i}")


def test_every_dynamic_rule_has_a_judge_and_examples():
    rules = _dynamic_rules()
    assert rules, "no dynamic rules found in rules/"
    for rule in rules:
        assert rule.has_judge(), f"{rule.name} lists a dynamic layer but has no judge()"
        assert rule.TRACE_VALID, f"{rule.name} has no TRACE_VALID examples"
        assert rule.TRACE_INVALID, f"{rule.name} has no TRACE_INVALID examples"


@pytest.mark.parametrize("rule,kind,example", list(_cases()))
def test_trace_example(rule, kind, example):
    findings = list(rule.judge(example.trace()))
    if kind == "TRACE_VALID":
        assert findings == [], f"false report ({example.note}): {[f.message for f in findings]}"
        return
    assert findings, f"violation undetected ({example.note})"
    first = findings[0]
    assert first.rule == rule.name and first.rule_id == rule.id
    assert first.layer in (Layer.TRACE, Layer.PROBE) and first.layer in rule.layers
    assert first.evidence, "a dynamic finding must carry evidence"
    if example.function is not None:
        assert first.location.function == example.function
    if example.line is not None:
        assert first.location.line == example.line
    if example.message_contains is not None:
        assert example.message_contains in first.message


def test_dynamic_rules_are_documented():
    for rule in _dynamic_rules():
        doc = rule.documentation()
        for section in ("## What it does", "## Why is this bad?", "## References"):
            assert section in doc, f"{rule.name}: missing {section}"
        assert rule.references, f"{rule.name}: cite the rulings"
