"""`golf-audit`: audit Parameter Golf submission folders.

    golf-audit [options] PATH...        audit folders (or single .py files)
    golf-audit rules                    list the rules
    golf-audit explain NAME|ID          print a rule's documentation
    golf-audit ci --base REF ...        the pull-request gate (harness.ci.gate)
    golf-audit triage REPO ...          every PR of a challenge clone (harness.triage)

Exit codes: 0 clean at --fail-on, 1 findings, 2 usage error, 3 not auditable (1 outranks 3).
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from harness import __version__, cache
from harness.audit import audit_paths
from harness.core.config import Config, ConfigError, load_config
from harness.core.findings import ExitCode, Severity, worst_exit
from harness.core.rule import Rule
from harness.core.registry import all_rules, rule_by_name
from harness.core.usage import UsageParser


class UsageError(Exception):
    pass



def _env_pairs(values: list[str]) -> dict[str, str]:
    env = {}
    for item in values or []:
        if "=" not in item or not item.split("=", 1)[0]:
            raise UsageError(f"--env takes KEY=VALUE, not {item!r}")
        key, value = item.split("=", 1)
        env[key] = value
    return env


EPILOG = """\
subcommands:
  golf-audit rules               list the rules
  golf-audit explain NAME|ID     print a rule's documentation
  golf-audit ci --base REF       the pull-request gate
  golf-audit triage REPO         every pull request of a challenge clone (docs/triage.md)

exit codes:
  0  audited and clean at --fail-on
  1  findings (or an unused suppression); outranks 3
  2  usage or configuration error
  3  not auditable: missing path, parse failure, crash, timeout, a layer that could not run
"""


def audit_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="golf-audit", description="Audit Parameter Golf submissions for compliance.",
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("paths", nargs="+", help="submission folders (or .py files)")
    p.add_argument("--format", choices=["text", "json", "sarif", "markdown"], default=None,
                   help="report format (default: text, or `format` in [tool.golf-audit])")
    p.add_argument("--output", "-o", metavar="FILE", help="write the report here instead of stdout")
    p.add_argument("--fail-on", choices=["low", "medium", "high"], default=None,
                   help="lowest severity that makes the exit code 1 (default: medium)")
    p.add_argument("--select", action="append", default=[], metavar="RULES",
                   help="only these rules (names or ids, comma-separated; repeatable)")
    p.add_argument("--ignore", action="append", default=[], metavar="RULES", help="skip these rules")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VAL",
                   help="flags the submission runs with (repeatable)")
    p.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                   help="folders audited in parallel (default: cores)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="result cache (default: $XDG_CACHE_HOME/golf-audit, else ./.golf-audit-cache)")
    p.add_argument("--dynamic", action="store_true", help="also run the eval at toy scale under the tracer and probes")
    p.add_argument("--no-static", action="store_true", help="run only the dynamic layer (implies --dynamic)")
    p.add_argument("--nproc", type=int, default=1, metavar="N", help="dynamic: processes (torchrun, gloo)")
    p.add_argument("--exhaustive", action="store_true", help="dynamic: properness over the whole vocabulary")
    p.add_argument("--probe-budget", type=int, default=None, metavar="N", help="dynamic: extra runs of the causality probe at most")
    p.add_argument("--blackbox-budget", type=int, default=None, metavar="N",
                   help="dynamic: runs per layout of the black-box code-length probe (default 6: 4 candidates)")
    p.add_argument("--timeout", type=int, default=None, metavar="S", help="dynamic: seconds per run")
    p.add_argument("--blackbox", choices=["auto", "always", "off"], default="auto",
                   help="dynamic: the black-box code-length probe (auto: when the tracer saw no scores of the "
                        "claimed result, e.g. an eval in numpy)")
    p.add_argument("--unsafe-allow-network", action="store_true",
                   help="dynamic: run without a network namespace when none is available (reported)")
    p.add_argument("--allow-weak-sandbox", action="store_true",
                   help="dynamic: without bubblewrap, run under `unshare -Urn` (network blocked, writes NOT "
                        "confined; every report warns) instead of refusing with exit 3")
    p.add_argument("--sarif-root", default=None, metavar="DIR",
                   help="SARIF URIs are relative to this folder (default: cwd)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="text format: colour (auto: only on a terminal)")
    p.add_argument("--quiet", "-q", action="store_true", help="no report, exit code only")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    p.add_argument("--version", action="version", version=f"golf-audit {__version__}")
    return p


def select_rules(select: list[str], ignore: list[str]) -> list[Rule]:
    def names(values: list[str]) -> list[str]:
        return [v.strip() for item in values for v in item.split(",") if v.strip()]

    chosen = all_rules()
    sel, ign = names(select), names(ignore)
    for name in sel + ign:
        if rule_by_name(name) is None:
            raise UsageError(f"unknown rule {name!r} (see `golf-audit rules`)")
    if sel:
        wanted = {rule_by_name(n).name for n in sel}
        chosen = [r for r in chosen if r.name in wanted]
    if ign:
        dropped = {rule_by_name(n).name for n in ign}
        chosen = [r for r in chosen if r.name not in dropped]
    return chosen


# ------------------------------------------------------------------ commands
def cmd_rules(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    UsageParser(prog="golf-audit rules", description="List the rules.").parse_args(argv)
    table = Table(title="golf-audit rules")
    for col in ("id", "name", "severity", "confidence", "layers", "what it does"):
        table.add_column(col)
    for r in all_rules():
        table.add_row(r.id, r.name, r.severity.name.lower(), r.confidence.name.lower(),
                      ",".join(x.value for x in r.layers), r.summary.strip())
    # a terminal's own width; a pipe or file gets a fixed wide table (rich would assume 80)
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return ExitCode.CLEAN


def cmd_explain(argv: list[str]) -> int:
    p = UsageParser(prog="golf-audit explain", description="Print a rule's documentation.")
    p.add_argument("name")
    args = p.parse_args(argv)
    rule = rule_by_name(args.name)
    if rule is None:
        known = ", ".join(r.name for r in all_rules())
        print(f"golf-audit explain: unknown rule {args.name!r}; known rules: {known}", file=sys.stderr)
        return ExitCode.USAGE
    print(rule.documentation(), end="")
    return ExitCode.CLEAN


def cmd_ci(argv: list[str]) -> int:
    try:
        from harness.ci.gate import main_ci
    except ImportError as exc:
        print(f"golf-audit ci: not available: {exc}", file=sys.stderr)
        return ExitCode.NOT_AUDITABLE
    return main_ci(argv)


def cmd_triage(argv: list[str]) -> int:
    from harness.triage.cli import main_triage

    return main_triage(argv)


def cmd_audit(argv: list[str]) -> int:
    args = audit_parser().parse_args(argv)
    for target in args.paths:
        if target in COMMANDS and not Path(target).exists():
            raise UsageError(f"{target!r} is a subcommand: put it first (golf-audit {target} ...)")
    cfg: Config = load_config(Path.cwd())
    fail_on = Severity[(args.fail_on or cfg.fail_on).upper()]
    fmt = args.format or cfg.format
    if fmt not in ("text", "json", "sarif", "markdown"):
        raise UsageError(f"unknown format {fmt!r} in {cfg.source}")
    # the command line overrides the configuration: --select replaces `select`, --ignore `ignore`
    rules = select_rules(args.select or cfg.select, args.ignore or cfg.ignore)
    env = {**cfg.env, **_env_pairs(args.env)}
    for name, value, least in (("--jobs", args.jobs, 1), ("--nproc", args.nproc, 1),
                               ("--probe-budget", args.probe_budget, 0),
                               ("--blackbox-budget", args.blackbox_budget, 4), ("--timeout", args.timeout, 1)):
        if value is not None and value < least:
            raise UsageError(f"{name} must be at least {least}")
    options = {
        "env": env, "rules": [r.name for r in rules], "dynamic": args.dynamic or args.no_static,
        "no_static": args.no_static, "nproc": args.nproc, "exhaustive": args.exhaustive,
        "probe_budget": args.probe_budget, "blackbox_budget": args.blackbox_budget, "timeout": args.timeout, "blackbox": args.blackbox,
        "allow_network": args.unsafe_allow_network, "allow_weak_sandbox": args.allow_weak_sandbox, "jobs": args.jobs or cfg.jobs,
        "cache_dir": None if args.no_cache else (args.cache_dir or str(cache.default_dir(Path.cwd()))),
    }
    results = audit_paths(args.paths, options)
    code = worst_exit([r.exit_code(fail_on) for r in results])
    for target in args.paths:  # a missing argument is also said on stderr, whatever the format
        if not Path(target).exists():
            print(f"golf-audit: not auditable: {target}: no such file or directory", file=sys.stderr)
    if not args.quiet:
        from harness.reports import json_report, markdown, sarif, text

        if fmt == "text":
            color = args.color == "always" or (args.color == "auto" and args.output is None and sys.stdout.isatty())
            out = text.render(results, rules, fail_on, color=color)
        elif fmt == "json":
            out = json_report.render(results, rules, fail_on)
        elif fmt == "sarif":
            out = sarif.render(results, rules, fail_on, root=Path(args.sarif_root) if args.sarif_root else None)
        else:
            out = markdown.render(results, rules, fail_on)
        if args.output:
            try:
                Path(args.output).write_text(out, encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot write --output {args.output}: {exc.strerror or exc}") from None
        else:
            sys.stdout.write(out)
    return code


# Subcommands: the first word picks one; anything else is an audit of paths (audit a folder
# named like a subcommand as `./rules`). Adding a subcommand is one function and one entry here.
COMMANDS = {"rules": cmd_rules, "explain": cmd_explain, "ci": cmd_ci, "triage": cmd_triage}


def main(argv: list[str] | None = None) -> int:
    """The console script. Always returns an exit code (never raises, never a bare traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        code = _dispatch(argv, debug)
    except SystemExit as exc:  # argparse: --help/--version (0) and usage errors (2)
        code = exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    return int(code)


def _dispatch(argv: list[str], debug: bool) -> int:
    try:
        if argv and argv[0] in COMMANDS:
            code = COMMANDS[argv[0]](argv[1:])
        else:
            code = cmd_audit(argv)
    except (UsageError, ConfigError) as exc:
        print(f"golf-audit: usage error: {exc}", file=sys.stderr)
        code = ExitCode.USAGE
    except KeyboardInterrupt:
        print("golf-audit: interrupted", file=sys.stderr)
        code = ExitCode.NOT_AUDITABLE
    except Exception as exc:  # noqa: BLE001 - never a bare traceback
        if debug:
            traceback.print_exc()
        print(f"golf-audit: internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        code = ExitCode.NOT_AUDITABLE
    return code


if __name__ == "__main__":
    sys.exit(main())
