"""Known issues: a matrix override may say a cell fails for a tracked reason, until a date.

    overrides:
      - match: {guest: netbsd-amd64, backend: builtin}
        set:
          known_issue: {url: https://tracker/123, until: 2027-01-31, title: "NetBSD hangs probing ACPI"}

A cell that does not end as expected but carries a live known issue is `known`: reported, not a
failure of the run. Past `until` the issue has `expired`: the cell fails loudly, whatever it
did, so a forgotten override cannot hide a failure forever. A cell with a known issue that
ended as expected is `fixed`: the issue stopped happening, and the override can go.
Dates are judged on the day the cell started (its `started_at`), so a report rebuilt later says
what the run said.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass
from typing import Any

from harness.runner import yamlfile as y
from harness.model.result import PASS, CellResult

KNOWN, EXPIRED, FIXED = "known", "expired", "fixed"
KNOWN_ISSUE_KEYS = ("url", "until", "title")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


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


def parse_known_issue(value: Any, parent: y.YMap, what: str) -> KnownIssue:
    """Validate `known_issue:` with the file and line of whatever is wrong."""
    data = y.require_map(value, parent, "known_issue", what)
    y.check_keys(data, KNOWN_ISSUE_KEYS, what, required=KNOWN_ISSUE_KEYS)
    url = y.get_typed(data, "url", str, "", what)
    if not re.match(r"^https?://\S+$", url):
        raise y.fail(data, "url", f"{what}.url {url!r} is not an http(s) URL", "give the tracker URL of the issue")
    until = data["until"]
    text = until.isoformat() if isinstance(until, dt.date) else str(until)
    try:
        if not _DATE.match(text):
            raise ValueError(text)
        dt.date.fromisoformat(text)
    except ValueError:
        raise y.fail(data, "until", f"{what}.until {until!r} is not a date", "write until: YYYY-MM-DD") from None
    title = y.get_typed(data, "title", str, "", what).strip()
    if not title:
        raise y.fail(data, "title", f"{what}.title is empty", "say in a few words what the issue is")
    return KnownIssue(url, text, title)


def _run_day(result: CellResult) -> dt.date:
    try:
        return dt.datetime.fromisoformat(result.started_at).date()
    except (TypeError, ValueError):
        return dt.datetime.now(dt.timezone.utc).date()


def as_expected(result: CellResult) -> bool:
    """The cell ended as the matrix expects (pass, unless an override says e.g. `expect: gap`)."""
    expect = result.params.get("expect") if isinstance(result.params, dict) else None
    return result.outcome == PASS or (bool(expect) and result.outcome == expect)


def known_issue_status(result: CellResult) -> str | None:
    """known | expired | fixed, or None for a cell without a known issue."""
    if not isinstance(result.known_issue, dict):
        return None
    issue = KnownIssue.from_json(result.known_issue)
    if as_expected(result):
        return FIXED
    return EXPIRED if issue.expired_on(_run_day(result)) else KNOWN


def cell_ok(result: CellResult) -> bool:
    """Ended as expected, or failed under a live known issue. The one verdict every report uses."""
    return as_expected(result) or known_issue_status(result) == KNOWN


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
