"""Which logs and which result line a submission's claim is read from: submission.json, the
one log per seed the claim is over, the score line whose mean matches the claimed val_bpb, and the
printing-precision tolerance every comparison of a claim with a logged number uses."""
from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import mean
from typing import Any

from harness.evaluation.logs import ParsedLog, ResultLine


def _decimals(x: float | str) -> int:
    s = str(x)
    if "e" in s.lower():
        return 8
    return len(s.split(".")[1]) if "." in s else 0


def _line_decimals(r: ResultLine, which: str) -> int:
    m = re.search(which + r"[:=]\s*[-+]?\d*\.?(\d*)", r.text)
    return len(m.group(1)) if m else 4


def tolerance(claimed: float, lines: list[ResultLine], which: str) -> float:
    """Half a unit in the last printed digit of the claim plus that of the logged lines."""
    d_line = min((_line_decimals(r, which) for r in lines), default=4)
    # JSON drops trailing zeros (1.1180 reads back as 1.118): assume at least 3 decimals.
    d_claim = max(_decimals(claimed), 3)
    # A whole unit of the claim's last digit: authors round means of already-rounded numbers.
    return 10 ** -d_claim + 0.5 * 10 ** -d_line + 1e-9


def number(x: Any) -> float | None:
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
    claims_by_seed = per_seed_claims(submission or {})
    overall = number((submission or {}).get("val_bpb"))
    chosen, skipped = [], []
    for key, group in by_seed.items():
        pick = group[0]
        claim = claims_by_seed.get(str(key), {}).get("val_bpb")
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


def per_seed_claims(sub: dict[str, Any]) -> dict[str, dict[str, float]]:
    """submission.json per-seed results under `seed_results` or a dict-valued `seeds`."""
    out: dict[str, dict[str, float]] = {}
    for key in ("seed_results", "seeds"):
        block = sub.get(key)
        if isinstance(block, dict):
            for seed, vals in block.items():
                if isinstance(vals, dict):
                    out[str(seed)] = {k: v for k, v in ((k, number(v)) for k, v in vals.items()) if v is not None}
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
            scored.append((abs(m - claimed_bpb), lb, m, tolerance(claimed_bpb, lines, "val_bpb")))
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
                if r is not None and abs(r.val_bpb - claimed_bpb) <= tolerance(claimed_bpb, [r], "val_bpb"):
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


def claimed_seeds(sub: dict[str, Any]) -> list[str]:
    """The seeds submission.json says its claim is over (per-seed results or a seed list)."""
    seeds = list(per_seed_claims(sub))
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
    claims = per_seed_claims(sub)
    if not claims:
        return None, []
    chosen: list[ParsedLog] = []
    notes: list[str] = []

    def gives(lg: ParsedLog, vals: dict[str, float]) -> bool:
        for r in lg.results:
            if not r.after_training:
                continue
            if all(abs(getattr(r, k) - vals[k]) <= tolerance(vals[k], [r], k)
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
