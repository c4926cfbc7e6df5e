"""`golf-eval verify`: check a submission folder's claims against its own logs.

Each check ends in one of: pass, fail (a claim is contradicted by the logs or breaks a budget),
unverified (the logs do not hold what the check needs), info (reported, not judged), and has a
tier (harness.evaluation.tiers): blocking (the challenge's rules) or advisory (submission format).
Exit: 1 if a blocking check fails, else 3 if a blocking check is unverified, else 0. Advisory
checks are listed and never change the exit code.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from harness.evaluation.logs import ParsedLog, ResultLine, parse_folder_logs
from harness.evaluation.significance import TestResult, one_sample_one_sided, welch_one_sided
from harness.evaluation.tiers import ADVISORY, BLOCKING, EXAMPLE_FIELDS, TIME_CHECKS, RuleSet, \
    missing_readme_fields, rules_for, tier_of
from harness.core.findings import ExitCode

PASS, FAIL, UNVERIFIED, INFO = "pass", "fail", "unverified", "info"
REQUIRED_FIELDS = EXAMPLE_FIELDS  # kept for importers; what is required is in tiers.py


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


@dataclass
class VerifyOptions:
    sota_bpb: float | None = None
    sota_logs: Path | None = None
    margin_nats: float = 0.005
    alpha: float = 0.01
    size_cap_bytes: int = 16_000_000  # decimal, per seed
    train_cap_s: float = 600.0
    eval_cap_s: float = 600.0
    # A wallclock-capped loop stops after the step in flight, so logs show 600.03 s; allow it.
    train_slack_s: float = 1.0
    track: str | None = None  # None: from the folder's place under records/track_*/


@dataclass
class Check:
    name: str
    status: str
    summary: str
    claimed: Any = None
    measured: Any = None
    evidence: list[str] = field(default_factory=list)
    tier: str = BLOCKING  # set by verify from tiers.tier_of


@dataclass
class SeedRow:
    seed: int | None
    log: str
    score_label: str | None
    val_loss: float | None
    val_bpb: float | None
    train_s: float | None
    train_detail: str
    eval_logged_s: float
    eval_phases: list[dict[str, Any]]
    eval_unmeasured: list[str]
    eval_estimate_s: float  # sum of estimates for unmeasured phases (lower bounds or timestamps)
    artifact_bytes: int | None
    artifact_label: str
    code_bytes: int | None
    missing: list[str]


@dataclass
class VerifyReport:
    target: str
    checks: list[Check] = field(default_factory=list)
    seeds: list[SeedRow] = field(default_factory=list)
    logs_found: list[str] = field(default_factory=list)
    logs_skipped: list[str] = field(default_factory=list)  # duplicates of a seed already used
    score_label: str | None = None
    significance: TestResult | None = None
    notes: list[str] = field(default_factory=list)
    rules: RuleSet | None = None

    def blocking(self) -> list[Check]:
        return [c for c in self.checks if c.tier == BLOCKING and c.status != INFO]

    def blocking_failures(self) -> list[Check]:
        return [c for c in self.blocking() if c.status == FAIL]

    def advisories(self) -> list[Check]:
        """Advisory checks with something to say (failed or could not be checked)."""
        return [c for c in self.checks if c.tier == ADVISORY and c.status in (FAIL, UNVERIFIED)]

    def exit_code(self) -> ExitCode:
        statuses = {c.status for c in self.blocking()}
        if FAIL in statuses:
            return ExitCode.FINDINGS
        if UNVERIFIED in statuses or not statuses:
            return ExitCode.NOT_AUDITABLE
        return ExitCode.CLEAN

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_code"] = int(self.exit_code())
        d["significance"] = self.significance.to_dict() if self.significance else None
        d["rules"] = self.rules.to_dict() if self.rules else None
        d["blocking_failures"] = [c.name for c in self.blocking_failures()]
        d["advisories"] = [c.name for c in self.advisories()]
        return d


# ---- helpers --------------------------------------------------------------------------------


def _decimals(x: float | str) -> int:
    s = str(x)
    if "e" in s.lower():
        return 8
    return len(s.split(".")[1]) if "." in s else 0


def _line_decimals(r: ResultLine, which: str) -> int:
    m = re.search(which + r"[:=]\s*[-+]?\d*\.?(\d*)", r.text)
    return len(m.group(1)) if m else 4


def _tolerance(claimed: float, lines: list[ResultLine], which: str) -> float:
    """Half a unit in the last printed digit of the claim plus that of the logged lines."""
    d_line = min((_line_decimals(r, which) for r in lines), default=4)
    # JSON drops trailing zeros (1.1180 reads back as 1.118): assume at least 3 decimals.
    d_claim = max(_decimals(claimed), 3)
    # A whole unit of the claim's last digit: authors round means of already-rounded numbers.
    return 10 ** -d_claim + 0.5 * 10 ** -d_line + 1e-9


def _number(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return None


def find_script(folder: Path) -> list[Path]:
    scripts = sorted(p for p in folder.glob("train*.py"))
    if scripts:
        return scripts
    out = []
    for p in sorted(folder.glob("*.py")):
        text = p.read_text(encoding="utf-8", errors="replace")
        if "val_bpb" in text or "__main__" in text:
            out.append(p)
    return out


def load_submission(folder: Path) -> tuple[dict[str, Any] | None, str, str]:
    """(data, file name, error). Accepts submission.json; falls back to submission*.json."""
    candidates = [folder / "submission.json"] + sorted(folder.glob("submission*.json"))
    for p in candidates:
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return None, p.name, f"{p.name} does not parse: {e}"
            if not isinstance(data, dict):
                return None, p.name, f"{p.name} is not a JSON object"
            return data, p.name, ""
    return None, "", "no submission.json"


def pick_seed_logs(logs: list[ParsedLog], submission: dict[str, Any] | None) -> tuple[list[ParsedLog], list[str]]:
    """One log per seed. Where several logs share a seed (train.log copying a seed log, reruns),
    keep the one whose final result matches the submission's per-seed claim, else the first."""
    by_seed: dict[Any, list[ParsedLog]] = {}
    for lg in logs:
        key = lg.seed if lg.seed is not None else f"?{lg.path}"
        by_seed.setdefault(key, []).append(lg)
    per_seed_claims = _per_seed_claims(submission or {})
    overall = _number((submission or {}).get("val_bpb"))
    chosen, skipped = [], []
    for key, group in by_seed.items():
        pick = group[0]
        claim = per_seed_claims.get(str(key), {}).get("val_bpb")
        if claim is None and overall is not None and len(group) > 1:
            claim = overall  # reruns of one seed: the one the submission's number came from
        if claim is not None and len(group) > 1:
            scored = [g for g in group if g.final_result() is not None]
            if scored:
                pick = min(scored, key=lambda g: min(abs(r.val_bpb - claim) for r in g.results if r.after_training))
        elif len(group) > 1:
            with_result = [g for g in group if g.final_result() is not None]
            complete = [g for g in with_result if g.train_time_s is not None and g.artifact is not None]
            pick = (complete or with_result or group)[0]
        chosen.append(pick)
        skipped += [f"{g.path} (seed {key}: using {pick.path})" for g in group if g is not pick]
    return chosen, skipped


def train_info_log(log: ParsedLog, all_logs: list[ParsedLog]) -> ParsedLog:
    """The log holding this seed's training numbers: the log itself, or, when it is an eval-only
    rerun (no train time / no artifact size), another log of the same seed that has them."""
    if log.train_time_s is not None and log.artifact is not None:
        return log
    for other in all_logs:
        if other is not log and other.seed == log.seed and other.train_time_s is not None:
            return other
    return log


def _per_seed_claims(sub: dict[str, Any]) -> dict[str, dict[str, float]]:
    """submission.json per-seed results under `seed_results` or a dict-valued `seeds`."""
    out: dict[str, dict[str, float]] = {}
    for key in ("seed_results", "seeds"):
        block = sub.get(key)
        if isinstance(block, dict):
            for seed, vals in block.items():
                if isinstance(vals, dict):
                    out[str(seed)] = {k: v for k, v in ((k, _number(v)) for k, v in vals.items()) if v is not None}
    return out


def score_lines(logs: list[ParsedLog], label: str) -> list[ResultLine]:
    return [r for r in (lg.result_by_label(label) for lg in logs) if r is not None]


def claimed_score_label(logs: list[ParsedLog], claimed_bpb: float | None,
                        single: list | None = None) -> tuple[str | None, bool, str]:
    """Which result line the claimed score comes from: (label, matched, explanation).

    Candidates are labels present (after training) in every log; the one whose mean over seeds
    matches the claim within printing precision wins. Without a claim, or with no match, the
    last result line of the logs (the script's final score) is used and `matched` is False."""
    if not logs:
        return None, False, "no logs"
    labels = [r.label for r in logs[0].results if r.after_training]
    common = [lb for lb in dict.fromkeys(labels) if all(lg.result_by_label(lb) for lg in logs)]
    final = logs[0].final_result()
    if claimed_bpb is not None and common:
        scored = []
        for lb in common:
            lines = score_lines(logs, lb)
            m = mean(r.val_bpb for r in lines)
            scored.append((abs(m - claimed_bpb), lb, m, _tolerance(claimed_bpb, lines, "val_bpb")))
        scored.sort()
        dist, lb, m, tol = scored[0]
        # Prefer a non-exact twin only when both match; the _exact line carries more digits.
        matches = [s for s in scored if s[0] <= s[3]]
        if matches:
            # Among matches prefer the pass printed last (the final score), then the closest.
            order = {lb2: i for i, lb2 in enumerate(common)}
            best = max(matches, key=lambda s: (order[s[1]], -s[0]))
            return best[1], True, f"mean over {len(logs)} log(s) {best[2]:.8g} matches claim {claimed_bpb}"
        # Early records claimed one run's score, not a mean over seeds: say which run.
        for lb2 in reversed(common):
            for lg in logs:
                r = lg.result_by_label(lb2)
                if r is not None and abs(r.val_bpb - claimed_bpb) <= _tolerance(claimed_bpb, [r], "val_bpb"):
                    if single is not None:
                        single.append(r)
                    return lb2, True, (f"claim is the score of one run ({lg.path}, seed {lg.seed}: {r.val_bpb}), "
                                       f"not the mean over the {len(logs)} logs ({mean(x.val_bpb for x in score_lines(logs, lb2)):.8g})")
        return (final.label if final else lb), False, (
            f"claim {claimed_bpb} matches no result line; nearest '{lb}' mean {m:.8g} (off by {dist:.3g})"
        )
    if final is None:
        return None, False, "no result line after training"
    return final.label, False, "no claimed val_bpb: using the last result line"


# ---- verify ---------------------------------------------------------------------------------


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

    claimed_bpb = _number(sub.get("val_bpb")) if sub else None
    claimed_loss = _number(sub.get("val_loss")) if sub else None
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
                 _number(sub.get("bytes_total")) if sub else None)
    _check_per_seed(rep, logs, sub, label, train_logs)
    rep.seeds = [_seed_row(lg, label, tl) for lg, tl in zip(logs, train_logs)]
    _check_sizes(rep, train_logs, sub, opts)
    _check_train_time(rep, train_logs, opts, sub)
    _check_eval_time(rep, logs, sub, opts)
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


def claimed_seeds(sub: dict[str, Any]) -> list[str]:
    """The seeds submission.json says its claim is over (per-seed results or a seed list)."""
    seeds = list(_per_seed_claims(sub))
    block = sub.get("seeds")
    if not seeds and isinstance(block, list):
        seeds = [str(x) for x in block if isinstance(x, (int, str)) and str(x).isdigit()]
    return seeds


def logs_of_claimed_seeds(logs: list[ParsedLog], sub: dict[str, Any] | None) -> tuple[list[ParsedLog], list[str]]:
    """A folder may hold logs of other runs (ablations, other context lengths, earlier seeds).
    When submission.json names its seeds and every named seed has a log, the claim is checked on
    those logs only; the others are listed as not used."""
    seeds = claimed_seeds(sub or {})
    if not seeds:
        return logs, []
    have = {str(lg.seed) for lg in logs if lg.seed is not None}
    if not set(seeds) <= have:
        return logs, []
    keep = [lg for lg in logs if str(lg.seed) in seeds]
    other = [f"{lg.path} (seed {lg.seed}: not one of the seeds submission.json claims, {', '.join(seeds)})"
             for lg in logs if lg not in keep]
    return keep, other


def logs_matching_seed_claims(logs: list[ParsedLog], sub: dict[str, Any]) -> tuple[list[ParsedLog] | None, list[str]]:
    """One log per per-seed claim of submission.json, chosen by the claimed score: a log of that
    seed whose result line (after training) gives the claimed val_bpb (and val_loss, if claimed),
    else the one log of any seed that does. None when some claim has no such log, or two claims
    would share one."""
    claims = _per_seed_claims(sub)
    if not claims:
        return None, []
    chosen: list[ParsedLog] = []
    notes: list[str] = []

    def gives(lg: ParsedLog, vals: dict[str, float]) -> bool:
        for r in lg.results:
            if not r.after_training:
                continue
            if all(abs(getattr(r, k) - vals[k]) <= _tolerance(vals[k], [r], k)
                   for k in ("val_bpb", "val_loss") if k in vals):
                return True
        return False

    for seed, vals in claims.items():
        if "val_bpb" not in vals:
            return None, []
        cands = [lg for lg in logs if lg not in chosen and gives(lg, vals)]
        same = [lg for lg in cands if str(lg.seed) == seed]
        if same:
            chosen.append(same[0])
        elif len(cands) == 1:
            chosen.append(cands[0])
            notes.append(f"submission.json seed {seed}: its score {vals['val_bpb']} is in {cands[0].path}, "
                         f"which says seed {cands[0].seed} ({cands[0].seed_source})")
        else:
            return None, []
    return chosen, notes


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
        tol_loss = _tolerance(claimed_loss, lines, "val_loss")
        tol_bpb = _tolerance(claimed_loss, lines, "val_bpb")
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
            if abs(m - value) <= _tolerance(value, lines, which):
                return lb
    return None


def _check_per_seed(rep: VerifyReport, logs: list[ParsedLog], sub: dict[str, Any] | None, label: str | None,
                    train_logs: list[ParsedLog]) -> None:
    claims = _per_seed_claims(sub or {})
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
                tol = _tolerance(vals[key], [r], key)
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


def _check_sizes(rep: VerifyReport, logs: list[ParsedLog], sub: dict[str, Any] | None, opts: VerifyOptions) -> None:
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
    claimed = _number(sub.get("bytes_total")) if sub else None
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
    claimed_code = _number(sub.get("bytes_code")) if sub else None
    codes = [lg.code_bytes for lg in logs if lg.code_bytes is not None]
    if claimed_code is not None and codes:
        ok = int(claimed_code) in codes
        rep.checks.append(Check("bytes_code-field", PASS if ok else FAIL,
                                f"bytes_code {int(claimed_code):,} " + ("matches" if ok else "≠")
                                + f" logged code size ({', '.join(f'{c:,}' for c in codes)})",
                                claimed=int(claimed_code), measured=codes))


# submission.json fields where authors state the artifact size / the training time themselves.
SIZE_FIELDS = ("bytes_total", "compressed_size_bytes", "artifact_bytes")
TRAIN_TIME_FIELDS = ("training_time_seconds", "train_time_seconds", "train_time_s", "wallclock_seconds")


def _declared(sub: dict[str, Any] | None, keys: tuple[str, ...]) -> tuple[str, float] | None:
    for key in keys:
        if sub and (v := _number(sub.get(key))) is not None:
            return key, v
    return None


def _check_train_time(rep: VerifyReport, logs: list[ParsedLog], opts: VerifyOptions,
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


def _check_eval_time(rep: VerifyReport, logs: list[ParsedLog], sub: dict[str, Any] | None, opts: VerifyOptions) -> None:
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
        if sub and _number(sub.get(key)) is not None:
            claimed = _number(sub.get(key))
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


def record_nats(folder: Path) -> tuple[list[float], str, list[str]]:
    """Per-seed val_loss (nats/token) of a record folder's claimed score line."""
    if not folder.is_dir():
        raise UsageError(f"--sota-logs: not a folder: {folder}")
    sub, _, _ = load_submission(folder)
    logs, _ = pick_seed_logs(parse_folder_logs(folder), sub)
    claimed = _number(sub.get("val_bpb")) if sub else None
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
