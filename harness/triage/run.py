"""`golf-audit triage`: every pull request of a challenge clone through the audit, with a
content cache, on a local pool or a Dask cluster. The command line is `harness.triage.cli`; the
outputs are `harness.triage.report`.

Flow: discover each PR's folder (`gitsource.discover`, git plumbing only) -> key each folder by
content (`harness.cache.digest_key`: golf-audit's version and code, the options, and every file's
path and git blob id) -> records in the cache are reused -> the rest become tasks carrying the
folder's bytes (read with one `git cat-file --batch`), run largest first on the runner, their
records streamed back and stored as they finish. PRs with identical folders are audited once."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness import __version__, cache
from harness.triage.gitsource import CatFile, PRSource, discover, git, git_dir
from harness.triage.work import NOT_AUDITED, VERDICTS, base_record, code_digest, verdict_of

SCHEMA = "golf-audit-triage/1"
# bump when the record layout or the way a verdict is reached changes: old cache entries go stale
RECORD_VERSION = 1
PR_FIELDS = ("pr", "folder", "other_folders", "how", "commit", "note")


@dataclass
class TriageOptions:
    repo: str
    prs: list[int] | None = None  # None = every refs/pull/N/head
    main: str = "HEAD"
    dynamic: bool = False
    claims: bool = False
    fail_on: str = "medium"
    timeout: int | None = None  # dynamic: seconds per run
    allow_weak_sandbox: bool = False
    cache_dir: str | None = None  # None = no cache
    cluster: str = "local"  # local | dask-local | a scheduler address
    jobs: int | None = None  # local pool / LocalCluster workers (None: cores; 1 with --dynamic)
    task_timeout: float | None = None  # local pool: seconds one PR may take (None: 600 static, 3600 dynamic)
    keep_partial: bool = False  # on Ctrl-C, return what finished (the rest not audited) instead of raising
    extra: dict[str, Any] = field(default_factory=dict)

    def audit_options(self) -> dict[str, Any]:
        """The options of `harness.audit.audit_one` (the keys of audit_paths' DEFAULT_OPTIONS)."""
        from harness.audit import DEFAULT_OPTIONS

        opts = {k: v for k, v in DEFAULT_OPTIONS.items() if k not in ("cache_dir", "jobs")}
        opts.update({"dynamic": self.dynamic, "timeout": self.timeout, "allow_weak_sandbox": self.allow_weak_sandbox})
        return opts

    def workers(self) -> int:
        if self.jobs:
            return self.jobs
        return 1 if self.dynamic else (os.cpu_count() or 1)


def key_options(opts: TriageOptions, folder: str, missing: list[str], skipped: list[str]) -> dict[str, Any]:
    return {"triage": RECORD_VERSION, "folder": folder, "audit": opts.audit_options(), "claims": opts.claims,
            "fail_on": opts.fail_on, "missing": sorted(missing), "skipped": sorted(skipped)}


def rel_in(folder: str, path: str) -> str:
    return path[len(folder) + 1:] if folder else path


def load_record(cache_dir: str | None, key: str) -> dict | None:
    if not cache_dir:
        return None
    try:
        data = json.loads((Path(cache_dir) / f"{key}.triage.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("record_version") == RECORD_VERSION else None


def store_record(cache_dir: str | None, key: str, record: dict) -> None:
    if not cache_dir:
        return
    try:
        d = Path(cache_dir)
        d.mkdir(parents=True, exist_ok=True)
        payload = {k: v for k, v in record.items() if k not in PR_FIELDS}
        payload["record_version"] = RECORD_VERSION
        tmp = d / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        tmp.replace(d / f"{key}.triage.json")
    except OSError:
        pass  # a cache that cannot be written only costs time


def cacheable(record: dict) -> bool:
    """Not a result that could change on a re-run: an internal error, a lost worker, a dynamic
    layer that could not complete (as `harness.audit` decides for its own cache)."""
    return not record.get("transient")


def with_pr(record: dict, src: PRSource) -> dict:
    out = dict(record)
    out.update({"pr": src.number, "folder": src.folder, "other_folders": list(src.other_folders),
                "how": src.how, "commit": src.commit, "note": src.note})
    out.pop("record_version", None)
    return out


def unfound_record(src: PRSource) -> dict:
    rec = base_record({"pr": src.number, "folder": None, "other_folders": src.other_folders, "how": src.how,
                       "commit": src.commit, "note": src.note})
    rec["not_audited"].append(src.reason)
    rec["verdict"] = verdict_of(rec)
    return rec


def make_runner(opts: TriageOptions, fn: Callable | None = None):
    from harness.triage.pool import DaskRunner, LocalPool
    from harness.triage.work import audit_task

    fn = fn or audit_task
    if opts.cluster in ("local", "", None):
        timeout = opts.task_timeout or (3600 if opts.dynamic else 600)
        return LocalPool(opts.workers(), fn=fn, task_timeout=timeout)
    if opts.cluster == "dask-local":
        return DaskRunner(None, workers=opts.workers(), fn=fn)
    return DaskRunner(opts.cluster, fn=fn)


def triage(opts: TriageOptions, on_record: Callable[[dict, int, int], None] | None = None,
           on_plan: Callable[[int, int, int], None] | None = None, runner=None) -> dict[str, Any]:
    """Run the triage; returns the triage document (schema golf-audit-triage/1)."""
    t0, c0 = time.perf_counter(), time.process_time()
    repo = git_dir(opts.repo)
    main_commit = git(repo, "rev-parse", "--verify", f"{opts.main}^{{commit}}").decode().strip()
    records: dict[int, dict] = {}
    audited = 0
    with CatFile(repo) as cat:
        sources = discover(repo, opts.prs, main_commit, cat=cat)
        t_discover = time.perf_counter() - t0
        sizes = cat.sizes([e.oid for s in sources for e in s.files])
        groups: dict[str, list[PRSource]] = {}
        plans: dict[str, dict] = {}
        for s in sources:
            if s.reason or s.folder is None:
                records[s.number] = unfound_record(s)
                continue
            folder = s.folder
            missing = [rel_in(folder, e.path) for e in s.files if sizes.get(e.oid) is None]
            skipped = [rel_in(folder, p) for p in s.skipped]
            entries = sorted((rel_in(folder, e.path), e) for e in s.files)
            key = cache.digest_key(((rel, bytes.fromhex(e.oid)) for rel, e in entries),
                                   key_options(opts, folder, missing, skipped))
            hit = load_record(opts.cache_dir, key)
            if hit is not None:
                rec = with_pr(hit, s)
                rec["cached"] = True
                records[s.number] = rec
                continue
            if key not in groups:
                plans[key] = {"folder": folder, "entries": entries, "missing": missing, "skipped": skipped,
                              "py_bytes": sum(sizes.get(e.oid) or 0 for rel, e in entries if rel.endswith(".py"))}
            groups.setdefault(key, []).append(s)
        total = len(sources)
        done = len(records)
        if on_plan:
            on_plan(total, done, len(groups))
        for rec in sorted(records.values(), key=lambda r: r["pr"]):
            if on_record:
                on_record(rec, 0, total)
        digest = code_digest()
        audit_opts = opts.audit_options()

        def tasks():
            # largest Python first: the long audits start early, the short ones fill in
            for key in sorted(plans, key=lambda k: -plans[k]["py_bytes"]):
                plan, first = plans[key], groups[key][0]
                files = []
                for rel, e in plan["entries"]:
                    if rel in plan["missing"]:
                        continue
                    obj = cat.read(e.oid)
                    if obj is None:
                        plan["missing"].append(rel)
                        continue
                    files.append((rel, obj[1]))
                yield {"pr": first.number, "key": key, "folder": plan["folder"], "files": files,
                       "missing": plan["missing"], "skipped": plan["skipped"], "options": audit_opts,
                       "claims": opts.claims, "fail_on": opts.fail_on, "code_digest": digest,
                       "other_folders": first.other_folders, "how": first.how, "commit": first.commit,
                       "note": first.note}

        own_runner = runner is None
        runner = runner or make_runner(opts)
        t_audit = time.perf_counter()
        interrupted = False
        try:
            for task, rec in runner.run(tasks()):
                audited += 1
                if cacheable(rec):
                    store_record(opts.cache_dir, task["key"], rec)
                for s in groups[task["key"]]:
                    out = with_pr(rec, s)
                    if s.number != task["pr"]:
                        out["same_as"] = task["pr"]
                    records[s.number] = out
                    done += 1
                    if on_record:
                        on_record(out, done, total)
        except KeyboardInterrupt:
            if not opts.keep_partial:
                raise
            interrupted = True  # what finished is reported (and cached); the rest is not audited
        finally:
            if own_runner and hasattr(runner, "close"):
                runner.close()
    missing_prs = [s.number for s in sources if s.number not in records]
    for n in missing_prs:  # never silently dropped
        src = next(s for s in sources if s.number == n)
        rec = with_pr(base_record({"pr": n}), src)
        rec["not_audited"].append("the run was interrupted before this PR was audited" if interrupted
                                  else "internal error: no result came back for this PR")
        rec["verdict"] = NOT_AUDITED
        records[n] = rec
    ordered = [records[n] for n in sorted(records)]
    counts = {v: sum(1 for r in ordered if r["verdict"] == v) for v in VERDICTS}
    return {
        "schema": SCHEMA,
        "tool": f"golf-audit {__version__}",
        "code_digest": code_digest()[:16],
        "repo": str(opts.repo),
        "main": main_commit,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "options": {"prs": "all" if opts.prs is None else opts.prs, "dynamic": opts.dynamic, "claims": opts.claims,
                    "fail_on": opts.fail_on, "cluster": opts.cluster,
                    "runner": runner.describe() if hasattr(runner, "describe") else str(runner),
                    "cache": bool(opts.cache_dir)},
        "timing": {"wall_s": round(time.perf_counter() - t0, 2), "discover_s": round(t_discover, 2),
                   "audit_s": round(time.perf_counter() - t_audit, 2), "audited": audited,
                   # CPU of this process (discovery, reading blobs, keys, cache) and of the audits
                   "client_cpu_s": round(time.process_time() - c0, 2),
                   "audit_cpu_s": round(sum(r.get("cpu_s") or 0 for r in ordered if not r.get("cached")
                                            and not r.get("same_as")), 2),
                   "from_cache": sum(1 for r in ordered if r.get("cached"))},
        "counts": counts,
        "interrupted": interrupted,
        "prs": ordered,
    }
