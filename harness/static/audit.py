"""The static layer: read every Python file of a submission with LibCST and run each rule's
`check_static` on it. Never raises on bad input: what cannot be read is `NotAudited`."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.static.engine import ModuleContext, ParseError, build_context
from harness.core.findings import AuditResult, FileReport, Finding, Layer, Location, NotAudited, Severity
from harness.static.project import Project, project_findings
from harness.challenge.flags import submission_flags
from harness.challenge.layout import run_instructions
from harness.static.reachability import Reachability
from harness.core.rule import Rule
from harness.core.registry import all_rules
from harness.static.source import LoadedSource, load_source
from harness.core.suppressions import apply_suppressions

SKIP_DIRS = {"__pycache__", ".git", ".golf-audit-cache", "node_modules", ".venv", "venv"}
MAX_FILES = 200


def python_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.rglob("*.py")
                  if p.is_file() and not (SKIP_DIRS & set(p.relative_to(folder).parts)))


def _log_text(folder: Path) -> str:
    parts = []
    for p in sorted(folder.glob("*.log")) + sorted(folder.glob("*.txt")):
        try:
            parts.append(p.read_text(encoding="utf-8", errors="replace")[:5_000_000])
        except OSError:
            pass
    return "\n".join(parts)


def audit_folder_static(folder: str | Path, env: dict[str, str] | None = None,
                        rules: list[Rule] | None = None) -> AuditResult:
    folder = Path(folder)
    result = AuditResult(target=str(folder), layers_run=["static"])
    rules = [r for r in (rules if rules is not None else all_rules()) if r.has_static()]
    if not folder.exists():
        result.not_audited.append(NotAudited(str(folder), "no such file or directory"))
        return result
    base = folder if folder.is_dir() else folder.parent
    files = python_files(folder)
    if not files:
        result.not_audited.append(NotAudited(str(folder), "missing train script: no Python files in the folder"))
        return result
    if folder.is_dir() and not any(p.name.startswith("train") for p in files):
        result.not_audited.append(NotAudited(str(folder), "missing train script: no train*.py in the folder"))
    if len(files) > MAX_FILES:
        result.not_audited.append(NotAudited(str(folder), f"{len(files)} Python files; only the first {MAX_FILES} audited"))
        files = files[:MAX_FILES]
    claimed = submission_flags(base)
    log_text = _log_text(base)
    run_env = {**claimed, **(env or {})}
    result.env_flags = dict(run_env)
    imports: dict[str, set[str]] = {}
    texts: dict[str, str] = {}
    built: list[_Built] = []
    for path in files:
        rel = path.relative_to(base).as_posix()
        loaded = load_source(path, rel)
        built.append(_build_file(loaded, rel, run_env, log_text, result))
        imports[rel] = built[-1].imported
        texts[rel] = loaded.text
    _audit_built(built, rules, result)
    if folder.is_dir():
        docs = run_instructions(base)
        run = run_files(imports, texts)
        _settle_files(result, run, prep_files(imports, texts, docs.get("README.md", ""), run), rules)
        # the run instructions are read as written: what they run is the run
        for rule in rules:
            if rule.has_text_check():
                result.findings.extend(rule.check_texts(docs))
    return result


def prep_files(imports: dict[str, set[str]], texts: dict[str, str], readme: str,
               run: set[str] | None) -> set[str]:
    """Scripts the README's commands run besides the train script (`python build_prefix.py ...`:
    the submission is reproduced that way), with what they import or name."""
    if run is None:
        return set()
    entries = set()
    for rel in imports:
        name = re.escape(rel.rsplit("/", 1)[-1])
        if rel not in run and re.search(rf"(?:python3?|torchrun|uv run|-m)\b[^\n]*?[\s/]{name}\b", readme):
            entries.add(rel)
    return (_closure(entries, imports, texts) - run) if entries else set()


def run_files(imports: dict[str, set[str]], texts: dict[str, str]) -> set[str] | None:
    """The files a run executes: the train script(s) at the top of the folder, and, transitively,
    the folder's modules they import or name (`python helper.py`, `open("helper.py")`).
    None when there is no train script to start from (then every file counts)."""
    entries = {rel for rel in imports if "/" not in rel and rel.startswith("train")}
    if not entries:
        return None
    return _closure(entries, imports, texts)


def _closure(entries: set[str], imports: dict[str, set[str]], texts: dict[str, str]) -> set[str]:
    by_module = {}
    for rel in imports:
        mod = rel[:-3].replace("/", ".")
        by_module[mod] = rel
        if mod.endswith(".__init__"):
            by_module[mod[: -len(".__init__")]] = rel
    seen, todo = set(entries), list(entries)
    while todo:
        rel = todo.pop()
        names = set(imports.get(rel) or ())
        text = texts.get(rel, "")
        for other in imports:
            if other not in seen and other.rsplit("/", 1)[-1] in text:
                names.add(other[:-3].replace("/", "."))
        for name in names:
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                hit = by_module.get(".".join(parts[:i]))
                if hit and hit not in seen:
                    seen.add(hit)
                    todo.append(hit)
                    break
    return seen


def _settle_files(result: AuditResult, run: set[str] | None, prep: set[str] = frozenset(),
                  rules: list[Rule] = ()) -> None:
    """Findings in files the run never executes (a data-download helper shipped in the folder)
    are listed at low severity, marked not reachable. A preparation script the README runs is
    such a file too, except for the rules that say its findings count (Rule.counts_in_prep_scripts)."""
    if run is None:
        return
    prep_rules = {r.name for r in rules if r.counts_in_prep_scripts}
    for f in result.findings:
        if f.location.path in run:
            continue
        if f.location.path in prep and f.rule in prep_rules:
            f.evidence.append(f"{f.location.path} is run by a command in the README (a preparation step): "
                              "what it stores ships with the run")
            continue
        f.reachable = False
        f.evidence.append(f"{f.location.path} is not the train script and is not imported or run by it; "
                          "reported at low severity")
        f.severity = Severity.LOW


def audit_source(code: str, path: str = "train_gpt.py", env: dict[str, str] | None = None,
                 rules: list[Rule] | None = None) -> AuditResult:
    """Audit one source text (tests, examples, the fuzz suite)."""
    from harness.static.source import MAX_FILE_BYTES, UnpackError, unpack

    result = AuditResult(target=path, layers_run=["static"])
    rules = [r for r in (rules if rules is not None else all_rules()) if r.has_static()]
    size = len(code.encode("utf-8", errors="replace"))
    if size > MAX_FILE_BYTES:  # the same limit load_source applies to files
        result.not_audited.append(NotAudited(path, f"source is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit"))
        return result
    loaded = LoadedSource(path, code, code)
    try:
        loaded.text, loaded.layers = unpack(code, None, path)
    except UnpackError as exc:
        import ast

        from harness.static.source import find_exec
        loaded.pack_error, loaded.pack_line = str(exc), 1
        try:
            call = find_exec(ast.parse(code))
            loaded.pack_line = call.lineno if call else 1
        except (SyntaxError, RecursionError, ValueError):
            pass
    except RecursionError:
        loaded.error = "expression nesting too deep to parse"
    _audit_built([_build_file(loaded, path, dict(env or {}), "", result)], rules, result)
    return result


@dataclass
class _Built:
    """One file, parsed and indexed, waiting for the rules: its contexts (the file itself, or
    the outer stub and the unpacked code of a packed file)."""

    loaded: LoadedSource
    rel: str
    report: FileReport | None
    contexts: list[ModuleContext] = field(default_factory=list)
    imported: set[str] = field(default_factory=set)  # modules it imports (for `run_files`)


def _build_file(loaded: LoadedSource, rel: str, env: dict[str, str], log_text: str, result: AuditResult) -> _Built:
    """Parse and index one loaded file (no rule runs yet: the project's other files must be
    indexed first, so that calls across files resolve)."""
    if loaded.error:
        result.not_audited.append(NotAudited(rel, loaded.error))
        return _Built(loaded, rel, None)
    report = FileReport(rel, hashlib.sha256(loaded.outer_text.encode()).hexdigest(),
                        loaded.text.count("\n") + 1, packed_layers=len(loaded.layers))
    result.files.append(report)
    built = _Built(loaded, rel, report)
    texts = [(loaded.outer_text, None)] if not loaded.layers else [(loaded.outer_text, "outer"), (loaded.text, "inner")]
    for text, role in texts:
        try:
            ctx = build_context(text, rel, env)
        except ParseError as exc:
            where = f" (unpacked from line {loaded.layers[0].line})" if role == "inner" else ""
            result.not_audited.append(NotAudited(rel, f"{exc}{where}"))
            continue
        except Exception as exc:  # noqa: BLE001 - an analyzer bug must not pass silently
            result.not_audited.append(NotAudited(rel, f"analyzer error: {type(exc).__name__}: {exc}"))
            continue
        built.imported |= set(ctx.imports.values())
        if ctx.analysis.get("rewrites"):
            report.rewrites.extend(ctx.analysis["rewrites"])
        if role == "inner":
            ctx.packed_in, ctx.packed_line = rel, loaded.layers[0].line
        ctx.analysis["pack"] = {"role": role, "layers": loaded.layers, "error": loaded.pack_error,
                                "line": loaded.pack_line}
        reach = Reachability(ctx, env)
        ctx.env = {**reach.flags_from_logs(log_text), **env}
        reach.env = ctx.env
        reach._cache = {}  # solved again under the flags the logs revealed
        ctx.reach = reach
        for k, v in ctx.env.items():
            result.env_flags.setdefault(k, v)
        built.contexts.append(ctx)
        if role == "inner":
            report.rewrites.append(f"unpacked {len(loaded.layers)} layer(s): "
                                   + ", ".join(p.how for p in loaded.layers))
    return built


def _audit_built(built: list[_Built], rules: list[Rule], result: AuditResult) -> None:
    """Run every rule on every indexed file. The files form one project: a rule may follow a
    call from one file into another (harness/static/project.py)."""
    Project([ctx for b in built for ctx in b.contexts])
    for b in built:
        for ctx in b.contexts:
            for rule in rules:
                try:
                    found = list(project_findings(ctx, rule)) if rule.has_project_check() else []
                    found += rule.check_static(ctx)
                except RecursionError:
                    result.not_audited.append(NotAudited(b.rel, f"{rule.name}: nesting too deep to analyse"))
                    continue
                except Exception as exc:  # noqa: BLE001
                    result.not_audited.append(NotAudited(b.rel, f"{rule.name}: analyzer error: "
                                                                f"{type(exc).__name__}: {exc}"))
                    continue
                for f in found:
                    _settle_reachability(f, ctx)
                    result.findings.append(f)
        if b.loaded.pack_error:
            result.not_audited.append(NotAudited(b.rel, f"packed source cannot be unpacked: {b.loaded.pack_error}"))
        if b.report is not None:
            apply_suppressions(result, b.rel, b.loaded.text if b.loaded.layers else b.loaded.outer_text)


def _settle_reachability(f: Finding, ctx: ModuleContext) -> None:
    """Findings on code that does not run as submitted are listed, but at low severity."""
    if f.reachable is None and f.location.function and ctx.reach is not None:
        r = ctx.reach.reach(f.location.function)
        f.reachable, f.flags = r.reachable, {**r.flags, **f.flags}
    elif f.reachable is None and not f.location.function:
        f.reachable = True  # module-level code runs whenever the file runs or is imported
    if f.reachable is False and f.severity > Severity.LOW:
        f.evidence.append(f"not reachable as submitted (needs {' '.join(f'{k}={v}' for k, v in f.flags.items())}); "
                          "reported at low severity")
        f.severity = Severity.LOW


def location_of(ctx: ModuleContext, line: int, function: str | None) -> Location:
    return ctx.location(line, function)


__all__ = ["audit_folder_static", "audit_source", "python_files", "Layer"]
