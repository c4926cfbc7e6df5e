"""`golf-eval verify`: check a submission folder's claims against its own logs.

Each check ends in one of: pass, fail (a claim is contradicted by the logs or breaks a budget),
unverified (the logs do not hold what the check needs), info (reported, not judged), and has a
tier (harness.evaluation.tiers): blocking (the challenge's rules) or advisory (submission format).
Exit: 1 if a blocking check fails, else 3 if a blocking check is unverified, else 0. Advisory
checks are listed and never change the exit code.

This module runs the checks and holds those on the claimed score; which logs and which result
line a claim is read from is in claim_logs.py, the size and time budgets in budgets.py, and what a
check reports (statuses, options, `VerifyReport`) in verify_report.py.
"""
from __future__ import annotations

import re
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from harness.evaluation.budgets import check_eval_time, check_sizes, check_train_time
from harness.evaluation.claim_logs import claimed_score_label, claimed_seeds, find_script, load_submission, \
    logs_matching_seed_claims, logs_of_claimed_seeds, number, per_seed_claims, pick_seed_logs, score_lines, \
    tolerance, train_info_log
from harness.evaluation.logs import ParsedLog, ResultLine, parse_folder_logs
from harness.evaluation.significance import one_sample_one_sided, welch_one_sided
from harness.evaluation.tiers import EXAMPLE_FIELDS, TIME_CHECKS, RuleSet, missing_readme_fields, rules_for, tier_of
from harness.evaluation.verify_report import FAIL, INFO, PASS, UNVERIFIED, Check, SeedRow, UsageError, \
    VerifyOptions, VerifyReport

REQUIRED_FIELDS = EXAMPLE_FIELDS  # kept for importers; what is required is in tiers.py


def verify(folder: Path, opts: VerifyOptions | None = None) -> VerifyReport:
    opts = opts or VerifyOptions()
    if not folder.is_dir():
        raise UsageError(f"not a folder: {folder}")
    rep = VerifyReport(target=str(folder))
    sub, sub_name, sub_err = load_submission(folder)
    rep.rules = rules_for(folder, sub, opts.track)
    all_logs = parse_folder_logs(folder)
    rep.logs_found = [lg.path for lg in all_logs]
    claim_logs, other_runs = logs_of_claimed_seeds(all_logs, sub)
    logs, rep.logs_skipped = pick_seed_logs(claim_logs, sub)
    rep.logs_skipped += other_runs

    _check_files(rep, folder, sub_name, sub_err, all_logs)
    _check_fields(rep, sub, rep.rules)

    claimed_bpb = number(sub.get("val_bpb")) if sub else None
    claimed_loss = number(sub.get("val_loss")) if sub else None
    loss_holds_bpb = False
    single: list[ResultLine] = []  # set when the claim is one run's score, not a mean
    label, matched, why = claimed_score_label(logs, claimed_bpb, single)
    if claimed_bpb is None and claimed_loss is not None:
        # Some submissions store the bpb under val_loss (PR #713): test that reading.
        single2: list[ResultLine] = []
        lb2, m2, why2 = claimed_score_label(logs, claimed_loss, single2)
        if m2:
            label, matched, why, loss_holds_bpb = lb2, True, why2 + " (value taken from val_loss)", True
            single = single2
    if not matched and claimed_bpb is not None:
        # submission.json may name a seed its log does not print (a default seed, a renamed run):
        # its per-seed scores then pick the logs, whatever seed the logs say.
        alt, alt_notes = logs_matching_seed_claims(all_logs, sub or {})
        if alt is not None and {lg.path for lg in alt} != {lg.path for lg in logs}:
            single3: list[ResultLine] = []
            lb3, m3, why3 = claimed_score_label(alt, claimed_bpb, single3)
            if m3:
                used = {lg.path for lg in alt}
                rep.logs_skipped = [f"{lg.path} (its score matches no per-seed claim of submission.json)"
                                    for lg in all_logs if lg.path not in used]
                logs, label, matched, single = alt, lb3, True, single3
                why = why3 + "; logs picked by submission.json's per-seed scores"
                rep.notes += alt_notes
    rep.score_label = label
    lines = score_lines(logs, label) if label else []
    train_logs = [train_info_log(lg, all_logs) for lg in logs]
    for lg, tl in zip(logs, train_logs):
        if tl is not lg:
            rep.notes.append(f"seed {lg.seed}: score from {lg.path}; training numbers from {tl.path}")
    for lg in all_logs:
        m = re.search(r"seed[_\-]?(\d+)", Path(lg.path).name, re.I)
        if m and lg.seed is not None and lg.seed_source != "file name" and int(m.group(1)) != lg.seed:
            rep.notes.append(f"{lg.path}: file name says seed {m.group(1)} but the log says seed {lg.seed} "
                             f"({lg.seed_source})")

    _check_score(rep, logs, label, matched, why, claimed_bpb, claimed_loss,
                 single if single else lines, loss_holds_bpb, claimed_seeds(sub or {}),
                 number(sub.get("bytes_total")) if sub else None)
    _check_per_seed(rep, logs, sub, label, train_logs)
    rep.seeds = [_seed_row(lg, label, tl) for lg, tl in zip(logs, train_logs)]
    check_sizes(rep, train_logs, sub, opts)
    check_train_time(rep, train_logs, opts, sub)
    check_eval_time(rep, logs, sub, opts)
    _check_significance(rep, logs, lines, opts)
    for lg in all_logs:
        if lg.missing:
            rep.notes.append(f"{lg.path}: not found in log: {', '.join(lg.missing)}")
    _assign_tiers(rep, opts)
    return rep


def _assign_tiers(rep: VerifyReport, opts: VerifyOptions) -> None:
    rules = rep.rules
    assert rules is not None
    record_given = opts.sota_bpb is not None or opts.sota_logs is not None
    for c in rep.checks:
        c.tier = tier_of(c.name, rules, record_given)
        if c.name in TIME_CHECKS and not rules.time_limits and c.status in (FAIL, UNVERIFIED, PASS):
            # The non-record track has no time limits (README "Non-record Submissions"): the
            # measured times are reported, not judged.
            c.status = INFO
            c.summary = f"no time limit on {rules.track} ({rules.track_source}); measured: {c.summary}"


def _check_files(rep: VerifyReport, folder: Path, sub_name: str, sub_err: str, logs: list[ParsedLog]) -> None:
    missing, evidence = [], []
    if not (folder / "README.md").is_file():
        missing.append("README.md")
    if sub_err == "no submission.json":
        missing.append("submission.json")
    elif sub_name != "submission.json":
        evidence.append(f"submission metadata is in {sub_name}, not submission.json")
    if not logs:
        missing.append("train log (no *.log/*.txt with step or result lines)")
    scripts = find_script(folder)
    if not scripts:
        missing.append("training script (train*.py)")
    else:
        evidence.append("script: " + ", ".join(p.name for p in scripts))
    evidence.append(f"{len(logs)} train log(s)")
    if missing:
        rep.checks.append(Check("required-files", FAIL, "missing: " + ", ".join(missing), evidence=evidence))
    else:
        rep.checks.append(Check("required-files", PASS, "README.md, submission.json, logs and script present",
                                evidence=evidence))


def _check_fields(rep: VerifyReport, sub: dict[str, Any] | None, rules: RuleSet) -> None:
    if sub is None:
        rep.checks.append(Check("submission-fields", FAIL, "no readable submission.json"))
        return
    required = missing_readme_fields(sub, rules)
    missing = [f for f in REQUIRED_FIELDS if f not in sub]
    evidence = [f"rules of {rules.date or 'today'} ({rules.date_source}): the README asks for your name, "
                "GitHub ID and val_bpb; the other fields follow the example runs"]
    date = sub.get("date")
    if date is not None and not re.match(r"^\d{4}-\d{2}-\d{2}", str(date)):
        evidence.append(f"date {date!r} is not YYYY-MM-DD")
    if missing or len(evidence) > 1:
        parts = []
        if required:
            parts.append("missing fields the README asks for: " + ", ".join(required))
        optional = [f for f in missing if not any(f in alts.split("/") for alts in required)]
        if optional:
            parts.append("missing fields of the example runs: " + ", ".join(optional))
        rep.checks.append(Check("submission-fields", FAIL, "; ".join(parts) or "malformed fields",
                                evidence=evidence + [f"fields present: {', '.join(sorted(sub))}"]))
    else:
        rep.checks.append(Check("submission-fields", PASS, "name, github_id, author, val_bpb, date, bytes_total present"))


def _check_score(rep, logs, label, matched, why, claimed_bpb, claimed_loss, lines, loss_holds_bpb,
                 seeds_claimed: list[str] | None = None, claimed_bytes: float | None = None) -> None:
    if not logs:
        rep.checks.append(Check("claimed-score", UNVERIFIED, "no train logs to compare with"))
        return
    if label is None:
        rep.checks.append(Check("claimed-score", UNVERIFIED, "no result line after training in the logs"))
        return
    evidence = [f"{lg.path}: " + (r.text if (r := lg.result_by_label(label)) else "(no such line)") for lg in logs]
    mean_bpb = mean(r.val_bpb for r in lines) if lines else None
    mean_loss = mean(r.val_loss for r in lines) if lines else None
    one_run = len(lines) == 1 and len(logs) > 1 and matched
    if len(lines) < len(logs) and not one_run:
        rep.checks.append(Check("claimed-score", UNVERIFIED, f"'{label}' is missing from some logs",
                                evidence=evidence))
    elif claimed_bpb is None and not loss_holds_bpb:
        rep.checks.append(Check("claimed-score", UNVERIFIED, f"no val_bpb claimed; final line '{label}'",
                                measured=mean_bpb, evidence=evidence))
    elif not matched and (absent := _claimed_seeds_without_log(logs, seeds_claimed or [])):
        # A mean over seeds whose logs are not in the folder cannot be contradicted by the logs
        # that are (they may be of another run): the claim is unverified, not false.
        rep.checks.append(Check("claimed-score", UNVERIFIED,
                                f"the claim is over seeds {', '.join(seeds_claimed or [])}; no log of seed(s) "
                                f"{', '.join(absent)} in the folder ({why})",
                                claimed=claimed_bpb, measured=mean_bpb, evidence=evidence))
    elif not matched and (other := _claimed_artifact_not_logged(logs, claimed_bytes)):
        # The claim is of an artifact the logs do not show (e.g. a re-quantisation run after the
        # logged one): the logs' scores are of another artifact and cannot contradict it.
        rep.checks.append(Check("claimed-score", UNVERIFIED, f"{why}; {other}",
                                claimed=claimed_bpb, measured=mean_bpb, evidence=evidence))
    else:
        claim = claimed_loss if loss_holds_bpb else claimed_bpb
        status = PASS if matched else FAIL
        rep.checks.append(Check("claimed-score", status,
                                f"claimed val_bpb {claim} comes from '{label}': {why}" if matched else why,
                                claimed=claim, measured=mean_bpb, evidence=evidence))
    # val_loss: must hold nats per token of the same line, not a bpb.
    which = "that run's" if len(lines) == 1 and len(logs) > 1 else "mean"
    if claimed_loss is not None and lines:
        tol_loss = tolerance(claimed_loss, lines, "val_loss")
        tol_bpb = tolerance(claimed_loss, lines, "val_bpb")
        if abs(claimed_loss - mean_loss) <= tol_loss:
            rep.checks.append(Check("val_loss-field", PASS, f"val_loss {claimed_loss} = {which} val_loss of '{label}'",
                                    claimed=claimed_loss, measured=mean_loss))
        elif abs(claimed_loss - mean_bpb) <= tol_bpb:
            rep.checks.append(Check("val_loss-field", FAIL,
                                    f"val_loss field holds a bpb value: {claimed_loss} is the mean val_bpb of "
                                    f"'{label}' ({mean_bpb:.6g}); the mean val_loss is {mean_loss:.6g} nats/token",
                                    claimed=claimed_loss, measured=mean_loss))
        else:
            # Some records put a different pass's loss here; find which, if any.
            other = _which_line(logs, claimed_loss, "val_loss")
            rep.checks.append(Check("val_loss-field", FAIL,
                                    f"val_loss {claimed_loss} ≠ {which} val_loss {mean_loss:.6g} of '{label}'"
                                    + (f"; it matches '{other}'" if other else ""),
                                    claimed=claimed_loss, measured=mean_loss))


def _claimed_artifact_not_logged(logs: list[ParsedLog], claimed_bytes: float | None) -> str:
    sizes = [lg.artifact.value for lg in logs if lg.artifact is not None]
    if claimed_bytes is None or not sizes or int(claimed_bytes) in sizes \
            or (len(sizes) > 1 and abs(claimed_bytes - mean(sizes)) <= 1.0):
        return ""
    return (f"submission.json bytes_total {int(claimed_bytes):,} is no logged artifact "
            f"({', '.join(f'{v:,}' for v in sizes)}): the claim is of an artifact these logs do not show")


def _claimed_seeds_without_log(logs: list[ParsedLog], seeds: list[str]) -> list[str]:
    have = {str(lg.seed) for lg in logs}
    return [s for s in seeds if s not in have]


def _which_line(logs: list[ParsedLog], value: float, which: str) -> str | None:
    labels = [r.label for r in logs[0].results if r.after_training] if logs else []
    for lb in dict.fromkeys(labels):
        lines = score_lines(logs, lb)
        if len(lines) == len(logs):
            m = mean(getattr(r, which) for r in lines)
            if abs(m - value) <= tolerance(value, lines, which):
                return lb
    return None


def _check_per_seed(rep: VerifyReport, logs: list[ParsedLog], sub: dict[str, Any] | None, label: str | None,
                    train_logs: list[ParsedLog]) -> None:
    claims = per_seed_claims(sub or {})
    if not claims or label is None:
        return
    bad, ok, evidence = [], 0, []
    by_seed = {str(lg.seed): lg for lg in logs}
    train_by_seed = {str(lg.seed): tl for lg, tl in zip(logs, train_logs)}
    for seed, vals in claims.items():
        lg = by_seed.get(seed)
        if lg is None:
            bad.append(f"seed {seed}: claimed in submission.json, no log")
            continue
        r = lg.result_by_label(label)
        for key in ("val_bpb", "val_loss"):
            if key in vals and r is not None:
                logged = getattr(r, key)
                tol = tolerance(vals[key], [r], key)
                if abs(vals[key] - logged) > tol:
                    bad.append(f"seed {seed}: {key} claimed {vals[key]} vs logged {logged} ('{label}')")
                else:
                    ok += 1
        art = train_by_seed[seed].artifact
        for key in ("artifact_bytes", "bytes_total"):
            if key in vals and art is not None:
                if int(vals[key]) != art.value:
                    bad.append(f"seed {seed}: {key} claimed {int(vals[key])} vs logged {art.value}")
                else:
                    ok += 1
    logged_seeds = {str(lg.seed) for lg in logs if lg.seed is not None}
    extra = sorted(logged_seeds - set(claims))
    if extra:
        evidence.append(f"seeds with logs but no per-seed claim: {', '.join(extra)}")
    status = FAIL if bad else PASS
    rep.checks.append(Check("per-seed-claims", status,
                            f"{len(bad)} per-seed claim(s) disagree with the logs" if bad
                            else f"{ok} per-seed number(s) agree with the logs",
                            evidence=bad + evidence))


def _seed_row(lg: ParsedLog, label: str | None, tl: ParsedLog | None = None) -> SeedRow:
    r = lg.result_by_label(label) if label else None
    tl = tl or lg
    detail = lg.train_time_source
    if lg.self_generated_calibration:
        detail += " (GPTQ on self-generated text not counted)"
    elif lg.post_gptq_total_s is not None:
        detail = "script's wallclock:post_gptq total (loop + GPTQ)"
    elif lg.post_loop_train_s:
        detail += f" + {lg.post_loop_train_s:.1f} s post-loop training-data pass (GPTQ calibration)"
    phases = [
        {"label": p.label, "status": p.status, "time_s": p.time_s, "lines": f"{p.first_line}-{p.last_line}",
         "aliases": p.aliases, "estimate_s": p.estimate_s, "estimate_kind": p.estimate_kind,
         "estimate_basis": p.estimate_basis, "markers": p.markers}
        for p in lg.phases
    ]
    art = tl.artifact
    return SeedRow(
        seed=lg.seed, log=lg.path, score_label=label if r else None,
        val_loss=r.val_loss if r else None, val_bpb=r.val_bpb if r else None,
        train_s=tl.train_total_s, train_detail=detail,
        eval_logged_s=lg.eval_logged_s, eval_phases=phases,
        eval_unmeasured=[p.label for p in lg.unmeasured_phases],
        eval_estimate_s=sum(p.estimate_s or 0.0 for p in lg.unmeasured_phases),
        artifact_bytes=art.value if art else None, artifact_label=art.label if art else "",
        code_bytes=tl.code_bytes, missing=lg.missing if tl is lg else sorted(set(lg.missing) & set(tl.missing)),
    )


def record_nats(folder: Path) -> tuple[list[float], str, list[str]]:
    """Per-seed val_loss (nats/token) of a record folder's claimed score line."""
    if not folder.is_dir():
        raise UsageError(f"--sota-logs: not a folder: {folder}")
    sub, _, _ = load_submission(folder)
    logs, _ = pick_seed_logs(parse_folder_logs(folder), sub)
    claimed = number(sub.get("val_bpb")) if sub else None
    label, matched, why = claimed_score_label(logs, claimed)
    if label is None:
        return [], "", [f"record folder {folder}: {why}"]
    lines = score_lines(logs, label)
    return [r.val_loss for r in lines], label, [f"record folder {folder}: '{label}' ({why})"]


def _check_significance(rep: VerifyReport, logs: list[ParsedLog], lines: list[ResultLine], opts: VerifyOptions) -> None:
    n = len({lg.seed for lg in logs})
    rep.checks.append(Check("seeds", INFO, f"{n} seed(s): " + ", ".join(str(lg.seed) for lg in logs),
                            measured=n))
    if not lines:
        rep.checks.append(Check("significance", UNVERIFIED, "no claimed score lines to test"))
        return
    new = [r.val_loss for r in lines]
    ratios = [r.val_loss / r.val_bpb for r in lines if r.val_bpb]
    ratio = mean(ratios)
    evidence = [f"new (nats/token, '{rep.score_label}'): " + ", ".join(f"{x:.6g}" for x in new),
                f"nats per bit-per-byte from these logs: {ratio:.6f} (val_loss/val_bpb)"]
    if opts.sota_logs is not None:
        rec, rec_label, notes = record_nats(opts.sota_logs)
        evidence += notes
        if not rec:
            rep.checks.append(Check("significance", UNVERIFIED, "record logs hold no score lines", evidence=evidence))
            return
        evidence.append("record (nats/token): " + ", ".join(f"{x:.6g}" for x in rec))
        res = welch_one_sided(new, rec, opts.margin_nats, opts.alpha)
    elif opts.sota_bpb is not None:
        rec_nats = opts.sota_bpb * ratio
        evidence.append(f"record {opts.sota_bpb} bpb × {ratio:.6f} = {rec_nats:.6f} nats/token "
                        "(exact only if the record used the same tokenizer and validation bytes)")
        res = one_sample_one_sided(new, rec_nats, opts.margin_nats, opts.alpha)
    else:
        rep.checks.append(Check("significance", UNVERIFIED,
                                "no record given (--sota-bpb or --sota-logs): improvement not tested",
                                evidence=evidence))
        return
    rep.significance = res
    if len(new) >= 2:
        evidence.append(f"new mean {res.mean_new:.6f} ± {stdev(new):.6f} (n={len(new)})")
    desc = (f"{res.test} t-test, H1: mean_new < mean_record − {res.margin:g} nats; improvement "
            f"{res.improvement:.5f} nats; t={res.t:.3f}, df={res.df:.2f}, p={res.p_value:.3g}"
            if res.t is not None else f"{res.test} test: {res.note}")
    if res.significant is None:
        rep.checks.append(Check("significance", UNVERIFIED, desc, evidence=evidence + [res.note]))
    else:
        status = PASS if res.significant else FAIL
        verdict = f"p {'<' if res.significant else '≥'} α={res.alpha:g}"
        rep.checks.append(Check("significance", status, f"{desc} ({verdict})",
                                measured=res.p_value, evidence=evidence + ([res.note] if res.note else [])))
