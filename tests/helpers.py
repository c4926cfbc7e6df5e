"""What several test files use: the adapt-then-score source the static tests audit, the line of a
marked statement, and how an expected function name matches a finding's."""
from __future__ import annotations

from pathlib import Path


def adapt_then_score(name: str = "eval_ttt") -> str:
    """The adapt-then-score loop of PR #518 as a function `name`: each chunk is trained on
    (`opt.step()`, the body's sixth line) before it is scored (`nll = model(x, y)`, the ninth)."""
    return f'''def {name}(model, val_tokens, opt, chunks):
    loss_sum = 0.0
    for s, e in chunks:
        x, y = val_tokens[s:e], val_tokens[s + 1:e + 1]
        loss = model(x, y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            nll = model(x, y)
        loss_sum += nll.item()
    return loss_sum
'''


def marker_line(path: str | Path, marker: str) -> int:
    """The line number (1-based) of the one statement in `path` that ends with `# <marker>`."""
    lines = Path(path).read_text().splitlines()
    hits = [i + 1 for i, s in enumerate(lines) if s.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def function_matches(found: str | None, wanted: str) -> bool:
    """`wanted` names a function; a qualified name (Class.method, outer.<locals>.inner) matches
    on its last components."""
    if not found:
        return False
    return found == wanted or found.endswith("." + wanted)
