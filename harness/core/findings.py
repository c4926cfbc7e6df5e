"""The data every layer reports in: findings, audit results, exit codes.

Static rules, trace judges and probes all produce `Finding`s; reports only read
`AuditResult`. Nothing here knows any rule by name.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any


class ExitCode(enum.IntEnum):
    """One enum for every command. 1 outranks 3: a proven finding is reported even
    when another check could not run."""

    CLEAN = 0
    FINDINGS = 1
    USAGE = 2
    NOT_AUDITABLE = 3


class Severity(enum.IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3

    @property
    def sarif_level(self) -> str:
        return ("note", "warning", "error")[self - 1]


class Confidence(enum.IntEnum):
    """The same three levels as Severity; SARIF names its precision after them."""

    LOW, MEDIUM, HIGH = 1, 2, 3

    @property
    def sarif_precision(self) -> str:
        return self.name.lower()


class Layer(str, enum.Enum):
    """Which part of golf-audit produced a finding."""

    STATIC = "static"  # read the code (LibCST)
    TRACE = "trace"  # ran the eval under the tracer and judged the recorded events
    PROBE = "probe"  # re-ran the eval with altered validation tokens (black box)


@dataclass
class Location:
    path: str  # relative to the audited submission folder (posix separators)
    line: int  # 1-based
    column: int = 0  # 0-based, as LibCST gives it
    end_line: int | None = None
    function: str | None = None  # qualified name of the enclosing function, if any
    source_line: str = ""  # the stripped text of `line`, for fingerprints and reports
    # For code that lived packed inside another file: the outer file and the line of the pack.
    packed_in: str | None = None
    packed_line: int | None = None


def location_fingerprint(name: str, location: Location, occurrence: int = 0) -> str:
    """The fingerprint of a report of kind `name` (a rule name, or a check the tool makes on its
    own input) at `location`: name, path, enclosing function, normalised source line and
    occurrence index; no line number, so it survives line shifts."""
    normalised = " ".join(location.source_line.split())
    key = "\x1f".join([name, location.path, location.function or "", normalised, str(occurrence)])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass
class Finding:
    rule: str  # kebab-case rule name (`Rule.name`)
    rule_id: str  # stable id (`Rule.id`); never reused
    severity: Severity
    confidence: Confidence
    layer: Layer
    message: str  # one sentence: what is wrong here
    location: Location
    evidence: list[str] = field(default_factory=list)  # concrete facts: lines, positions, numbers
    fix: str = ""  # what to change
    reachable: bool | None = None  # reachable from main()/__main__; None = unknown
    flags: dict[str, str] = field(default_factory=dict)  # env flags needed to reach it
    suppressed: str | None = None  # the reason from a `# golf-audit: ignore[...]` comment
    related: list[Location] = field(default_factory=list)  # e.g. the scoring line for a step
    # The fused verdict (harness/fusion.py): "proven" (a traced run or a probe showed it),
    # "suspected" (static only: the flagged site never ran in a complete trace), "refuted" (the
    # flagged line ran in a complete trace and everything recorded there was legal).
    status: str | None = None

    def fingerprint(self, occurrence: int = 0) -> str:
        """A baseline key with no line number in it: rule, path, enclosing function,
        normalised source line and occurrence index (the Bandit way)."""
        return location_fingerprint(self.rule, self.location, occurrence)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity.name.lower()
        d["confidence"] = self.confidence.name.lower()
        d["layer"] = self.layer.value
        return d


@dataclass
class NotAudited:
    """Something golf-audit could not check. Always reported; forces exit 3 unless a
    finding already forces 1."""

    path: str
    reason: str  # one line, human readable
    layer: Layer = Layer.STATIC
    detail: str = ""


@dataclass
class FileReport:
    path: str  # relative to the submission folder
    sha256: str
    lines: int
    packed_layers: int = 0  # how many packing layers were removed before auditing
    rewrites: list[str] = field(default_factory=list)  # e.g. "3.12 f-strings rewritten for 3.11"


@dataclass
class AuditResult:
    """Everything golf-audit learned about one submission folder."""

    target: str  # the folder as given on the command line
    findings: list[Finding] = field(default_factory=list)
    not_audited: list[NotAudited] = field(default_factory=list)
    files: list[FileReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "ran eager: torch.compile shimmed"
    # What weakens the verdict without stopping it (e.g. a sandbox that did not confine writes):
    # every report format shows these prominently, unlike notes.
    warnings: list[str] = field(default_factory=list)
    env_flags: dict[str, str] = field(default_factory=dict)  # flags the submission says it ran with
    layers_run: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # per-layer facts (coverage, times, ...)
    unused_suppressions: list[Location] = field(default_factory=list)
    # What the traced run did at each line (harness/dynamic/judge/sites.py), for the fused
    # verdict; None when no complete trace exists. Not serialized: fusion runs before caching.
    trace_sites: dict | None = None

    @property
    def active_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.suppressed is None]

    def exit_code(self, fail_on: Severity = Severity.MEDIUM) -> ExitCode:
        # Default fail-on is medium: low-severity findings (e.g. a packed file, which is
        # allowed but worth knowing) are listed without failing the audit.
        if any(f.severity >= fail_on for f in self.active_findings) or self.unused_suppressions:
            return ExitCode.FINDINGS
        if self.not_audited:
            return ExitCode.NOT_AUDITABLE
        return ExitCode.CLEAN


def worst_exit(codes: list[ExitCode]) -> ExitCode:
    """Combine several folders' exit codes: usage > findings > not auditable > clean."""
    for code in (ExitCode.USAGE, ExitCode.FINDINGS, ExitCode.NOT_AUDITABLE):
        if code in codes:
            return code
    return ExitCode.CLEAN
