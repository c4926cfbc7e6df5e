"""The registry: every rule module in `rules/`, found by walking the package, one instance each.

This is the one place in `harness/` that lists rules; everything else asks the registry."""
from __future__ import annotations

import importlib
import pkgutil

from harness.core.rule import Rule


def _rule_classes() -> list[type[Rule]]:
    import rules as rules_pkg

    found: list[type[Rule]] = []
    for info in sorted(pkgutil.iter_modules(rules_pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"rules.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Rule) and obj is not Rule and obj.__module__ == module.__name__:
                found.append(obj)
    return found


# The SARIF id of golf-audit's own check on its input (a suppression comment that suppresses
# nothing or gives no reason; harness/reports/sarif.py). Rule ids and this one are one namespace,
# so it is kept here, below the first rule's, and no rule may take it.
UNUSED_SUPPRESSION_ID = "GA000"

_REGISTRY: list[Rule] | None = None


def all_rules() -> list[Rule]:
    """Every rule in `rules/`, one instance each, ordered by id. Ids and names must be unique."""
    global _REGISTRY
    if _REGISTRY is None:
        instances = [cls() for cls in _rule_classes()]
        instances.sort(key=lambda r: r.id)
        ids = [r.id for r in instances]
        names = [r.name for r in instances]
        if len(set(ids)) != len(ids) or len(set(names)) != len(names) or UNUSED_SUPPRESSION_ID in ids:
            raise RuntimeError(f"duplicate rule id or name in rules/: {ids} {names}")
        _REGISTRY = instances
    return _REGISTRY


def rule_by_name(name: str) -> Rule | None:
    for rule in all_rules():
        if rule.name == name or rule.id == name:
            return rule
    return None
