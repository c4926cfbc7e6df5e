"""The contract every rule module in `rules/` fulfils, and the registry that finds them.

A rule module holds one `Rule` subclass: its stable id, kebab-case name, severity and
confidence, its documentation in fixed sections (What it does / Why is this bad? / Example /
Use instead / Known problems / References), its static check (LibCST), its trace judge
(a pure function over recorded events) if any, and VALID/INVALID examples from which the
test suite is generated. The engine in `harness/` calls rules only through this class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Iterable

from harness.core.findings import Confidence, Finding, Layer, Location, Severity

if TYPE_CHECKING:  # pragma: no cover
    from harness.dynamic.trace.events import Trace
    from harness.static.engine import ModuleContext


@dataclass(frozen=True)
class Valid:
    """Code on which the rule must report nothing. `env` sets flags the audit assumes."""

    code: str
    note: str = ""
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Invalid:
    """Code on which the rule must report. `line` pins the first finding's line (1-based);
    `function` pins its enclosing function; `message_contains` a piece of its message."""

    code: str
    line: int | None = None
    function: str | None = None
    message_contains: str | None = None
    note: str = ""
    env: dict[str, str] = field(default_factory=dict)


class Rule:
    # --- identity (stable: ids are never reused) ---
    id: ClassVar[str] = ""  # "GA001"
    name: ClassVar[str] = ""  # "train-before-score"
    severity: ClassVar[Severity] = Severity.HIGH
    confidence: ClassVar[Confidence] = Confidence.MEDIUM
    layers: ClassVar[tuple[Layer, ...]] = (Layer.STATIC,)  # layers that can report this rule

    # --- documentation (feeds `golf-audit explain`, README and SARIF help) ---
    summary: ClassVar[str] = ""  # What it does (one line)
    why: ClassVar[str] = ""  # Why is this bad?
    example: ClassVar[str] = ""  # code
    use_instead: ClassVar[str] = ""  # code
    known_problems: ClassVar[str] = ""
    references: ClassVar[tuple[str, ...]] = ()  # e.g. ("PR #518 (closed: adapt-then-score)",)
    fix: ClassVar[str] = ""  # default "what to change" text for findings

    # --- examples the test suite is generated from (static layer) ---
    VALID: ClassVar[list[Valid]] = []
    INVALID: ClassVar[list[Invalid]] = []

    # --- checks: a rule overrides the ones it has ---
    def check_static(self, ctx: "ModuleContext") -> Iterable[Finding]:
        """Read one parsed file; yield findings. Default: no static check."""
        return ()

    def judge(self, trace: "Trace") -> Iterable[Finding]:
        """Judge the events a traced run recorded; a pure function. Default: no judge."""
        return ()

    @classmethod
    def has_static(cls) -> bool:
        return cls.check_static is not Rule.check_static

    @classmethod
    def has_judge(cls) -> bool:
        return cls.judge is not Rule.judge

    def finding(
        self,
        layer: Layer,
        message: str,
        location: Location,
        evidence: list[str] | None = None,
        fix: str | None = None,
        **extra,
    ) -> Finding:
        return Finding(
            rule=self.name,
            rule_id=self.id,
            severity=self.severity,
            confidence=extra.pop("confidence", self.confidence),
            layer=layer,
            message=message,
            location=location,
            evidence=list(evidence or []),
            fix=fix if fix is not None else self.fix,
            **extra,
        )

    @classmethod
    def documentation(cls) -> str:
        """The rule's page as Markdown, in the fixed Ruff-style sections."""
        parts = [f"# {cls.name} ({cls.id})", "", f"Severity: {cls.severity.name.lower()} · "
                 f"confidence: {cls.confidence.name.lower()} · layers: "
                 + ", ".join(layer.value for layer in cls.layers), "",
                 "## What it does", cls.summary.strip(), "", "## Why is this bad?", cls.why.strip()]
        if cls.example.strip():
            parts += ["", "## Example", "```python", cls.example.strip("\n"), "```"]
        if cls.use_instead.strip():
            parts += ["", "## Use instead", "```python", cls.use_instead.strip("\n"), "```"]
        if cls.known_problems.strip():
            parts += ["", "## Known problems", cls.known_problems.strip()]
        if cls.references:
            parts += ["", "## References"] + [f"- {r}" for r in cls.references]
        return "\n".join(parts) + "\n"
