"""The morning page's triage: whose fault each failure is, known issues, flakes.

`build_triage` turns a run (and, when given, its baseline run's results) into the `triage`
section of results.json; summary.md and index.html render that section, so all three say the
same thing.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from harness.gaps.culprit import PARTIES
from harness.model.result import PASS, CellResult
from harness.model.verdict import KnownIssue, cell_ok, known_issue_status
from harness.report.culprits import run_culprits
from harness.report.flakes import flake_stats
from harness.report.run import RunData


def _culprits(run: RunData) -> list[dict[str, Any]]:
    out = []
    culprits = run_culprits(run)
    for c in run.cells:
        culprit = culprits.get(c.key)
        if culprit is not None:
            out.append({"cell": c.key, "outcome": c.result.outcome, "ok": cell_ok(c.result), **culprit.to_json()})
    return out


def _known_issues(run: RunData) -> list[dict[str, Any]]:
    out = []
    for c in run.cells:
        status = known_issue_status(c.result)
        if status is not None:
            issue = KnownIssue.from_json(c.result.known_issue or {})
            out.append({"cell": c.key, "status": status, "outcome": c.result.outcome, **issue.to_json()})
    return out


def _flakes(results: list[CellResult], runs: int) -> list[dict[str, Any]]:
    stats = flake_stats(results)
    return [{**s.to_json(), "runs": runs} for s in stats.values() if s.flaky or s.passed_on_retry]


def build_triage(run: RunData, baseline_results: list[CellResult] | None = None) -> dict[str, Any]:
    culprits = _culprits(run)
    across = None
    if baseline_results:
        across = _flakes(list(baseline_results) + run.results, runs=2)
    return {
        "culprits": culprits,
        "by_party": {p: sum(1 for c in culprits if c["party"] == p and not c["ok"]) for p in PARTIES},
        "known_issues": _known_issues(run),
        "flakes": _flakes(run.results, runs=1),
        "flakes_across_runs": across,
        "passed": sum(1 for c in run.cells if c.result.outcome == PASS),
    }


def known_issue_counts(triage: dict[str, Any]) -> dict[str, int]:
    return dict(Counter(k["status"] for k in triage.get("known_issues", [])))
