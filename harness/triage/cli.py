"""`golf-audit triage REPO`: judge a backlog of pull requests from a clone of the challenge
repository (docs/triage.md).

    golf-audit triage REPO [--prs 713,1376 | --all] [--dynamic] [--claims]
                           [--cluster local|dask-local|ADDRESS] [--jobs N] [--out DIR]
                           [--cache-dir DIR | --no-cache] [--main REF] [--fail-on LEVEL] [--quiet]

Exit codes as golf-audit, over all PRs: 0 every PR clean, 1 a PR with blocking findings or
failed claims, 2 usage error (no outputs written), 3 a PR not audited or with unverified claims
and none flagged."""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from harness.core.findings import ExitCode
from harness.core.usage import UsageParser

DEFAULT_OUT = "golf-audit-triage"



def parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="golf-audit triage", description="Audit every pull request of a challenge clone "
                "(refs/pull/N/head) and write triage.json, triage.md and index.html.")
    p.add_argument("repo", help="a git clone of the challenge repository (bare is fine) with refs/pull/N/head")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--prs", metavar="N,N,...", help="these PRs (comma-separated; ranges like 700-720)")
    which.add_argument("--all", action="store_true", help="every PR with a refs/pull/N/head (the default)")
    p.add_argument("--dynamic", action="store_true", help="add the toy-scale run and the probes (sandboxed)")
    p.add_argument("--claims", action="store_true", help="add golf-eval verify (claims vs logs)")
    p.add_argument("--cluster", default="local", metavar="local|dask-local|ADDRESS",
                   help="local: a pool of worker processes (default); dask-local: a Dask LocalCluster; "
                        "else the address of a Dask scheduler (tcp://host:8786)")
    p.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                   help="workers for local / dask-local (default: cores; 1 with --dynamic)")
    p.add_argument("--task-timeout", type=float, default=None, metavar="S",
                   help="local pool: seconds one PR may take before its worker is stopped and the PR is "
                        "'not audited' (default 600; 3600 with --dynamic)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="result cache (default: as golf-audit, $XDG_CACHE_HOME/golf-audit or ./.golf-audit-cache)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--main", default="HEAD", metavar="REF", help="the challenge's main branch in the clone (default: HEAD)")
    p.add_argument("--fail-on", choices=["low", "medium", "high"], default="medium",
                   help="lowest finding severity that is blocking (default: medium)")
    p.add_argument("--timeout", type=int, default=None, metavar="S", help="dynamic: seconds per run")
    p.add_argument("--allow-weak-sandbox", action="store_true",
                   help="dynamic: without bubblewrap, run under `unshare -Urn` (writes NOT confined)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


def parse_prs(text: str) -> list[int]:
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        part = part.lstrip("#")
        if "-" in part:
            a, _, b = part.partition("-")
            if not (a.isdigit() and b.isdigit()) or int(a) > int(b):
                raise ValueError(f"bad PR range {part!r}")
            out.extend(range(int(a), int(b) + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            raise ValueError(f"not a PR number: {part!r}")
    if not out:
        raise ValueError("--prs lists no PR")
    return sorted(set(out))


class Progress:
    """A rich progress bar on stderr: done/total, a count per verdict, the ETA."""

    def __init__(self, enabled: bool, file=None):
        self.enabled = enabled
        self.file = file  # default: stderr
        self.counts: dict[str, int] = {}
        self._bar = None
        self._task = None

    def plan(self, total: int, done: int, to_audit: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
            TimeElapsedColumn, TimeRemainingColumn

        self._bar = RichProgress(TextColumn("triage"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(stderr=self.file is None, file=self.file,
                                                 force_terminal=True if self.file is not None else None),
                                 transient=False)
        self._bar.start()
        self._task = self._bar.add_task("triage", total=total, completed=0,
                                        counts=f"({to_audit} to audit, {done} known)")

    def record(self, rec: dict, done: int, total: int) -> None:
        self.counts[rec["verdict"]] = self.counts.get(rec["verdict"], 0) + 1
        if self._bar is not None:
            from harness.triage.work import VERDICTS

            text = " ".join(f"{v}:{self.counts[v]}" for v in VERDICTS if self.counts.get(v))
            self._bar.update(self._task, advance=1, counts=text)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def main_triage(argv: list[str]) -> int:
    """The `golf-audit triage` subcommand; returns the exit code, never raises."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    from harness import cache
    from harness.core.findings import worst_exit
    from harness.triage.gitsource import GitError, git_dir
    from harness.triage.pool import ClusterError
    from harness.triage.report import write_all
    from harness.triage.run import TriageOptions, triage
    from harness.triage.work import CLEAN, FLAGGED

    try:
        prs = parse_prs(args.prs) if args.prs else None
        if args.jobs is not None and args.jobs < 1:
            raise ValueError("--jobs must be at least 1")
        git_dir(args.repo)
    except (ValueError, GitError) as exc:
        print(f"golf-audit triage: usage error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"golf-audit triage: usage error: cannot write to --out {out}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.USAGE
    cache_dir = None if args.no_cache else (args.cache_dir or str(cache.default_dir(Path.cwd())))
    opts = TriageOptions(repo=args.repo, prs=prs, main=args.main, dynamic=args.dynamic, claims=args.claims,
                         fail_on=args.fail_on, timeout=args.timeout, allow_weak_sandbox=args.allow_weak_sandbox,
                         cache_dir=cache_dir, cluster=args.cluster, jobs=args.jobs, task_timeout=args.task_timeout,
                         keep_partial=True)
    progress = Progress(enabled=not args.quiet and sys.stderr.isatty())
    try:
        doc = triage(opts, on_record=progress.record, on_plan=progress.plan)
    except (GitError, ClusterError) as exc:
        progress.stop()
        print(f"golf-audit triage: usage error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:  # before the audits started (discovery, the workers' start)
        progress.stop()
        print("golf-audit triage: interrupted (no outputs written)", file=sys.stderr)
        return ExitCode.NOT_AUDITABLE
    except Exception as exc:  # noqa: BLE001 - never a bare traceback
        progress.stop()
        if args.debug:
            traceback.print_exc()
        print(f"golf-audit triage: internal error: {type(exc).__name__}: {exc} (run with --debug)", file=sys.stderr)
        return ExitCode.NOT_AUDITABLE
    progress.stop()
    paths = write_all(doc, out)
    codes = [ExitCode.CLEAN if r["verdict"] == CLEAN else ExitCode.FINDINGS if r["verdict"] in FLAGGED
             else ExitCode.NOT_AUDITABLE for r in doc["prs"]]
    code = worst_exit(codes) if codes else ExitCode.NOT_AUDITABLE
    if doc.get("interrupted"):
        print("golf-audit triage: interrupted: the PRs not yet audited are reported as not audited; what "
              "finished is cached, so the same command goes on from there", file=sys.stderr)
    if not args.quiet:
        counts = ", ".join(f"{v} {n}" for v, n in doc["counts"].items() if n)
        t = doc["timing"]
        print(f"golf-audit triage: {len(doc['prs'])} PRs ({counts}); {t['audited']} audited, "
              f"{t['from_cache']} from cache, {t['wall_s']:.1f} s; wrote {', '.join(str(p) for p in paths)}",
              file=sys.stderr)
    return code
