"""`golf-audit triage` on a tiny challenge repository with fake PR refs (tests/triage_fake_repo.py):
which folder each PR adds, the verdicts, the cache, the outputs, the local pool and a real Dask
LocalCluster (same verdicts; a worker killed mid-task is retried once, then "worker lost")."""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triage_fake_repo as fake  # noqa: E402

from harness.cli.audit import main as cli_main  # noqa: E402
from harness.core.findings import ExitCode  # noqa: E402
from harness.triage import gitsource  # noqa: E402
from harness.triage.pool import LocalPool  # noqa: E402
from harness.triage.report import leaderboard, render_html, render_markdown, score_plot  # noqa: E402
from harness.triage.run import SCHEMA, TriageOptions, triage  # noqa: E402
from harness.triage.work import audit_task  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return fake.build(tmp_path_factory.mktemp("challenge") / "repo")


@pytest.fixture(scope="module")
def local_doc(repo, tmp_path_factory) -> dict:
    cache_dir = tmp_path_factory.mktemp("cache")
    return triage(TriageOptions(repo=str(repo), claims=True, cache_dir=str(cache_dir), jobs=2))


def verdicts(doc: dict) -> dict[int, str]:
    return {r["pr"]: r["verdict"] for r in doc["prs"]}


# ------------------------------------------------------------------ which folder a PR adds
def test_discovery_picks_each_prs_folder(repo):
    srcs = {s.number: s for s in gitsource.discover(gitsource.git_dir(str(repo)))}
    assert sorted(srcs) == list(range(1, 10))
    for n, folder in fake.FOLDERS.items():
        assert srcs[n].folder == folder, n
    assert srcs[3].how.startswith("merged"), "a merged PR is read from its merge commit"
    merge = gitsource.git(gitsource.git_dir(str(repo)), "log", "-1", "--format=%H", "--grep",
                          "Merge pull request #3").decode().strip()
    assert srcs[3].commit == merge
    assert srcs[7].other_folders == [f"{fake.TRACK}/2026-04-05_Notes"]
    assert "not in a record folder" in srcs[5].note
    assert [e.path for e in srcs[5].files] == ["train_gpt.py"], "root edit: only the root files it changed"
    assert {e.path.rsplit("/", 1)[1] for e in srcs[4].files} == {"train_gpt.py", "README.md", "submission.json"}
    assert srcs[6].folder is None and srcs[6].reason.startswith("no submission folder")


def test_merge_bases_match_git(repo):
    gd = gitsource.git_dir(str(repo))
    heads = gitsource.pull_heads(gd)
    main = gitsource.git(gd, "rev-parse", "main").decode().strip()
    fast = gitsource.merge_bases(gd, main, list(heads.values()))
    for head in heads.values():
        assert fast[head] == gitsource.git(gd, "merge-base", main, head).decode().strip()


def test_choose_folder_prefers_the_train_script():
    E = gitsource.Entry
    folder, others, _ = gitsource.choose_folder([
        E("records/track_10min_16mb/a/README.md", "100644", "0" * 40),
        E("records/track_10min_16mb/b/train_gpt.py", "100644", "0" * 40),
        E("records/track_10min_16mb/b/submission.json", "100644", "0" * 40),
        E("records/track_10min_16mb/c/helper.py", "100644", "0" * 40)])
    assert folder == "records/track_10min_16mb/b" and set(others) == {"records/track_10min_16mb/a",
                                                                       "records/track_10min_16mb/c"}
    folder, others, note = gitsource.choose_folder([E("experiments/x/train_x.py", "100644", "0" * 40),
                                                    E("records/track_10min_16mb/d/README.md", "100644", "0" * 40)])
    assert folder == "experiments/x" and others == ["records/track_10min_16mb/d"] and "not in a record folder" in note


# ------------------------------------------------------------------ verdicts, records, cache
def test_local_verdicts_and_records(local_doc):
    assert local_doc["schema"] == SCHEMA
    v = verdicts(local_doc)
    for n, want in fake.EXPECTED_STATIC.items():
        if want == "clean" and n in (3, 4, 5, 7):
            want = "claims-unverified"  # tiny records: no train log, so the claims cannot be checked
        assert v[n] == want, (n, v[n])
    recs = {r["pr"]: r for r in local_doc["prs"]}
    pr713 = recs[2]
    rules = {b["rule"] for b in pr713["blocking"] if b["kind"] == "rule"}
    assert "train-before-score" in rules
    assert all(b["file"] == "train_gpt.py" and b["line"] > 0 for b in pr713["blocking"] if b["kind"] == "rule")
    assert any(b["kind"] == "claim" for b in pr713["blocking"]), "--claims: verify's failed checks are listed"
    assert pr713["claimed"]["val_bpb"] == pytest.approx(1.118), "PR #713 keeps its bpb in val_loss"
    assert recs[1]["claimed"]["val_bpb"] is not None and recs[1]["record_claim"]
    assert recs[3]["record_claim"] is False, "non-record track"
    assert recs[8]["same_as"] == 1, "a byte-identical folder is audited once"
    assert recs[6]["not_audited"] and recs[9]["not_audited"]
    assert "syntax error" in recs[9]["not_audited"][0]
    for r in local_doc["prs"]:
        if r["verdict"] != "not-audited" or r["pr"] == 9:
            assert r["layers"][:1] == ["static"] and "claims" in r["layers"]
    assert local_doc["counts"]["clean"] == 2 and sum(local_doc["counts"].values()) == 9


def test_cache_reaudits_only_new_prs(repo, tmp_path):
    cache_dir = tmp_path / "cache"
    first = triage(TriageOptions(repo=str(repo), prs=[1, 3, 6], cache_dir=str(cache_dir), jobs=1))
    assert first["timing"]["audited"] == 2 and first["timing"]["from_cache"] == 0
    again = triage(TriageOptions(repo=str(repo), prs=[1, 3, 6], cache_dir=str(cache_dir), jobs=1))
    assert again["timing"]["audited"] == 0 and again["timing"]["from_cache"] == 2
    assert verdicts(again) == verdicts(first)
    more = triage(TriageOptions(repo=str(repo), prs=[1, 3, 4, 6, 8], cache_dir=str(cache_dir), jobs=1))
    # PR 4 is new; PR 8's folder is PR 1's, byte for byte: a cache hit
    assert more["timing"]["audited"] == 1 and more["timing"]["from_cache"] == 3
    assert {r["pr"] for r in more["prs"] if not r.get("cached") and r["verdict"] != "not-audited"} == {4}
    # other options are other keys
    claims = triage(TriageOptions(repo=str(repo), prs=[1], claims=True, cache_dir=str(cache_dir), jobs=1))
    assert claims["timing"]["audited"] == 1


# ------------------------------------------------------------------ outputs
def test_cli_writes_the_three_outputs(repo, tmp_path):
    out = tmp_path / "out"
    code = cli_main(["triage", str(repo), "--prs", "1,2,6", "--claims", "--out", str(out), "--no-cache", "-q"])
    assert code == ExitCode.FINDINGS
    doc = json.loads((out / "triage.json").read_text())
    assert [r["pr"] for r in doc["prs"]] == [1, 2, 6]
    md = (out / "triage.md").read_text()
    assert md.index("Leaderboard candidates") < md.index("Flagged") < md.index("Not audited")
    assert "| 1 | #1 |" in md and "#2" in md.split("Flagged")[1] and "train-before-score (train_gpt.py:" in md
    page = (out / "index.html").read_text()
    assert "<svg" in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<link" not in page and "src=" not in page


def test_cli_usage_errors(tmp_path, repo):
    assert cli_main(["triage", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == ExitCode.USAGE
    assert cli_main(["triage", str(repo), "--prs", "x1", "--out", str(tmp_path / "o")]) == ExitCode.USAGE
    assert cli_main(["triage", str(repo), "--prs", "1", "--all"]) == ExitCode.USAGE
    # a scheduler nobody listens at: a usage error, no outputs
    pytest.importorskip("distributed")
    assert cli_main(["triage", str(repo), "--prs", "1", "--cluster", "tcp://127.0.0.1:9", "--out",
                     str(tmp_path / "o")]) == ExitCode.USAGE
    assert not (tmp_path / "o" / "triage.json").exists()


def test_progress_bar_counts_verdicts_and_eta():
    import io

    from harness.triage.cli import Progress

    buf = io.StringIO()
    bar = Progress(enabled=True, file=buf)
    bar.plan(3, 0, 3)
    for i, v in enumerate(["clean", "findings", "clean"], 1):
        bar.record({"verdict": v}, i, 3)
    bar.stop()
    out = buf.getvalue()
    assert "3/3" in out and "clean:2" in out and "findings:1" in out and "ETA" in out
    quiet = Progress(enabled=False)
    quiet.plan(1, 0, 1)
    quiet.record({"verdict": "clean"}, 1, 1)
    assert quiet.counts == {"clean": 1} and quiet._bar is None


class _InterruptAfterOne:
    """A runner that audits the first task, then is interrupted (Ctrl-C)."""

    def run(self, tasks):
        for task in tasks:
            yield task, audit_task(task)
            raise KeyboardInterrupt


def test_interrupted_run_reports_what_finished(repo, tmp_path):
    opts = TriageOptions(repo=str(repo), prs=[3, 4, 6, 7], cache_dir=str(tmp_path / "c"), keep_partial=True)
    doc = triage(opts, runner=_InterruptAfterOne())
    assert doc["interrupted"] is True
    recs = {r["pr"]: r for r in doc["prs"]}
    done = [n for n in (3, 4, 7) if recs[n]["verdict"] == "clean"]
    assert len(done) == 1, "one PR finished before the interrupt"
    for n in {3, 4, 7} - set(done):
        assert recs[n]["verdict"] == "not-audited"
        assert recs[n]["not_audited"] == ["the run was interrupted before this PR was audited"]
        assert recs[n]["folder"] == fake.FOLDERS[n]
    assert "interrupted" in render_markdown(doc)
    again = triage(TriageOptions(repo=str(repo), prs=[3, 4, 6, 7], cache_dir=str(tmp_path / "c"), jobs=1))
    assert again["timing"]["from_cache"] == 1 and again["timing"]["audited"] == 2
    with pytest.raises(KeyboardInterrupt):  # the API raises unless asked to keep what finished
        triage(TriageOptions(repo=str(repo), prs=[3, 4]), runner=_InterruptAfterOne())


def test_unknown_pr_is_not_audited(repo, tmp_path):
    doc = triage(TriageOptions(repo=str(repo), prs=[1, 4242], jobs=1))
    rec = {r["pr"]: r for r in doc["prs"]}[4242]
    assert rec["verdict"] == "not-audited" and "refs/pull/4242/head" in rec["not_audited"][0]


def test_markdown_orders_candidates_by_claimed_score():
    def rec(pr, bpb, verdict="clean", record=True):
        return {"pr": pr, "verdict": verdict, "record_claim": record, "claimed": {"val_bpb": bpb}, "folder": f"f{pr}",
                "blocking": [{"kind": "rule", "rule": "train-before-score", "rule_id": "GA001", "file": "t.py",
                              "line": 3}] if verdict == "findings" else [],
                "advisories": [], "not_audited": [], "other_folders": []}
    doc = {"prs": [rec(1, 1.2), rec(2, 1.1), rec(3, 0.9, "findings"), rec(4, 1.0, record=False), rec(5, None)],
           "main": "0" * 40, "tool": "golf-audit", "generated": "now", "options": {},
           "timing": {"audited": 5, "from_cache": 0, "wall_s": 1.0},
           "counts": {"clean": 4, "findings": 1}}
    assert [r["pr"] for r in leaderboard(doc)] == [2, 1]
    md = render_markdown(doc)
    board = md.split("### Leaderboard")[1].split("###")[0]
    assert board.index("#2") < board.index("#1") and "#3" not in board and "#4" not in board
    svg = score_plot(doc)
    assert svg.count('class="bar legal"') >= 1 and svg.count('class="bar flagged"') == 1
    assert "<script" not in svg
    page = render_html(doc)
    assert page.count("<script") == 2  # the data and the code, both inline


def test_placeholder_scores_are_not_claims(tmp_path):
    """Templates ship `"val_bpb": 0.0` or `-1`: no model scores that, so it is no record claim and
    must not top the leaderboard (the 10 best claims of the real backlog were such placeholders)."""
    from harness.triage.work import _submission

    (tmp_path / "submission.json").write_text(json.dumps({"val_bpb": 0.0, "val_loss": -1, "name": "x"}))
    sub = _submission(tmp_path)
    assert sub["val_bpb"] is None and sub["val_loss"] is None
    assert sub["val_bpb_placeholder"] == 0.0 and sub["val_loss_placeholder"] == -1
    (tmp_path / "submission.json").write_text(json.dumps({"val_bpb": 1.0712}))
    assert _submission(tmp_path)["val_bpb"] == 1.0712


# ------------------------------------------------------------------ workers that die
def crash_on(task: dict, pr: int) -> dict:
    """Test-only task: the worker process dies (os._exit) on PR `pr`; other PRs are audited."""
    if task["pr"] == pr:
        os._exit(17)
    return audit_task(task)


def crash_once(task: dict, marker_dir: str) -> dict:
    """Test-only task: dies the first time it meets a PR, audits it on the retry."""
    marker = Path(marker_dir) / f"pr{task['pr']}"
    if not marker.exists():
        marker.write_text("died here once\n")
        os._exit(17)
    return audit_task(task)


def hang_on(task: dict, pr: int) -> dict:
    """Test-only task: never finishes on PR `pr`."""
    if task["pr"] == pr:
        import time
        time.sleep(600)
    return audit_task(task)


def _run_with(repo: Path, prs: list[int], runner) -> dict:
    return triage(TriageOptions(repo=str(repo), prs=prs, jobs=2), runner=runner)


def test_local_pool_worker_lost_then_retry(repo, tmp_path):
    doc = _run_with(repo, [3, 4], LocalPool(2, fn=functools.partial(crash_on, pr=4)))
    recs = {r["pr"]: r for r in doc["prs"]}
    assert recs[3]["verdict"] == "clean" and recs[3]["attempts"] == 1
    assert recs[4]["verdict"] == "not-audited" and recs[4]["attempts"] == 2
    assert "worker lost" in recs[4]["not_audited"][0]
    doc = _run_with(repo, [3, 4], LocalPool(2, fn=functools.partial(crash_once, marker_dir=str(tmp_path))))
    assert all(r["verdict"] == "clean" and r["attempts"] == 2 for r in doc["prs"])


def test_local_pool_stops_a_task_that_does_not_finish(repo):
    import time
    t0 = time.monotonic()
    doc = _run_with(repo, [3, 4], LocalPool(2, fn=functools.partial(hang_on, pr=4), task_timeout=30))
    recs = {r["pr"]: r for r in doc["prs"]}
    assert recs[3]["verdict"] == "clean"
    assert recs[4]["verdict"] == "not-audited" and "did not finish in 30 s" in recs[4]["not_audited"][0]
    assert time.monotonic() - t0 < 120


# ------------------------------------------------------------------ Dask
@pytest.fixture(scope="module")
def dask_runner_factory():
    pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install '.[triage]')")
    import cloudpickle

    from harness.triage.pool import DaskRunner

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this test file
    runners = []

    def make(fn=None, workers=2):
        r = DaskRunner(None, workers=workers, fn=fn or audit_task)
        runners.append(r)
        return r
    yield make
    for r in runners:
        r.close()


def test_dask_localcluster_same_verdicts_as_local_pool(repo, local_doc, dask_runner_factory):
    runner = dask_runner_factory()
    doc = triage(TriageOptions(repo=str(repo), claims=True, cluster="dask-local", jobs=2), runner=runner)
    assert verdicts(doc) == verdicts(local_doc)
    assert len(runner.client.nthreads()) == 2, "two worker processes"
    workers = {r["worker"] for r in doc["prs"] if "worker" in r}
    assert all(":" in w for w in workers)
    strip = lambda d: {r["pr"]: ([b["rule"] for b in r["blocking"]], r["not_audited"]) for r in d["prs"]}  # noqa: E731
    assert strip(doc) == strip(local_doc)


def test_dask_worker_killed_mid_task_is_retried_once_then_lost(repo, dask_runner_factory, tmp_path):
    doc = _run_with(repo, [3, 4], dask_runner_factory(functools.partial(crash_on, pr=4)))
    recs = {r["pr"]: r for r in doc["prs"]}
    assert recs[3]["verdict"] == "clean"
    assert recs[4]["verdict"] == "not-audited" and recs[4]["attempts"] == 2
    assert recs[4]["not_audited"][0].startswith("not audited: worker lost")
    doc = _run_with(repo, [3, 4], dask_runner_factory(functools.partial(crash_once, marker_dir=str(tmp_path))))
    assert {r["pr"]: (r["verdict"], r["attempts"]) for r in doc["prs"]} == {3: ("clean", 2), 4: ("clean", 2)}


def test_dask_bystander_of_a_dead_worker_is_not_lost(repo, dask_runner_factory):
    """One worker holds both tasks; PR 4 kills it, and PR 3, sent to the same worker, gets
    KilledWorker too. Its retry runs alone, so it is audited, while PR 4 is lost on its own."""
    runner = dask_runner_factory(functools.partial(crash_on, pr=4), workers=1)
    doc = triage(TriageOptions(repo=str(repo), prs=[4, 3], jobs=1), runner=runner)
    recs = {r["pr"]: r for r in doc["prs"]}
    assert recs[3]["verdict"] == "clean"
    assert recs[4]["verdict"] == "not-audited" and recs[4]["attempts"] == 2
