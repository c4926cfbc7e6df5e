"""The budget checks of `golf-eval verify`: artifact size (and the size fields of submission.json),
train time and eval time, each read from the logs, or from the submission's own metadata when no
log prints it."""
from __future__ import annotations

from typing import Any

from harness.evaluation.claim_logs import number
from harness.evaluation.logs import ParsedLog
from harness.evaluation.verify_report import FAIL, PASS, UNVERIFIED, Check, VerifyOptions, VerifyReport

# submission.json fields where authors state the artifact size / the training time themselves.
SIZE_FIELDS = ("bytes_total", "compressed_size_bytes", "artifact_bytes")
TRAIN_TIME_FIELDS = ("training_time_seconds", "train_time_seconds", "train_time_s", "wallclock_seconds")


def check_sizes(rep: VerifyReport, logs: list[ParsedLog], sub: dict[str, Any] | None, opts: VerifyOptions) -> None:
    sizes = [(lg.seed, lg.artifact) for lg in logs]
    known = [(s, a) for s, a in sizes if a is not None]
    evidence = [f"seed {s}: {a.value:,} bytes (line {a.line}, 'Total submission size {a.label}')" for s, a in known]
    over = [(s, a) for s, a in known if a.value > opts.size_cap_bytes]
    declared = _declared(sub, SIZE_FIELDS)
    if (not logs or not known) and declared and declared[1] > opts.size_cap_bytes:
        # No log prints the size, but the submission's own metadata states one over the cap.
        key, value = declared
        rep.checks.append(Check("artifact-size", FAIL,
                                f"no artifact size in the logs; submission.json {key} = {int(value):,} bytes, "
                                f"over {opts.size_cap_bytes:,}", claimed=int(value),
                                evidence=evidence + [f"submission.json {key}: {int(value)}"]))
    elif not logs or not known:
        rep.checks.append(Check("artifact-size", UNVERIFIED, "no artifact size in the logs", evidence=evidence))
    elif over:
        rep.checks.append(Check("artifact-size", FAIL,
                                f"{len(over)} of {len(known)} seed(s) over {opts.size_cap_bytes:,} bytes: "
                                + ", ".join(f"seed {s} {a.value:,}" for s, a in over),
                                measured=max(a.value for _, a in known), evidence=evidence))
    elif len(known) < len(logs):
        rep.checks.append(Check("artifact-size", UNVERIFIED, "some logs print no artifact size", evidence=evidence))
    else:
        rep.checks.append(Check("artifact-size", PASS,
                                f"every seed ≤ {opts.size_cap_bytes:,} bytes (max {max(a.value for _, a in known):,})",
                                measured=max(a.value for _, a in known), evidence=evidence))
    claimed = number(sub.get("bytes_total")) if sub else None
    if claimed is None or not known:
        return
    values = [a.value for _, a in known]
    mean_v = sum(values) / len(values)
    if len(values) > 1 and abs(claimed - mean_v) <= 1.0:
        status, msg = PASS, (f"bytes_total {int(claimed):,} is the mean of the seeds' artifacts "
                             f"(largest {max(values):,})")
    elif int(claimed) in values:
        status, msg = PASS, f"bytes_total {int(claimed):,} is the logged artifact of a seed"
        if int(claimed) < max(values):
            msg += f" (the largest seed's is {max(values):,})"
    else:
        status, msg = FAIL, (f"bytes_total {int(claimed):,} matches no seed's logged artifact "
                             f"({', '.join(f'{v:,}' for v in values)})")
    rep.checks.append(Check("bytes_total-field", status, msg, claimed=int(claimed), measured=values))
    claimed_code = number(sub.get("bytes_code")) if sub else None
    codes = [lg.code_bytes for lg in logs if lg.code_bytes is not None]
    if claimed_code is not None and codes:
        ok = int(claimed_code) in codes
        rep.checks.append(Check("bytes_code-field", PASS if ok else FAIL,
                                f"bytes_code {int(claimed_code):,} " + ("matches" if ok else "≠")
                                + f" logged code size ({', '.join(f'{c:,}' for c in codes)})",
                                claimed=int(claimed_code), measured=codes))


def _declared(sub: dict[str, Any] | None, keys: tuple[str, ...]) -> tuple[str, float] | None:
    for key in keys:
        if sub and (v := number(sub.get(key))) is not None:
            return key, v
    return None


def check_train_time(rep: VerifyReport, logs: list[ParsedLog], opts: VerifyOptions,
                      sub: dict[str, Any] | None = None) -> None:
    limit = opts.train_cap_s + opts.train_slack_s
    declared = _declared(sub, TRAIN_TIME_FIELDS)
    if declared and declared[1] > limit and all(lg.train_total_s is None for lg in logs):
        # No log prints the train time, but the submission's own metadata states one over the cap.
        key, value = declared
        rep.checks.append(Check("train-time", FAIL,
                                f"no train time in the logs; submission.json {key} = {value:g} s, "
                                f"over {opts.train_cap_s:.0f} s", claimed=value,
                                evidence=[f"submission.json {key}: {value:g}"]))
        return
    if not logs:
        rep.checks.append(Check("train-time", UNVERIFIED, "no train logs"))
        return
    evidence, over, unknown = [], [], []
    for lg in logs:
        t = lg.train_total_s
        if t is None:
            unknown.append(str(lg.seed))
            evidence.append(f"seed {lg.seed}: no train time in {lg.path}")
            continue
        parts = f"{lg.train_time_s:.3f} s loop ({lg.train_time_source})" if lg.train_time_s is not None else ""
        if lg.self_generated_calibration:
            parts += "; GPTQ calibrated on self-generated text after the loop (no training data): not counted"
            if lg.post_gptq_total_s is not None:
                parts += f" (script's own loop + GPTQ total {lg.post_gptq_total_s:.1f} s)"
        elif lg.post_gptq_total_s is not None:
            parts = f"{t:.1f} s (script's wallclock:post_gptq total)"
        elif lg.post_loop_train_s:
            parts += f" + {lg.post_loop_train_s:.1f} s GPTQ calibration after the loop"
        evidence.append(f"seed {lg.seed}: {t:.3f} s = {parts}")
        if t > limit:
            over.append(f"seed {lg.seed} {t:.1f} s")
    if over:
        rep.checks.append(Check("train-time", FAIL, f"over {opts.train_cap_s:.0f} s: " + ", ".join(over),
                                evidence=evidence))
    elif unknown:
        rep.checks.append(Check("train-time", UNVERIFIED, "train time not in every log", evidence=evidence))
    else:
        rep.checks.append(Check("train-time", PASS,
                                f"every seed ≤ {opts.train_cap_s:.0f} s (+{opts.train_slack_s:g} s slack for the "
                                "step in flight at the cap)", evidence=evidence))


def check_eval_time(rep: VerifyReport, logs: list[ParsedLog], sub: dict[str, Any] | None, opts: VerifyOptions) -> None:
    if not logs:
        rep.checks.append(Check("eval-time", UNVERIFIED, "no train logs"))
        return
    evidence, over, unmeasured = [], [], []
    for lg in logs:
        parts = []
        for p in lg.phases:
            if p.time_s is not None:
                parts.append(f"{p.label} {p.time_s:.1f} s")
            else:
                est = ""
                if p.estimate_s is not None:
                    est = f", estimated {'≥ ' if 'lower' in p.estimate_kind else ''}{p.estimate_s:.1f} s ({p.estimate_basis})"
                why = "log ends inside it" if p.result is None else "its result line prints no time"
                parts.append(f"{p.label} UNMEASURED ({why}; lines {p.first_line}-{p.last_line}{est})")
        known = lg.eval_logged_s
        diag = sum(p.time_s for p in lg.phases if p.time_s is not None and "diagnostic" in p.label.lower())
        est_total = known + sum(p.estimate_s or 0.0 for p in lg.unmeasured_phases)
        line = f"seed {lg.seed}: logged sum {known:.1f} s = " + " + ".join(parts or ["(no eval phase found)"])
        if diag:
            line += f"; {known - diag:.1f} s without passes labelled diagnostic"
        if lg.unmeasured_phases:
            line += f"; with estimates ≥ {est_total:.1f} s"
        if lg.script_total_eval_s is not None:
            line += f"; the script's own total_eval_time {lg.script_total_eval_s:.1f} s"
        evidence.append(line)
        if not lg.phases:
            unmeasured.append(f"seed {lg.seed}: no eval phase found")
        elif known - diag > opts.eval_cap_s:
            # Passes the script labels diagnostic report no score the submission claims (one
            # scores the pre-quantisation model, not the artifact); the submission is evaluated
            # without them, so they are shown but not counted against the limit.
            over.append(f"seed {lg.seed} {known:.1f} s" + (" (+ unmeasured passes)" if lg.unmeasured_phases else "")
                        + (f" ({known - diag:.1f} s without diagnostic passes)" if diag else ""))
        elif lg.unmeasured_phases:
            unmeasured.append(f"seed {lg.seed}: {len(lg.unmeasured_phases)} pass(es) unmeasured")
    claimed = None
    for key in ("eval_time_seconds", "eval_time_s"):
        if sub and number(sub.get(key)) is not None:
            claimed = number(sub.get(key))
            evidence.append(f"submission.json {key} = {claimed:g} s")
    if over:
        rep.checks.append(Check("eval-time", FAIL,
                                f"eval phases after training sum over {opts.eval_cap_s:.0f} s: " + ", ".join(over),
                                claimed=claimed, evidence=evidence))
    elif unmeasured:
        rep.checks.append(Check("eval-time", UNVERIFIED,
                                "logged eval phases fit, but " + "; ".join(unmeasured) + " (unmeasured from logs)",
                                claimed=claimed, evidence=evidence))
    else:
        rep.checks.append(Check("eval-time", PASS, f"every seed's eval phases sum ≤ {opts.eval_cap_s:.0f} s",
                                claimed=claimed, evidence=evidence))
