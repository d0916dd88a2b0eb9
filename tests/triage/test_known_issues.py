"""Known issues in matrix overrides: validation with file:line, live / expired / fixed, in run and reports."""
from __future__ import annotations

import datetime as dt
import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from runner_repo import harness, make_repo

from harness.errors import ConfigError
from harness.runner.guestfile import load_guests
from harness.runner.matrix import load_matrix

MATRIX = """\
version: 1
entries:
  - guests: ['*']
    backends: [replay]
overrides:
  - match: {guest: %(guest)s}
    set:
      known_issue: %(issue)s
"""


def write_matrix(repo: Path, guest: str, issue: str) -> None:
    (repo / "matrix.yaml").write_text(MATRIX % {"guest": guest, "issue": issue})


@pytest.mark.parametrize("issue, line, words", [
    ("{url: 'not a url', until: 2030-01-01, title: t}", 8, "is not an http(s) URL"),
    ("{url: 'https://x/1', until: 'next week', title: t}", 8, "is not a date"),
    ("{url: 'https://x/1', until: 2030-02-30, title: t}", 8, "is not a date"),
    ("{url: 'https://x/1', title: t}", 8, "lacks required key 'until'"),
    ("{url: 'https://x/1', until: 2030-01-01, title: t, owner: me}", 8, "unknown key 'owner'"),
])
def test_bad_known_issue_is_a_one_line_error_with_its_line(tmp_path: Path, issue: str, line: int, words: str):
    repo = make_repo(tmp_path / "repo", passing=1)
    write_matrix(repo, "g00", issue)
    with pytest.raises(ConfigError) as err:
        load_matrix(repo / "matrix.yaml", load_guests(repo / "guests"))
    assert f"matrix.yaml:{line}:" in err.value.problem and words in err.value.problem


def test_live_known_issue_keeps_the_run_green_and_is_listed(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=1, panicking=1)
    write_matrix(repo, "bad01", "{url: 'https://bugs.example/42', until: 2099-12-31, title: 'deliberate panic'}")
    run = repo / "reports" / "r"
    proc = harness("run", "--report-dir", str(run), "--no-live", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "known issue until 2099-12-31: deliberate panic" in proc.stdout
    results = json.loads((run / "results.json").read_text())
    assert results["triage"]["known_issues"] == [
        {"cell": "bad01@replay/default/emulate/1c/64M", "status": "known", "outcome": "fail",
         "url": "https://bugs.example/42", "until": "2099-12-31", "title": "deliberate panic"}]
    summary = (run / "summary.md").read_text()
    assert "## Known issues (1)" in summary and "| known | bad01@replay" in summary
    assert "deliberate panic" in (run / "index.html").read_text()


def test_expired_known_issue_fails_loudly(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=1, panicking=1)
    write_matrix(repo, "bad01", "{url: 'https://bugs.example/42', until: 2020-01-01, title: 'deliberate panic'}")
    run = repo / "reports" / "r"
    proc = harness("run", "--report-dir", str(run), "--no-live", cwd=repo)
    assert proc.returncode == 1
    assert "EXPIRED known issue (until 2020-01-01)" in proc.stdout
    assert "| **EXPIRED** | bad01@replay" in (run / "summary.md").read_text()
    junit = ET.parse(run / "junit.xml").getroot()
    case = next(c for c in junit.iter("testcase") if c.get("name").startswith("bad01"))
    assert case.find("failure") is not None
    assert any("EXPIRED" in p.get("value") for p in case.iter("property"))


def test_known_issue_that_stopped_happening_is_shown_fixed(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=1)
    write_matrix(repo, "g00", f"{{url: 'https://bugs.example/7', until: {dt.date.today().isoformat()}, title: 'was flaky'}}")
    run = repo / "reports" / "r"
    harness("run", "--report-dir", str(run), "--no-live", cwd=repo, check=True)
    issues = json.loads((run / "results.json").read_text())["triage"]["known_issues"]
    assert [(k["status"], k["outcome"]) for k in issues] == [("fixed", "pass")]
    assert "| fixed | g00@replay" in (run / "summary.md").read_text()
