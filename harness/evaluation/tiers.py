"""Which verify checks are the challenge's rules (blocking) and which are submission format
(advisory), and which rules applied to a submission on its date and track.

Blocking: the limits and the claim itself — artifact > 16,000,000 bytes, training > 600 s,
evaluation > 600 s (all scoring passes summed), a claimed score the logs do not give, a record
claim that is not significant. A blocking check that fails exits 1; one that cannot be
verified exits 3. Advisory: how the submission is written up — submission.json fields, per-seed
metadata, README/file gaps. They are listed, never change the exit code.

Rules by date come from the challenge README's history (`git log -p -- README.md` on the
challenge repository). What changed, and when:

- 2026-03-18 (launch, a15093ada): 16,000,000-byte artifact; ≤ 10 min training and ≤ 10 min
  evaluation on 8xH100 for leaderboard (record) submissions; a PR adds README.md, a
  `submission.json` "that includes your name, GitHub ID, `val_bpb`, and related metadata",
  a train log, and train_gpt.py. The non-record (unlimited compute) section keeps the 16 MB
  limit only. The submission.json sentence is unchanged at every later commit.
- 2026-03-19 (d2bd76079): "Please demonstrate a statistically significant win" (3 runs).
- 2026-03-20 (2cff08e1a): "You CANNOT access validation data during training" (paid prefix);
  judged by the static/dynamic audit, not by verify.

The other fields the records carry (`author`, `name`, `date`, `bytes_total`, `val_loss`,
`bytes_code`) come from the example runs the README points to, not from a stated rule: a
missing one is advisory.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BLOCKING, ADVISORY = "blocking", "advisory"
TRACK_MAIN, TRACK_NON_RECORD = "track_10min_16mb", "track_non_record_16mb"

# verify checks that are rules of the challenge; every other check is advisory.
LIMIT_CHECKS = ("artifact-size", "train-time", "eval-time")
BLOCKING_CHECKS = set(LIMIT_CHECKS) | {"claimed-score", "significance"}
TIME_CHECKS = ("train-time", "eval-time")

LAUNCH = "2026-03-18"
SIGNIFICANCE_FROM = "2026-03-19"  # README d2bd76079
# "your name, GitHub ID, val_bpb": the name may be under author (the example runs) or name.
README_FIELDS = (("author", "name"), ("github_id",), ("val_bpb",))
EXAMPLE_FIELDS = ("name", "author", "github_id", "val_bpb", "date", "bytes_total")


@dataclass(frozen=True)
class RuleSet:
    """The rules that applied to one submission."""

    date: str | None  # YYYY-MM-DD the rules were taken at (None: unknown, today's rules)
    date_source: str
    track: str
    track_source: str
    size_cap_bytes: int
    time_limits: bool  # the 10-minute train and eval limits
    significance_required: bool  # a record must show a significant win
    readme_fields: tuple[tuple[str, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _date_of(folder: Path, sub: dict[str, Any] | None) -> tuple[str | None, str]:
    raw = str((sub or {}).get("date") or "")
    if m := re.match(r"(\d{4}-\d{2}-\d{2})", raw):
        return m.group(1), "submission.json date"
    if m := re.match(r"(\d{4}-\d{2}-\d{2})", folder.name):
        return m.group(1), "folder name"
    return None, "unknown (today's rules)"


def _track_of(folder: Path, sub: dict[str, Any] | None) -> tuple[str, str]:
    # The folder's place in the challenge repository decides; a `track` field only when the
    # folder was copied out of it (e.g. a scratch copy).
    for part in reversed(folder.resolve().parts):
        if part.startswith("track_"):
            return (TRACK_NON_RECORD if "non_record" in part else TRACK_MAIN), f"folder under {part}/"
    track = str((sub or {}).get("track") or "")
    if "non_record" in track or "non-record" in track:
        return TRACK_NON_RECORD, f"submission.json track {track!r}"
    return TRACK_MAIN, "default (not under records/track_*/)"


def rules_for(folder: Path, sub: dict[str, Any] | None, track: str | None = None) -> RuleSet:
    date, date_src = _date_of(folder, sub)
    if track is None:
        track, track_src = _track_of(folder, sub)
    else:
        track_src = "--track"
    main = track != TRACK_NON_RECORD
    return RuleSet(
        date=date, date_source=date_src, track=track, track_source=track_src,
        size_cap_bytes=16_000_000,  # both tracks, every date
        time_limits=main,
        significance_required=main and (date is None or date >= SIGNIFICANCE_FROM),
        readme_fields=README_FIELDS,
    )


def tier_of(check_name: str, rules: RuleSet, record_given: bool) -> str:
    if check_name == "significance":
        # Judged only against a given record, and only where a record claim needs it.
        return BLOCKING if record_given and rules.significance_required else ADVISORY
    if check_name in TIME_CHECKS and not rules.time_limits:
        return ADVISORY
    return BLOCKING if check_name in BLOCKING_CHECKS else ADVISORY


def missing_readme_fields(sub: dict[str, Any], rules: RuleSet) -> list[str]:
    return ["/".join(alts) for alts in rules.readme_fields if not any(a in sub for a in alts)]
