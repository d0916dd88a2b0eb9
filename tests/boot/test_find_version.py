"""find_version: the leftmost banner, as a regex search would find it, without scanning with the regex."""
from __future__ import annotations

import pytest

from harness.boot import _VERSION_RE, find_version


@pytest.mark.parametrize("data", [
    b"xx NetBSD 9.3 (GENERIC) #0 foo\0",
    b"NetBSD x NetBSD 10.0 (X) y\n Linux version 6 z",      # a false start, then a later real one
    b"Linux version 6.1.0 (a) b\nNetBSD 9.3 (G) b",
    b"FreeBSD 14.0-RELEASE (GENERIC) a",
    b"\0" * 100000 + b"OpenBSD 7.4 (GENERIC.MP) #1",
    b"nothing here",
])
def test_same_answer_as_a_regex_search(data: bytes):
    match = _VERSION_RE.search(data)
    assert find_version(data) == (match.group(0).decode("ascii", "replace").strip() if match else "")
