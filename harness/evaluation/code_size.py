"""The code a submission ships: its entry script plus the folder's own Python files that the
script imports, directly or through each other (resolved statically from `import` statements).

Why not every .py in the folder: a folder may hold tools that are not part of the model (a toy
data generator, a CLI); why not the entry script alone: a multi-file submission (the reference
model's `train_gpt.py` only loads its package) would then count ~1 KB of code. Imports inside
functions and `if __name__ == "__main__":` blocks count: they run.
"""
from __future__ import annotations

import ast
from pathlib import Path


def _module_file(folder: Path, parts: list[str]) -> Path | None:
    """folder/a/b.py or folder/a/b/__init__.py for the dotted parts, if inside the folder."""
    if not parts:
        init = folder / "__init__.py"
        return init if init.is_file() else None
    base = folder.joinpath(*parts)
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path, folder: Path, package: str) -> set[Path]:
    """Files of `folder` that `path` imports. `package` is the name the folder is imported under
    (its original name: `from reference_model.train import main` inside reference_model/)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return set()
    here = path.parent
    out: set[Path] = set()

    def absolute(dotted: str) -> list[Path]:
        parts = dotted.split(".")
        found = []
        if parts[0] == package:  # the folder itself, imported by its own name
            found.append(_module_file(folder, []))
            parts = parts[1:]
        for i in range(len(parts), 0, -1):  # the deepest module that exists, and its packages
            f = _module_file(folder, parts[:i])
            if f is not None:
                found.append(f)
                found.extend(_module_file(folder, parts[:j]) for j in range(1, i))
                break
        return [f for f in found if f is not None]

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.update(absolute(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.parent
                parts = node.module.split(".") if node.module else []
                pkg_init = _module_file(base, [])
                if pkg_init is not None:
                    out.add(pkg_init)
                mod = _module_file(base, parts) if parts else None
                if mod is not None:
                    out.add(mod)
                for alias in node.names:  # `from . import a, b`: the names may be modules
                    sub = _module_file(base, parts + [alias.name])
                    if sub is not None:
                        out.add(sub)
            elif node.module:
                out.update(absolute(node.module))
                for alias in node.names:
                    out.update(absolute(f"{node.module}.{alias.name}"))
    resolved = set()
    for f in out:
        try:
            f.resolve().relative_to(folder.resolve())
        except ValueError:
            continue
        resolved.add(f)
    return resolved


def code_files(folder: Path, entry: Path, package: str | None = None) -> list[Path]:
    """The entry script and every folder file it reaches by imports, sorted by path."""
    folder = Path(folder)
    package = package or folder.name
    seen: set[Path] = set()
    todo = [Path(entry)]
    while todo:
        f = todo.pop()
        key = f.resolve()
        if key in {s.resolve() for s in seen}:
            continue
        seen.add(f)
        todo.extend(_imports(f, folder, package))
    return sorted(seen, key=lambda p: p.relative_to(folder).as_posix())


def code_bytes(folder: Path, entry: Path, package: str | None = None) -> tuple[int, list[str]]:
    """(total bytes, the files counted, relative to folder)."""
    files = code_files(folder, entry, package)
    return sum(f.stat().st_size for f in files), [f.relative_to(folder).as_posix() for f in files]
