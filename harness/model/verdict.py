"""The verdict on a cell: ended as expected, or failed under a live known issue (`cell_ok`).

Known issues: a matrix override may say a cell fails for a tracked reason, until a date.

    overrides:
      - match: {guest: netbsd-amd64, backend: builtin}
        set:
          known_issue: {url: https://tracker/123, until: 2027-01-31, title: "NetBSD hangs probing ACPI"}

A cell that does not end as expected but carries a live known issue is `known`: reported, not a
failure of the run. Past `until` the issue has `expired`: the cell fails loudly, whatever it
did, so a forgotten override cannot hide a failure forever. A cell with a known issue that
ended as expected is `fixed`: the issue stopped happening, and the override can go.
Dates are judged on the day the cell started (its `started_at`), so a report rebuilt later says
what the run said. The matrix validates `known_issue:` (harness.runner.known_issues); the runner,
the CLI, the CI verdict and every report read the verdict here.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from harness.model.result import CellResult, ended_as_expected

KNOWN, EXPIRED, FIXED = "known", "expired", "fixed"


@dataclass(frozen=True)
class KnownIssue:
    url: str
    until: str          # YYYY-MM-DD, the last day the issue may excuse a failure
    title: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "KnownIssue":
        return cls(str(data["url"]), str(data["until"]), str(data["title"]))

    def expired_on(self, day: dt.date) -> bool:
        return day > dt.date.fromisoformat(self.until)


def _run_day(result: CellResult) -> dt.date:
    try:
        return dt.datetime.fromisoformat(result.started_at).date()
    except (TypeError, ValueError):
        return dt.datetime.now(dt.timezone.utc).date()


def known_issue_status(result: CellResult) -> str | None:
    """known | expired | fixed, or None for a cell without a known issue."""
    if not isinstance(result.known_issue, dict):
        return None
    issue = KnownIssue.from_json(result.known_issue)
    if ended_as_expected(result):
        return FIXED
    return EXPIRED if issue.expired_on(_run_day(result)) else KNOWN


def cell_ok(result: CellResult) -> bool:
    """Ended as expected, or failed under a live known issue. The one verdict every report uses."""
    return ended_as_expected(result) or known_issue_status(result) == KNOWN


def known_issue_note(result: CellResult) -> str:
    """One line for a cell's known issue, or ''."""
    status = known_issue_status(result)
    if status is None:
        return ""
    issue = KnownIssue.from_json(result.known_issue or {})
    say = {KNOWN: f"known issue until {issue.until}",
           EXPIRED: f"EXPIRED known issue (until {issue.until}): fix it or extend `until`",
           FIXED: "known issue no longer happens: remove the override"}[status]
    return f"{say}: {issue.title} <{issue.url}>"
