"""golf-eval: check a submission's claims against its logs (verify) or by re-running it (reproduce).

Exit codes (harness.core.findings.ExitCode): 0 every claim holds, 1 a claim fails, 2 usage error,
3 something could not be verified (1 outranks 3).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from harness.core.findings import ExitCode

FORMATS = ("text", "json", "markdown")


def _add_verify_options(p: argparse.ArgumentParser) -> None:
    rec = p.add_mutually_exclusive_group()
    rec.add_argument("--sota-bpb", type=float, metavar="X",
                     help="the record's val_bpb (one number: one-sample t-test)")
    rec.add_argument("--sota-logs", type=Path, metavar="DIR2",
                     help="the record's folder (its per-seed logs: Welch t-test)")
    p.add_argument("--margin-nats", type=float, default=0.005, help="required improvement, nats/token (0.005)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level (0.01)")
    p.add_argument("--size-cap", type=int, default=16_000_000, help="artifact cap in bytes, decimal (16000000)")
    p.add_argument("--train-cap-s", type=float, default=600.0)
    p.add_argument("--eval-cap-s", type=float, default=600.0)
    p.add_argument("--train-slack-s", type=float, default=1.0,
                   help="allowance over --train-cap-s for the step in flight at the wallclock cap (1.0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="golf-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument("--output", "-o", type=Path, help="write the report here instead of stdout")
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="check a submission folder's claims against its logs")
    v.add_argument("dir", type=Path)
    v.add_argument("--format", choices=FORMATS, default=argparse.SUPPRESS)
    v.add_argument("--output", "-o", type=Path, default=argparse.SUPPRESS)
    v.add_argument("--brief", action="store_true", help="text format: tables only, no per-phase details")
    _add_verify_options(v)

    r = sub.add_parser("reproduce", help="re-run the submission per seed, then verify the fresh logs")
    r.add_argument("dir", type=Path)
    r.add_argument("--format", choices=FORMATS, default=argparse.SUPPRESS)
    r.add_argument("--output", "-o", type=Path, default=argparse.SUPPRESS)
    r.add_argument("--seeds", type=int, nargs="+", default=[42, 1337, 2024])
    r.add_argument("--nproc", type=int, default=None, help="processes per node (8; --toy: 2)")
    r.add_argument("--data", type=Path, help="dataset folder (DATA_PATH)")
    r.add_argument("--tokenizer", type=Path, help="tokenizer model (TOKENIZER_PATH)")
    r.add_argument("--toy", action="store_true",
                   help="CPU run with toy data and the dynamic harness's shims (gloo, 2 processes); shows the "
                        "pipeline works, cannot verify 8xH100 claims: always exits 3")
    r.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the run (repeatable; wins over README/log values)")
    r.add_argument("--script", help="entry script in the folder (default: detected train*.py)")
    r.add_argument("--timeout", type=float, default=None, help="per-seed timeout in seconds (--toy: 300)")
    r.add_argument("--scratch", type=Path, help="where to make the scratch copies (default: a temp dir)")
    r.add_argument("--keep", action="store_true", help="keep the scratch copies")
    r.add_argument("--no-live", action="store_true", help="no progress display / live log tail")
    r.add_argument("--allow-weak-sandbox", action="store_true",
                   help="--toy without bubblewrap: run under `unshare -Urn` (writes NOT confined; the report "
                        "warns) instead of refusing with exit 3")
    _add_verify_options(r)
    return parser


def _verify_options(args: argparse.Namespace):
    from harness.evaluation.verify_report import UsageError, VerifyOptions

    if args.alpha <= 0 or args.alpha >= 1:
        raise UsageError("--alpha must be in (0, 1)")
    if args.margin_nats < 0:
        raise UsageError("--margin-nats must be ≥ 0")
    return VerifyOptions(sota_bpb=args.sota_bpb, sota_logs=args.sota_logs, margin_nats=args.margin_nats,
                         alpha=args.alpha, size_cap_bytes=args.size_cap, train_cap_s=args.train_cap_s,
                         eval_cap_s=args.eval_cap_s, train_slack_s=args.train_slack_s)


def _emit(args: argparse.Namespace, render_text, render_json, render_md) -> None:
    out_path: Path | None = getattr(args, "output", None)
    if args.format == "json":
        text = render_json()
    elif args.format == "markdown":
        text = render_md()
    else:
        if out_path is None:
            render_text(Console(highlight=False, width=None if sys.stdout.isatty() else 140))
            return
        console = Console(record=True, width=140, file=open("/dev/null", "w"))
        render_text(console)
        text = console.export_text()
    if out_path is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        out_path.write_text(text, encoding="utf-8")


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.evaluation.claims import verify
    from harness.evaluation.verify_report import UsageError
    from harness.reports.verify import render_verify_text, verify_json, verify_markdown

    if not args.dir.is_dir():
        raise UsageError(f"not a folder: {args.dir}")
    rep = verify(args.dir, _verify_options(args))
    _emit(args, lambda c: render_verify_text(rep, c, verbose=not args.brief),
          lambda: verify_json(rep), lambda: verify_markdown(rep))
    return int(rep.exit_code())


def cmd_reproduce(args: argparse.Namespace) -> int:
    from harness.evaluation.verify_report import UsageError
    from harness.evaluation.capture import ReproduceOptions
    from harness.evaluation.reproduce import SandboxRefused, parse_env_pairs, reproduce
    from harness.reports.reproduce import render_reproduce_text, reproduce_json, reproduce_markdown

    if not args.dir.is_dir():
        raise UsageError(f"not a folder: {args.dir}")
    if not args.toy and (args.data is None or args.tokenizer is None):
        raise UsageError("reproduce needs --data and --tokenizer (or --toy)")
    opts = ReproduceOptions(
        seeds=args.seeds, nproc=args.nproc if args.nproc is not None else (2 if args.toy else 8),
        data=args.data, tokenizer=args.tokenizer, toy=args.toy, env=parse_env_pairs(args.env),
        script=args.script, timeout_s=args.timeout, scratch=args.scratch, keep=args.keep,
        live=not args.no_live and args.format == "text" and sys.stdout.isatty(),
        verify=_verify_options(args), allow_weak_sandbox=args.allow_weak_sandbox,
    )
    try:
        rep = reproduce(args.dir, opts, console=Console(stderr=True, highlight=False))
    except SandboxRefused as exc:
        print(f"golf-eval: not audited: {exc}", file=sys.stderr)
        return int(ExitCode.NOT_AUDITABLE)
    _emit(args, lambda c: render_reproduce_text(rep, c), lambda: reproduce_json(rep),
          lambda: reproduce_markdown(rep))
    return int(rep.exit_code())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help is 0, bad usage is 2
        return int(e.code or 0) if isinstance(e.code, int) else int(ExitCode.USAGE)
    from harness.evaluation.verify_report import UsageError

    try:
        if args.command == "verify":
            return cmd_verify(args)
        return cmd_reproduce(args)
    except UsageError as e:
        print(f"golf-eval: usage error: {e}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        print("golf-eval: interrupted", file=sys.stderr)
        return int(ExitCode.NOT_AUDITABLE)
    except Exception as e:  # never a traceback for bad input: say what failed, exit 3
        print(f"golf-eval: could not verify: {type(e).__name__}: {e}", file=sys.stderr)
        return int(ExitCode.NOT_AUDITABLE)


if __name__ == "__main__":
    sys.exit(main())
