"""Whole-folder call resolution (harness/static/project.py): which function a call reaches."""
from __future__ import annotations

import textwrap

from harness.static.engine import build_context
from harness.static.project import Project


def _project(**files: str) -> Project:
    return Project([build_context(textwrap.dedent(src), f"{name}.py") for name, src in files.items()])


def _calls_of(project: Project, qualname: str) -> list[tuple[str, str]]:
    """(caller, line text) of every resolved call of `qualname`."""
    for ctx, fn in project.functions():
        if fn.qualname == qualname:
            return [(s.fn.qualname, s.ctx.lines[s.stmt.line - 1].strip()) for s in project.sites(fn)]
    raise KeyError(qualname)


def test_a_method_of_an_object_the_caller_builds_is_resolved():
    # the n-gram cache shape of PR #769: built in the eval, updated through the object
    p = _project(train_gpt="""
        class NgramCache:
            def update(self, toks): pass
        class Other:
            def update(self, toks): pass
        def eval_val(toks):
            cache = NgramCache(3)
            cache.update(toks)
        def train(toks):
            opt = make_optimizer()
            opt.update(toks)
    """)
    assert _calls_of(p, "NgramCache.update") == [("eval_val", "cache.update(toks)")]
    assert _calls_of(p, "Other.update") == []  # `opt` comes from a factory: not guessed


def test_an_attribute_of_self_and_an_imported_class():
    p = _project(
        ngram="""
            class Cache:
                def lookup(self, k): return 0
        """,
        train_gpt="""
            import ngram
            from ngram import Cache
            class Scorer:
                def __init__(self):
                    self.cache = Cache()
                def score(self, k):
                    return self.cache.lookup(k)
            def eval_val(k):
                c = ngram.Cache()
                return c.lookup(k)
        """)
    assert sorted(_calls_of(p, "Cache.lookup")) == [("Scorer.score", "return self.cache.lookup(k)"),
                                                    ("eval_val", "return c.lookup(k)")]


def test_the_nearest_assignment_before_the_call_wins():
    p = _project(train_gpt="""
        class A:
            def step(self): pass
        class B:
            def step(self): pass
        def run():
            m = A()
            m.step()
            m = B()
            m.step()
    """)
    assert _calls_of(p, "A.step") == [("run", "m.step()")]
    assert len(_calls_of(p, "B.step")) == 1
