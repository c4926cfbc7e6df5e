"""What `golf-eval verify` reports: the statuses of a check, its options, the checks and the
per-seed rows it fills in, and the exit code they give (harness/evaluation/claims.py runs them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.core.findings import ExitCode
from harness.evaluation.significance import TestResult
from harness.evaluation.tiers import ADVISORY, BLOCKING, RuleSet

PASS, FAIL, UNVERIFIED, INFO = "pass", "fail", "unverified", "info"


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
