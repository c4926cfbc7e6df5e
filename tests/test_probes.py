"""The probes against simulated evals (no subprocess): a proper causal model, one that sees its
target (hash key on the target), one that adapts on the whole document before scoring, and a
nondeterministic one. Failures say "leak undetected" or "false leak"."""
from __future__ import annotations

import math

import numpy as np

from harness.dynamic import probes as P
from harness.dynamic.judge.synthetic import SyntheticRun
from harness.dynamic.trace.events import Trace
from rules.future_dependent_score import FutureDependentScore
from rules.improper_distribution import ImproperDistribution

V = 8  # vocabulary; token 1 is BOS
BOS = 1


def stream(seed: int = 0, n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    toks = rng.integers(2, V, size=n)
    for s in (0, 30, 60, 150):  # documents: [0,30) [30,60) [60,150) [150,200)
        toks[s] = BOS
    return toks.astype(np.int64)


def bigram(prev: int, cur: int) -> float:
    """A fixed, normalised conditional distribution q(cur | prev)."""
    w = np.array([1.0 + ((prev * 3 + v) % 5) for v in range(V)])
    return float(w[cur] / w.sum())


def proper(tokens):
    return [-math.log(bigram(int(tokens[p - 1]), int(tokens[p]))) for p in range(1, len(tokens))]


def sees_target(tokens):
    """q(x_p) = 0.6 whatever x_p is: a key that includes the target."""
    return [-math.log(0.6) for _ in range(1, len(tokens))]


def adapts_on_document(tokens):
    """Scores every token with a unigram model fitted on its whole document (future included)."""
    out = []
    starts = [i for i, t in enumerate(tokens) if t == BOS] + [len(tokens)]
    doc_of = np.searchsorted(starts, np.arange(len(tokens)), side="right") - 1
    for p in range(1, len(tokens)):
        d = doc_of[p]
        doc = tokens[starts[d]: starts[d + 1]]
        counts = np.bincount(doc, minlength=V) + 0.5
        q = counts / counts.sum()
        out.append(-math.log(q[tokens[p]]) * 0.5 + -math.log(bigram(int(tokens[p - 1]), int(tokens[p]))) * 0.5)
    return out


def make_trace(model, tokens, ttt_leak: bool = False) -> Trace:
    n = len(tokens)
    run = SyntheticRun(n)
    nll = model(tokens)
    for a in range(1, n, 50):  # score in batches, like an eval loop
        b = min(a + 50, n)
        run.score("eval_val", 120, [(a, b)], nll=nll[a - 1: b - 1])
        if ttt_leak and a == 1:  # a TTT step on the next batch before it is scored
            run.update("ttt_step", 9, [(0, 110)])
    run.end()
    return Trace(events=list(run.events))


def run_fn_for(model, noise: float = 0.0):
    rng = np.random.default_rng(1)

    def run_fn(override, label):
        t = make_trace(model, override)
        if noise:
            for e in t.events:
                if hasattr(e, "nll"):
                    e.nll = [x + float(rng.normal(0, noise)) for x in e.nll]
        return t
    return run_fn


def probe(model, noise=0.0, **kw):
    toks = stream()
    rep = P.run_probes(make_trace(model, toks), toks, run_fn_for(model, noise), bos=BOS, vocab=V, **kw)
    t = make_trace(model, toks)
    t.meta["probes"] = rep.as_meta()
    causal = list(FutureDependentScore().judge(t))
    improper = list(ImproperDistribution().judge(t))
    return rep, causal, improper


def test_proper_model_is_clean():
    rep, causal, improper = probe(proper)
    assert rep.not_run is None and rep.noise == 0.0
    assert len(rep.runs) <= 6
    assert causal == [] and improper == [], "false leak"
    assert rep.properness and rep.properness[0]["sum_p"] <= 1.0


def test_position_choice_is_in_the_longest_document():
    rep, _, _ = probe(proper)
    start, end = rep.plan["doc"]
    assert (start, end) == (60, 150)
    assert start < rep.plan["position"] < end - 1
    assert "longest document" in rep.plan["why"]


def test_model_that_sees_its_target_is_improper():
    rep, causal, improper = probe(sees_target)
    assert improper, "leak undetected"
    assert improper[0].location.function == "eval_val" and improper[0].layer.value == "probe"
    assert causal == [], "a target leak is not a dependence on later tokens"


def test_adapt_on_document_depends_on_the_future():
    rep, causal, improper = probe(adapts_on_document)
    assert causal, "leak undetected"
    assert "depend on later tokens" in causal[0].message
    assert any("why these positions" in e for e in causal[0].evidence)


def test_exhaustive_sums_to_one_for_a_proper_model():
    rep, causal, improper = probe(proper, exhaustive=True)
    assert len(rep.properness[0]["candidates"]) == V
    assert abs(rep.properness[0]["sum_p"] - 1.0) < 1e-9
    assert improper == [] and causal == []


def test_exhaustive_in_one_run_of_copies():
    """A bounded-context eval: all V values in one run of copied contexts."""
    rep, causal, improper = probe(proper, exhaustive=True, period=4)
    labels = [r["label"] for r in rep.runs]
    assert labels == ["causality", "exhaustive-copies"]  # no difference anywhere: no noise re-run
    assert abs(rep.properness[0]["sum_p"] - 1.0) < 1e-9 and improper == []
    rep, causal, improper = probe(sees_target, exhaustive=True, period=4)
    assert improper and "whole vocabulary" in improper[0].message, "leak undetected"
    # a sum above one pays for the noise re-run, and the copies are not run twice
    assert [r["label"] for r in rep.runs] == ["causality", "exhaustive-copies", "noise"]
    assert rep.plan["noise_from"] == "an unmodified re-run"


def test_exhaustive_copies_fall_back_when_the_eval_keeps_state():
    rep, causal, improper = probe(adapts_on_document, exhaustive=True, period=4)
    assert any(r.get("note") for r in rep.runs if r["label"] == "exhaustive-copies")
    assert len(rep.properness[0]["candidates"]) == V


def test_nondeterministic_eval_is_not_run():
    rep, causal, improper = probe(proper, noise=1e-3)
    assert rep.not_run and "nondeterministic" in rep.not_run
    assert causal == [] and improper == []
    assert [r["label"] for r in rep.runs][-1] == "noise"  # the differences paid for the re-run


def test_budget_is_respected():
    rep, _, _ = probe(proper, budget=3)
    assert len(rep.runs) == 2  # one held back for the noise re-run, not needed by a quiet eval
    assert rep.plan["noise_from"].startswith("the probe runs' positions")
    rep, _, _ = probe(adapts_on_document, budget=3)
    assert len(rep.runs) == 3 and rep.runs[-1]["label"] == "noise"
    rep, _, _ = probe(proper, budget=1)
    assert rep.not_run and len(rep.runs) == 0


def test_occurrences_keep_repeated_scores_apart():
    run = SyntheticRun(5)
    run.score("f", 1, [(1, 5)], nll=1.0)
    run.score("f", 1, [(1, 3)], nll=2.0)
    occ = P.Occurrences.of(Trace(events=run.events), 5)
    assert occ.depth() == 2 and occ.nll[1][1] == 2.0 and np.isnan(occ.nll[1][4])


# ---------------------------------------------------------------- orchestration (fake runner)
class _FakeResult:
    def __init__(self, trace, exit_code=0, error=None):
        self.trace, self.exit_code, self.error = trace, exit_code, error
        self.wall_s, self.stdout, self.stderr, self.notes = 0.1, "", "boom\n", ["shim ran eager: torch.compile shimmed"]


def _fake_audit(monkeypatch, tmp_path, model, *, crash=False, ttt_leak=False, opts=None, fail_below=0):
    from harness.dynamic import audit

    toks = stream()
    np.save(tmp_path / "val.npy", toks)

    def fake_run(folder, env, data, options, *, trace=True, tracer_options=None, val_override=None):
        if crash or (val_override is not None and len(val_override) < fail_below):
            return _FakeResult(None, exit_code=1, error="RuntimeError: boom at train_gpt.py:12")
        t = make_trace(model, toks if val_override is None else val_override, ttt_leak=ttt_leak)
        t.meta["bos_id"] = BOS
        return _FakeResult(t)

    monkeypatch.setattr(audit, "_run", fake_run)
    monkeypatch.setattr(audit, "val_tokens_file", lambda data, override=None: (toks, str(tmp_path / "val.npy")))
    return audit.run_dynamic(tmp_path, {"toy_data": {"tokenizer": ""}, "probe_budget": 5, **(opts or {})})


def test_audit_clean_model(monkeypatch, tmp_path):
    res = _fake_audit(monkeypatch, tmp_path, proper)
    assert res.findings == [] and res.not_audited == [], [f.message for f in res.findings]
    assert int(res.exit_code()) == 0
    assert res.stats["coverage_pct"] == 100.0 and res.stats["probe_runs"] == 4
    assert "probe" in res.layers_run and any("torch.compile" in n for n in res.notes)


def test_audit_probes_a_shorter_stream_against_its_own_baseline(monkeypatch, tmp_path):
    short = {"probe_stream_tokens": 64}  # the 200-token stream is more than twice as long
    res = _fake_audit(monkeypatch, tmp_path, proper, opts=short)
    assert res.findings == [] and res.not_audited == [], [f.message for f in res.findings]
    assert res.stats["probe_stream_tokens"] == 64 and res.stats["probe_runs"] == 5  # the baseline, then 4
    assert res.stats["probe_position"] < 64
    res = _fake_audit(monkeypatch, tmp_path, sees_target, opts=short)
    assert {f.rule for f in res.findings} == {"improper-distribution"}, "leak undetected on the shorter stream"
    # a script that cannot score the shorter stream is probed on the whole one, and says so
    res = _fake_audit(monkeypatch, tmp_path, sees_target, opts=short, fail_below=100)
    assert {f.rule for f in res.findings} == {"improper-distribution"}
    assert "probe_stream_tokens" not in res.stats
    assert any(n.startswith("probes: the first 64 tokens could not be probed") for n in res.notes)


def test_audit_crash_is_not_audited(monkeypatch, tmp_path):
    res = _fake_audit(monkeypatch, tmp_path, proper, crash=True)
    assert int(res.exit_code()) == 3 and "boom" in res.not_audited[0].reason
    assert res.not_audited[0].layer.value == "trace"


def test_audit_probe_only_leak(monkeypatch, tmp_path):
    res = _fake_audit(monkeypatch, tmp_path, sees_target)
    assert {f.rule for f in res.findings} == {"improper-distribution"}
    assert int(res.exit_code()) == 1


def test_audit_folds_probe_symptom_into_trace_cause(monkeypatch, tmp_path):
    res = _fake_audit(monkeypatch, tmp_path, adapts_on_document, ttt_leak=True)
    from harness.core.registry import rule_by_name

    rules = {f.rule for f in res.findings}
    assert int(res.exit_code()) == 1
    if rule_by_name("train-before-score") is None or not rule_by_name("train-before-score").has_judge():
        assert rules == {"future-dependent-score"}, "leak undetected"
        return
    assert "train-before-score" in rules and "future-dependent-score" not in rules
    cause = next(f for f in res.findings if f.rule == "train-before-score")
    assert any("confirmed by the future-dependent-score probe" in e for e in cause.evidence)


# ---------------------------------------------------------------- execution order (phased TTT)
def phased_trace(tokens, leak: bool = False) -> Trace:
    """Documents scored longest first; each document's scores use a unigram fitted on the
    documents already scored (a phased global TTT, as in the length-sorted April-May records).
    With `leak`, the unigram is fitted on every document, the unscored ones included."""
    n = len(tokens)
    starts = [i for i, t in enumerate(tokens) if t == BOS] + [n]
    docs = sorted(zip(starts[:-1], starts[1:]), key=lambda d: d[0] - d[1])  # longest first
    run = SyntheticRun(n)
    seen = np.full(V, 0.5)
    everything = np.bincount(tokens, minlength=V) + 0.5
    for a, b in docs:
        q = (everything if leak else seen) / (everything if leak else seen).sum()
        lo = max(a, 1)
        nll = [0.5 * -math.log(q[tokens[p]]) - 0.5 * math.log(bigram(int(tokens[p - 1]), int(tokens[p])))
               for p in range(lo, b)]
        run.score("eval_phased", 200, [(lo, b)], nll=nll)
        seen += np.bincount(tokens[a:b], minlength=V)  # train on the document just scored
        run.update("ttt_step", 210, [(a, b)])
    run.end()
    return Trace(events=list(run.events))


def phased_probe(leak: bool):
    toks = stream()
    rep = P.run_probes(phased_trace(toks, leak), toks, lambda o, label: phased_trace(o, leak), bos=BOS, vocab=V)
    t = phased_trace(toks, leak)
    t.meta["probes"] = rep.as_meta()
    return rep, list(FutureDependentScore().judge(t))


def test_phased_ttt_scoring_long_documents_first_is_causal_in_execution_order():
    # the short documents early in the stream are scored after the long one and trained on it
    rep, causal = phased_probe(leak=False)
    assert rep.not_run is None
    assert causal == [], f"false leak: {[f.message for f in causal]}"


def test_a_phased_eval_that_fits_unscored_documents_is_still_caught():
    rep, causal = phased_probe(leak=True)
    assert causal, "leak undetected"
