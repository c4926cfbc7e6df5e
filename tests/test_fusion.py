"""The fused verdict (harness/fusion.py) on hand-built layer results: which way each static
suspicion goes against what a complete trace recorded at its line."""
from __future__ import annotations

import pytest

from harness.core.findings import AuditResult, Confidence, Finding, Layer, Location, Severity
from harness.dynamic.judge.sites import Site
from harness.fusion import PROVEN, REFUTED, SUSPECTED, fuse


def finding(rule: str, layer: Layer, line: int, function: str = "ttt") -> Finding:
    return Finding(rule=rule, rule_id="GA000", severity=Severity.HIGH, confidence=Confidence.MEDIUM, layer=layer,
                   message="m", location=Location(path="train_gpt.py", line=line, function=function))


def results(static: list[Finding], dynamic: list[Finding], sites: dict | None):
    s = AuditResult(target="x", findings=static, layers_run=["static"])
    d = AuditResult(target="x", findings=dynamic, layers_run=["trace"], trace_sites=sites)
    return s, d


def test_static_only_is_suspected():
    f = finding("train-before-score", Layer.STATIC, 10)
    fuse(AuditResult(target="x", findings=[f]), None)
    assert f.status == SUSPECTED and f.severity is Severity.HIGH


def test_trace_finding_at_the_same_function_proves_the_static_one():
    f, d = finding("train-before-score", Layer.STATIC, 10), finding("train-before-score", Layer.TRACE, 12)
    fuse(*results([f], [d], {}))
    assert f.status == PROVEN and d.status == PROVEN and f.severity is Severity.HIGH
    assert any("proven by the trace layer" in e for e in f.evidence)


def test_legal_updates_at_the_flagged_line_refute_it():
    f = finding("train-before-score", Layer.STATIC, 10)
    sites = {"train_gpt.py:10": Site(path="train_gpt.py", line=10, updates=64, premature=0, positions=512,
                                     first_update="lora.A (parameter, via optimizer-step)")}
    s, d = results([f], [], sites)
    fuse(s, d)
    assert f.status == REFUTED and f.severity is Severity.LOW
    assert any("refuted by the trace (static severity was high)" in e and "64 update(s)" in e for e in f.evidence)
    assert s.exit_code(Severity.MEDIUM) == 0


@pytest.mark.parametrize("rule,site", [
    ("train-before-score", Site(path="train_gpt.py", line=10, updates=64, premature=1)),
    # a score at the line of a train-before-score finding says nothing about its updates
    ("train-before-score", Site(path="train_gpt.py", line=10, scores=3)),
    ("hash-key-reads-target", Site(path="train_gpt.py", line=10, updates=3, scores=3)),
], ids=["one_premature_update_keeps_it", "events_that_do_not_decide_the_rule", "rule_without_refuting_events"])
def test_what_a_complete_trace_recorded_at_the_line_does_not_refute(rule, site):
    f = finding(rule, Layer.STATIC, 10)
    fuse(*results([f], [], {"train_gpt.py:10": site}))
    assert f.status == SUSPECTED and f.severity is Severity.HIGH


def test_code_the_toy_run_never_executed_is_not_cleared():
    f = finding("train-before-score", Layer.STATIC, 10)
    sites = {"train_gpt.py:99": Site(path="train_gpt.py", line=99, updates=5)}
    fuse(*results([f], [], sites))
    assert f.status == SUSPECTED and f.severity is Severity.HIGH
    assert any("not exercised by the toy run" in e for e in f.evidence)


def test_an_incomplete_trace_refutes_nothing():
    f = finding("train-before-score", Layer.STATIC, 10)
    fuse(*results([f], [], None))
    assert f.status == SUSPECTED and any("not checked against a trace" in e for e in f.evidence)


def test_facts_the_static_layer_reads_itself_are_proven():
    f = finding("packed-source", Layer.STATIC, 1)
    fuse(AuditResult(target="x", findings=[f]), None)
    assert f.status == PROVEN
