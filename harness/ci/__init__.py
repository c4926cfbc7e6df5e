"""The pull-request gate's parts: git inspection (git_changes), the summary comment (summary),
the claims SARIF run (claims_sarif) and the pre-commit entry point (precommit).
`harness.ci.gate` ties them together."""
