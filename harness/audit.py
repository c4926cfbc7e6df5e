"""The audit service: one folder through the layers it asks for, many folders through the
content-hash cache and a process pool. The `golf-audit` command line, the CI gate and the
pre-commit hook all call `audit_paths`; none of them audits a folder any other way."""
from __future__ import annotations

import os
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from harness import cache
from harness.core.findings import AuditResult, Layer, NotAudited
from harness.core.registry import all_rules
from harness.core.serialize import merge_results
from harness.fusion import fuse


def audit_one(target: str, options: dict) -> AuditResult:
    """Audit one folder or file with the layers `options` asks for. Never raises."""
    path = Path(target)
    if not path.exists():
        return AuditResult(target=target, not_audited=[NotAudited(target, "no such file or directory")])
    rule_names = options.get("rules")
    rules = [r for r in all_rules() if rule_names is None or r.name in rule_names]
    parts: list[AuditResult] = []
    try:
        static = dynamic = None
        if not options.get("no_static"):
            from harness.static.audit import audit_folder_static
            static = audit_folder_static(path, env=options.get("env") or {}, rules=rules)
            parts.append(static)
        if options.get("dynamic") or options.get("no_static"):
            dynamic = _dynamic(path, options, static)
            parts.append(dynamic)
        fuse(static, dynamic)
    except Exception as exc:  # noqa: BLE001 - a crash is "not audited", never a traceback or a pass
        detail = traceback.format_exc()
        parts.append(AuditResult(target=target, not_audited=[
            NotAudited(target, f"internal error: {type(exc).__name__}: {exc}", detail=detail)]))
    result = merge_results(*parts) if parts else AuditResult(target=target)
    result.target = target
    wanted = {r.name for r in rules}
    result.findings = [f for f in result.findings if f.rule in wanted]
    return result


def _dynamic(path: Path, options: dict, static: AuditResult | None) -> AuditResult:
    try:
        from harness.dynamic.audit import run_dynamic
    except Exception as exc:  # noqa: BLE001 - never pass silently: the layer asked for did not run
        return AuditResult(target=str(path), layers_run=[], not_audited=[NotAudited(
            str(path), f"dynamic layer unavailable: {type(exc).__name__}: {exc}", layer=Layer.TRACE)])
    env = dict(options.get("env") or {})
    if static is not None:
        # run the configuration in which the static findings are reachable (e.g. TTT_ENABLED=1);
        # flags given on the command line win
        for f in static.active_findings:
            if f.reachable:
                env = {**f.flags, **env}
    dyn_opts = {"env": env, "static_first": static is not None, "nproc": options.get("nproc", 1),
                "exhaustive": options.get("exhaustive", False),
                "allow_network": options.get("allow_network", False),
                "allow_weak_sandbox": options.get("allow_weak_sandbox", False),
                "blackbox": options.get("blackbox", "auto")}
    for key in ("probe_budget", "blackbox_budget"):
        if options.get(key) is not None:
            dyn_opts[key] = options[key]
    if options.get("timeout") is not None:
        dyn_opts["timeout_s"] = options["timeout"]
    return run_dynamic(path, dyn_opts)


def _cache_key(target: str, options: dict) -> str | None:
    if not options.get("cache_dir") or not Path(target).exists():
        return None
    # the target as given is part of the key: reports quote it (and not-audited paths)
    keyed = {k: v for k, v in options.items() if k not in ("cache_dir", "jobs")}
    try:
        return cache.content_key(Path(target), {**keyed, "target": target})
    except OSError:
        return None


def _audit_and_store(target: str, options: dict, key: str | None) -> AuditResult:
    result = audit_one(target, options)
    # runs that could not complete are not cached: the cause may be transient (a crash, a
    # timeout, a dynamic layer that could not start); a static parse failure is deterministic
    transient = any("internal error" in n.reason or n.layer != Layer.STATIC for n in result.not_audited)
    if key and not transient:
        cache.store(Path(options["cache_dir"]), key, result)
    return result


# What `audit_paths` accepts; keys left out take these values (so the CLI and other tools that
# ask for the same audit share cache entries).
DEFAULT_OPTIONS: dict = {
    "env": {},  # flags the submission runs with, on top of those its README/logs claim
    "rules": None,  # rule names to keep (None = all)
    "dynamic": False,  # add the dynamic layer (tracer + probes at toy scale)
    "no_static": False,  # dynamic layer only
    "nproc": 1, "exhaustive": False, "probe_budget": None, "blackbox_budget": None, "timeout": None, "allow_network": False,
    "allow_weak_sandbox": False,  # dynamic: without bubblewrap, run under `unshare` (writes not confined)
    "blackbox": "auto",  # the black-box code-length probe: auto / always / off
    "cache_dir": None,  # None = no cache
    "jobs": None,  # folders in parallel (None = cores)
}


def audit_paths(paths: list[str], options: dict | None = None) -> list[AuditResult]:
    """Audit several folders (or .py files), in parallel across cores, through the content-hash
    cache; results in the order of `paths`. Never raises for a bad folder: it is NotAudited.
    `options`: see DEFAULT_OPTIONS; unknown keys are an error (a typo would silently change nothing)."""
    unknown = set(options or {}) - set(DEFAULT_OPTIONS)
    if unknown:
        raise ValueError(f"audit_paths: unknown option(s) {sorted(unknown)}")
    options = {**DEFAULT_OPTIONS, **(options or {})}
    if options["rules"] is not None:
        options["rules"] = sorted(options["rules"])
    paths = [str(p) for p in paths]
    # cache hits are read here; only the misses go to worker processes
    keys = [_cache_key(p, options) for p in paths]
    results: list[AuditResult | None] = [
        cache.load(Path(options["cache_dir"]), k) if k else None for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    jobs = options.get("jobs") or os.cpu_count() or 1
    # dynamic audits run torch subprocesses themselves: one at a time
    if options.get("dynamic") or options.get("no_static"):
        jobs = 1
    jobs = max(1, min(jobs, len(todo)))
    if jobs == 1:
        fresh = [_audit_and_store(paths[i], options, keys[i]) for i in todo]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            fresh = list(pool.map(_audit_and_store, [paths[i] for i in todo], [options] * len(todo),
                                  [keys[i] for i in todo]))
    for i, result in zip(todo, fresh):
        results[i] = result
    return results  # type: ignore[return-value]
