"""`known_issue:` in a matrix override, validated with file and line (the verdict it feeds is
harness.model.verdict)."""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

from harness.model.verdict import KnownIssue
from harness.runner import yamlfile as y

KNOWN_ISSUE_KEYS = ("url", "until", "title")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


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
