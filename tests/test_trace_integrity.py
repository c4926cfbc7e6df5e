"""The tracer notices when a run removes its instrumentation (pops its dispatch mode, restores a
patched function, clears torch's hook dicts): the trace is marked untrusted, GA013's judge reports
a high finding at the last score/update seen, and the dynamic audit then skips the trace judges
and leaves the verdict to the black-box probe. Failure messages say which way a test failed:
"tampering undetected" or "false tampering"."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.findings import Layer, Severity
from harness.core.registry import rule_by_name
from harness.dynamic.trace.events import Trace
from harness.dynamic.trace.tracer import Tracer
from tests.helpers import marker_line
from tests.test_tracer import CHUNK, SEQ, V, cfg_for, load_val, make_model, val_tokens


def line_of(marker: str) -> int:
    """Line number (in this file) of the statement carrying `# <marker>`."""
    return marker_line(__file__, marker)


def _score(model, val_t, ci):
    local = val_t[ci * CHUNK: (ci + 1) * CHUNK + 1]
    x, y = local[:-1].reshape(-1, SEQ), local[1:].reshape(-1, SEQ)
    with torch.inference_mode():
        return F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), reduction="none").sum()  # SCORE-LINE


def _traced(tamper):
    """Score chunk 0, tamper, score chunk 1; return the tracer (finished)."""
    val = val_tokens()
    model = make_model()
    tr = Tracer(cfg_for(val))
    with tr:
        val_t = load_val(val)
        _score(model, val_t, 0)
        undo = tamper(tr)
        _score(model, val_t, 1)
        if undo:
            undo()
    return tr


def _judge(tr):
    return list(rule_by_name("audit-tampering").judge(tr.trace()))


def test_intact_run_is_trusted():
    tr = _traced(lambda tr: None)
    assert tr.tampered is None, f"false tampering: {tr.tampered}"
    meta = tr.trace().meta
    assert meta["integrity"] == {"0": {}} and "untrusted" not in meta
    assert _judge(tr) == []


def test_popped_dispatch_mode_is_found_at_exit():
    from torch.utils._python_dispatch import _pop_mode

    tr = _traced(lambda tr: (_pop_mode(), None)[1])
    assert tr.tampered is not None, "tampering undetected: the dispatch mode was popped"
    assert tr.tampered["when"] == "at exit" and "dispatch-mode stack" in tr.tampered["missing"][0]
    assert tr.tampered["frame"]["line"] == line_of("SCORE-LINE")  # the last score seen (chunk 0's)
    assert "untrusted" in tr.trace().meta
    (f,) = _judge(tr)
    assert f.severity is Severity.HIGH and f.layer is Layer.TRACE and f.location.line == line_of("SCORE-LINE")


def test_restored_patch_is_found_at_the_next_score():
    def tamper(tr):
        owner, attr, wrapper = tr.patched[0]  # Tensor.numpy
        # a stand-in that behaves the same (the tracer itself reads tensors through it) but is
        # not the tracer's: what a script restoring the original would look like
        setattr(owner, attr, lambda *a, **k: wrapper(*a, **k))
        return lambda: setattr(owner, attr, wrapper)

    tr = _traced(tamper)
    assert tr.tampered is not None, "tampering undetected: a patched function was replaced"
    assert tr.tampered["when"].startswith("at a recorded") and "wrapper" in tr.tampered["missing"][0]


def test_cleared_optimizer_hooks_are_found():
    import torch.optim.optimizer as opt

    def tamper(tr):
        saved = dict(opt._global_optimizer_pre_hooks)
        opt._global_optimizer_pre_hooks.clear()
        return lambda: opt._global_optimizer_pre_hooks.update(saved)

    tr = _traced(tamper)
    assert tr.tampered is not None and "hook" in tr.tampered["missing"][0], "tampering undetected: hooks cleared"


def test_untrusted_trace_is_judged_by_the_blackbox_probe_alone(monkeypatch, tmp_path):
    """Plumbing: run_dynamic on an untrusted trace reports GA013 from the integrity record,
    runs no other trace judge, and asks the black-box probe for the verdict (required)."""
    import harness.dynamic.audit as D
    from harness.dynamic.run.runner import RunResult

    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / "train_gpt.py").write_text("print('x')\n")
    meta = dict(rule_by_name("audit-tampering").TRACE_INVALID[0].meta)
    result = RunResult(exit_code=0, wall_s=1.0, stdout="", stderr="", trace=Trace(events=[], submission_dir="", meta=meta),
                       artifacts={}, scratch=str(tmp_path))
    calls = []
    monkeypatch.setattr(D, "_run", lambda *a, **k: result)
    monkeypatch.setattr(D, "_blackbox", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(D, "val_tokens_file", lambda data: (np.zeros(3), str(tmp_path / "v.npy")))
    res = D.run_dynamic(folder, {"toy_data": {"tokenizer": "", "val_files": []}})
    assert [f.rule for f in res.findings] == ["audit-tampering"]
    assert res.findings[0].location.line == 412
    assert calls == [{"required": True}]
    assert any("trace not trusted" in n for n in res.notes)
    assert res.trace_sites is None  # an untrusted trace refutes no static finding
