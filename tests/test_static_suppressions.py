"""`# golf-audit: ignore[name] -- reason` comments: on the finding's line or the line above, a
reason is required, suppressed hits stay listed, unused or reasonless suppressions are reported."""
from __future__ import annotations

from harness.core.findings import ExitCode
from harness.static.audit import audit_source

CODE = '''import urllib.request{same}


def fetch(url):
{above}
    return urllib.request.urlopen(url).read()
'''


def _audit(same: str = "", above: str = ""):
    return audit_source(CODE.format(same=same, above=above or "    pass"))


def test_no_suppression_fails():
    result = _audit()
    assert {f.location.line for f in result.active_findings} == {1, 6}
    assert result.exit_code() == ExitCode.FINDINGS


def test_suppression_on_the_line_and_the_line_above():
    result = _audit(same="  # golf-audit: ignore[network-at-eval] -- offline mirror, never called",
                    above="    # golf-audit: ignore[GA005] -- dead helper kept for reference")
    assert len(result.findings) == 2, "suppressed findings stay in the report"
    assert all(f.suppressed for f in result.findings)
    assert result.findings[0].suppressed == "offline mirror, never called"
    assert result.unused_suppressions == []
    assert result.exit_code() == ExitCode.CLEAN


def test_reason_is_required():
    result = _audit(same="  # golf-audit: ignore[network-at-eval]")
    assert not [f for f in result.findings if f.location.line == 1 and f.suppressed]
    assert len(result.unused_suppressions) == 1
    assert "no reason" in result.unused_suppressions[0].source_line
    assert result.exit_code() == ExitCode.FINDINGS


def test_unused_and_wrong_rule_are_reported():
    result = _audit(same="  # golf-audit: ignore[train-before-score] -- not this rule")
    assert [s.line for s in result.unused_suppressions] == [1]
    assert all(f.suppressed is None for f in result.findings)
