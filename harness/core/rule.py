"""The contract every rule module in `rules/` fulfils, and the registry that finds them.

A rule module holds one `Rule` subclass: its stable id, kebab-case name, severity,
confidence and layers (keywords of its class statement), its documentation in fixed
sections (What it does / Why is this bad? / Example / Use instead / Known problems /
References), its checks, and the examples the test suite is
generated from. A rule overrides the checks it has:

- `check_static(ctx)`: one parsed file (LibCST);
- `check_project(project)`: the folder's files together, judged once (the order of a TTT loop
  often lives in one file and its steps in another); findings per file;
- `check_change(changes, base_folders)`: the paths a pull request changes (the CI gate);
- `judge(trace)`: the events a traced run recorded, a pure function.

Examples: VALID/INVALID source (static), TRACE_VALID/TRACE_INVALID synthetic traces (judges).
The engine in `harness/` calls rules only through this class and the registry.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Iterable

from harness.core.findings import Confidence, Finding, Layer, Location, Severity

if TYPE_CHECKING:  # pragma: no cover
    from harness.ci.git_changes import Change
    from harness.dynamic.judge.synthetic import TraceExample
    from harness.dynamic.trace.events import Trace
    from harness.static.engine import ModuleContext
    from harness.static.project import Project


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


def _overrides(check: str) -> classmethod:
    """A classmethod of `Rule`: does this rule class override the check method `check`?"""
    return classmethod(lambda cls: getattr(cls, check) is not getattr(Rule, check))


class Rule:
    # --- identity (stable: ids are never reused) ---
    id: ClassVar[str] = ""  # "GA" and three digits
    name: ClassVar[str] = ""  # kebab-case, unique
    severity: ClassVar[Severity] = Severity.HIGH
    confidence: ClassVar[Confidence] = Confidence.MEDIUM
    layers: ClassVar[tuple[Layer, ...]] = (Layer.STATIC,)  # layers that can report this rule
    # The fused verdict: which events a traced run records at a flagged line that can refute a
    # static finding of this rule ("update", "score"); empty: a static finding is never refuted.
    refuted_by: ClassVar[tuple[str, ...]] = ()
    # True when the static check reads the fact itself (a packed file, a PR's file list): its
    # findings are proven, not suspected.
    static_is_proof: ClassVar[bool] = False
    # True when the judge reads the trace's own integrity record: it still runs on a trace the
    # tracer marked untrusted (its instrumentation was removed mid-run), where every other trace
    # judge is skipped because an empty stretch of such a trace proves nothing.
    judges_untrusted: ClassVar[bool] = False
    # a finding in a preparation script the README runs (not the train script) keeps its
    # severity: what such a script stores or builds ships with the run (a paid prefix)
    counts_in_prep_scripts: ClassVar[bool] = False

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
    # --- synthetic traces the judge must pass (VALID) or report on (INVALID) ---
    TRACE_VALID: ClassVar[list["TraceExample"]] = []
    TRACE_INVALID: ClassVar[list["TraceExample"]] = []

    def __init_subclass__(cls, id: str | None = None, name: str | None = None, severity: Severity | None = None,
                          confidence: Confidence | None = None, layers: tuple[Layer, ...] | None = None,
                          **kwargs) -> None:
        """A rule declares its identity in its class statement, one place a reader finds it:
        `class NewRule(Rule, id="GA0NN", name="new-rule", severity=..., confidence=...,
        layers=(...))`. Checked here, at import, not first at registration."""
        super().__init_subclass__(**kwargs)
        given = {"id": id, "name": name, "severity": severity, "confidence": confidence, "layers": layers}
        for key, value in given.items():
            if value is not None:
                setattr(cls, key, value)
        if id is not None and not re.fullmatch(r"GA\d{3}", id):
            raise TypeError(f"{cls.__name__}: rule id {id!r} is not 'GA' and three digits")
        if name is not None and not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name):
            raise TypeError(f"{cls.__name__}: rule name {name!r} is not kebab-case")

    # --- checks: a rule overrides the ones it has ---
    def check_static(self, ctx: "ModuleContext") -> Iterable[Finding]:
        """Read one parsed file; yield findings. Default: no static check."""
        return ()

    def check_project(self, project: "Project") -> dict[int, list[Finding]]:
        """Read the folder's files together, once; return the findings located in each file,
        keyed by `id()` of that file's `ModuleContext`. Default: no project check."""
        return {}

    def check_change(self, changes: "Iterable[Change]", base_folders: set[str]) -> list[Finding]:
        """Judge the paths a pull request changes; `base_folders` are the record folders at the
        merge base. Default: no change check."""
        return []

    def check_texts(self, texts: dict[str, str]) -> Iterable[Finding]:
        """Read the folder's run instructions (README.md, shell scripts: path -> text), where the
        commands that reproduce the submission live. Default: no text check."""
        return ()

    def judge(self, trace: "Trace") -> Iterable[Finding]:
        """Judge the events a traced run recorded; a pure function. Default: no judge."""
        return ()

    # --- which checks a rule has: those it overrides ---
    has_text_check = _overrides("check_texts")
    has_project_check = _overrides("check_project")
    has_change_check = _overrides("check_change")
    has_judge = _overrides("judge")

    @classmethod
    def has_static(cls) -> bool:
        return cls.check_static is not Rule.check_static or cls.has_project_check() or cls.has_text_check()

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

    def static_finding(self, ctx: "ModuleContext", line: int, function: str | None, message: str,
                       evidence: list[str] | None = None, fix: str | None = None, **extra) -> Finding:
        """A static-layer finding at `line` of `function` in the file `ctx` (its source line and
        packing come from the file)."""
        return self.finding(Layer.STATIC, message, ctx.location(line, function), evidence, fix, **extra)

    def trace_finding(self, layer: Layer, trace: "Trace", frame, message: str, evidence: list[str] | None = None,
                      fix: str | None = None, **extra) -> Finding:
        """A finding of a run (trace or probe layer) at a frame the run recorded; the source line
        is read from the submission when the frame does not carry it."""
        from harness.dynamic.judge.locations import location  # the judges' helpers load with the first judge

        return self.finding(layer, message, location(trace, frame), evidence, fix, **extra)

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
