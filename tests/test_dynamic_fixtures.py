"""The dynamic audit end to end: every fixture under submissions/ whose expected.json has a
"dynamic" section, and the reference model's legal TTT modes and broken variants. These run the
submissions (toy scale, CPU) under the tracer, then the probes: slow, but they run in CI.

A failure says which way: "leak undetected" (a must_report rule missing), "false leak" (a
must_not_report rule reported), or a wrong exit code."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = ROOT / "submissions"

# Minutes per audit on 2 cores: outside the default CI run, see README (-m dynamic_e2e).
pytestmark = [pytest.mark.slow, pytest.mark.dynamic_e2e]


def _can_run() -> str | None:
    try:
        import harness.dynamic.run.runner  # noqa: F401
        import harness.dynamic.trace.tracer  # noqa: F401
        import reference_model.toy_data  # noqa: F401
    except ImportError as exc:
        return f"dynamic harness incomplete: {exc}"
    return None


def _fixtures():
    for exp in sorted(SUBMISSIONS.glob("*/expected.json")):
        data = json.loads(exp.read_text())
        if "dynamic" in data:
            yield pytest.param(exp.parent, data, id=exp.parent.name)


def _check(result, dyn: dict, label: str) -> None:
    reported = [(f.rule, f.location.function) for f in result.active_findings]
    for want in dyn.get("must_report", []):
        hits = [f for f in result.active_findings if f.rule == want["rule"]
                and (want.get("function") is None or f.location.function == want["function"])]
        assert hits, (f"{label}: leak undetected: {want} not in {reported}; "
                      f"not audited: {[n.reason for n in result.not_audited]}")
        if "status" in want:  # the fused verdict's status (proven / suspected / refuted)
            assert any(f.status == want["status"] for f in hits), (
                f"{label}: {want['rule']} status {[f.status for f in hits]} != {want['status']}")
        if "evidence_contains" in want:
            assert any(want["evidence_contains"] in e for f in hits for e in f.evidence), (
                f"{label}: no evidence line of {want['rule']} says {want['evidence_contains']!r}")
    for name in dyn.get("must_not_report", []):
        bad = [f for f in result.active_findings if f.rule == name]
        assert not bad, f"{label}: false leak: {name}: {[f.message for f in bad]}"
    code = int(result.exit_code())
    assert code == dyn["exit_code"], (
        f"{label}: exit {code} != {dyn['exit_code']}; findings {[(f.rule, f.message) for f in result.findings]}; "
        f"not audited {[n.reason for n in result.not_audited]}")


def _probe_rules() -> set[str]:
    from harness.core.findings import Layer
    from harness.core.registry import all_rules

    return {r.name for r in all_rules() if Layer.PROBE in r.layers}


def _needs_probes(dyn: dict) -> bool:
    """The causality probe re-runs the eval several times (minutes for a TTT eval), so the suite
    runs it where its answer is the point: on fixtures expected clean (a probe false positive
    would fail them) and where a probe rule must be reported. On a fixture flagged by a trace rule a
    probe finding could not change the verdict; the black-box probe of an eval the tracer cannot
    see runs either way (run_dynamic needs it for any verdict)."""
    return dyn["exit_code"] == 0 or any(w["rule"] in _probe_rules() for w in dyn.get("must_report", []))


@pytest.mark.parametrize("folder,expected", list(_fixtures()))
def test_fixture(folder, expected):
    why = _can_run()
    if why:
        pytest.fail(why)
    from harness.dynamic.audit import run_dynamic

    env = {**expected.get("env", {}), **expected.get("toy_env", {})}
    dyn = expected["dynamic"]
    if dyn.get("fused"):
        # the fused verdict, end to end: what `golf-audit --dynamic` runs
        from harness.audit import audit_one

        result = audit_one(str(folder), {"env": env, "dynamic": True, "probe_budget": 4})
    else:
        result = run_dynamic(folder, {"env": env, "probe_budget": 4, "probes": _needs_probes(dyn)})
    _check(result, dyn, folder.name)


def test_legal_score_first_two_ranks_is_clean():
    why = _can_run()
    if why:
        pytest.fail(why)
    from harness.dynamic.audit import run_dynamic

    folder = SUBMISSIONS / "legal_score_first_ttt"
    expected = json.loads((folder / "expected.json").read_text())
    env = {**expected.get("env", {}), **expected.get("toy_env", {})}
    result = run_dynamic(folder, {"env": env, "nproc": 2, "probes": False})
    assert result.stats.get("ranks") == 2
    # low: the contest's sliding-window tail re-scores its last few targets (a real, minor defect)
    serious = [f for f in result.active_findings if f.severity.value >= 2]
    assert serious == [], f"false leak across ranks: {[f.message for f in serious]}"
    # every target scored but the tail shorter than one sequence (the baseline loader's truncation)
    tail = result.stats.get("unscored_tail", 0)
    scored_share = 100.0 * (1 - tail / (result.stats["val_tokens"] - 1))
    assert result.stats.get("coverage_pct") == pytest.approx(scored_share, abs=1e-3)


# ---------------------------------------------------------------- the reference model
def _reference_cases():
    try:
        from reference_model import variants
    except ImportError:
        return []
    cases = [pytest.param("legal", mode, None, id=f"legal-{mode}") for mode in variants.LEGAL_MODES]
    cases += [pytest.param("broken", None, name, id=f"broken-{name}") for name in variants.BROKEN]
    return cases


def _dynamic_rule_for(name: str) -> str | None:
    """The rule a broken variant breaks, when the dynamic layer can name it; hash-key-reads-target
    is a static rule: dynamically it shows as an improper distribution or a dependence on later
    tokens."""
    from harness.core.findings import Layer
    from harness.core.registry import rule_by_name
    from reference_model import variants

    rule = rule_by_name(variants.EXPECTED_RULE[name])
    return rule.name if rule and (Layer.TRACE in rule.layers or Layer.PROBE in rule.layers) else None


# The legal SGD TTT's probe precision is the legal_score_first_ttt fixture's test (the same
# loop shape, probes on); here it is traced only. The other legal modes run the CLI's defaults.
_TRACE_ONLY_LEGAL = {"ttt-sgd"}


def _reference_probes(kind: str, mode: str | None, variant: str | None) -> bool:
    if kind == "legal":
        return mode not in _TRACE_ONLY_LEGAL
    want = _dynamic_rule_for(variant)
    return want is None or want in _probe_rules()  # a trace rule's variant is judged by the trace


@pytest.mark.parametrize("kind,mode,variant", _reference_cases())
def test_reference_model(kind, mode, variant):
    from harness.dynamic.audit import run_dynamic
    from reference_model import variants

    env = dict(variants.env(mode=mode, broken=variant))
    # the CLI's default probe budget where the probes run
    result = run_dynamic(variants.folder(), {"env": env, "probes": _reference_probes(kind, mode, variant)})
    if kind == "legal":
        assert result.active_findings == [], f"false leak ({mode}): {[f.message for f in result.findings]}"
        assert result.not_audited == [], [n.reason for n in result.not_audited]
        assert result.stats["coverage_pct"] == pytest.approx(100.0)
        exact = [r for r in result.stats["reported"] if r.get("matches") and r.get("decimals", 0) >= 8]
        assert exact, "no exact printed score matched a pass"
        for r in exact:
            assert abs(r["loss_delta"]) <= 1e-6
            if r.get("bpb_delta") is not None:
                assert abs(r["bpb_delta"]) <= 1e-6
            if r.get("script_bytes") is not None and r.get("true_bytes"):
                assert abs(r["script_bytes"] - r["true_bytes"]) < 0.5
        return
    names = {f.rule for f in result.findings if f.severity.value >= 2}
    assert names, (f"leak undetected: BROKEN={variant} gave no finding; "
                   f"not audited {[n.reason for n in result.not_audited]}")
    want = _dynamic_rule_for(variant)
    if want is not None:
        accepted = {want} | variants.DYNAMIC_ALSO.get(variant, set())
        assert accepted & names, f"BROKEN={variant}: expected one of {sorted(accepted)}, got {sorted(names)}"
