"""Flakes and regression calls: tries, --retry-failures, passed on retry in JUnit, (1-p)^N confidence."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from runner_repo import PANICKING, PASSING, harness, make_repo

from harness.model.result import CellResult
from harness.model.rundir import RunDir
from harness.report import write_reports
from harness.report.diff import diff_results
from harness.report.flakes import CONFIRMED, FLAKY, UNCONFIRMED, flake_stats, regression_call
from harness.runner.execute import RunOptions, run_cell
from harness.runner.guestfile import load_guests
from harness.runner.matrix import load_matrix


def res(outcome: str, tries: list[str] | None = None, repeat: int = 0) -> CellResult:
    cid = "g@builtin/default/emulate/1c/64M" + (f"#r{repeat}" if repeat else "")
    r = CellResult(cid, "g", "builtin", {"expect": "pass"}, outcome, repeat_index=repeat)
    r.tries = [{"outcome": o, "reason": "", "duration_s": 1.0} for o in (tries or [outcome])]
    return r


def test_confidence_is_one_minus_chance_of_n_failures_by_luck():
    base = [res("pass"), res("pass", repeat=1), res("pass", repeat=2)]   # p = (3+1)/(3+2) = 0.8
    call = regression_call(base, [res("fail", ["fail", "fail"])])
    assert call.status == CONFIRMED and call.pass_probability == 0.8
    assert call.confidence == pytest.approx(1 - 0.2 ** 2)
    assert "confidence 96.0%" in call.describe()


def test_a_single_failure_is_not_called_a_regression():
    base, new = [res("pass")], [res("fail")]
    call = regression_call(base, new)
    assert call.status == UNCONFIRMED and call.confidence == 0.0
    diff = diff_results("a", base, "b", new)
    assert diff.regressions == [] and diff.cells[0].call.status == UNCONFIRMED


def test_a_failure_that_passed_on_retry_is_a_flake_not_a_regression():
    call = regression_call([res("pass")], [res("pass", ["fail", "pass"])])
    assert call.status == FLAKY
    stat = flake_stats([res("pass", ["fail", "pass"]), res("pass", repeat=1)])["g@builtin/default/emulate/1c/64M"]
    assert (stat.tries, stat.failed, stat.passed_on_retry, stat.flaky) == (3, 1, 1, True)
    assert stat.rate == pytest.approx(1 / 3)


def test_errors_do_not_count_as_tries_of_the_guest():
    stat = flake_stats([res("pass", ["error", "pass"])])["g@builtin/default/emulate/1c/64M"]
    assert (stat.tries, stat.failed) == (1, 0)


def _cells(repo: Path):
    guests = load_guests(repo / "guests")
    return {c.guest.name: c for c in load_matrix(repo / "matrix.yaml", guests).cells(guests)}


def _flip_on_retry(transcript: Path, to: str):
    """Progress callback: when the runner announces a retry, the guest behaves differently (a flake)."""
    def progress(info: dict) -> None:
        if "retrying" in info:
            transcript.write_text(to % {"delay": 0.3} if "%" in to else to)
    return progress


def test_passed_on_retry_end_to_end_keeps_both_consoles_and_marks_junit(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=0, panicking=1)
    cell = _cells(repo)["bad00"]
    run = tmp_path / "run"
    result = run_cell(cell, RunOptions(run_dir=run, failure_retries=2,
                                       progress=_flip_on_retry(repo / "transcripts" / "bad00.yaml", PASSING)))
    assert result.outcome == "pass" and [t["outcome"] for t in result.tries] == ["fail", "pass"]
    first = run / result.tries[0]["console_log"]
    assert first.parent.name.endswith("-try1") and b"deliberate panic" in first.read_bytes()
    assert b"fixture login:" in (run / result.console_log).read_bytes()
    write_reports(run)
    case = next(ET.parse(run / "junit.xml").getroot().iter("testcase"))
    assert case.find("failure") is None
    flaky = case.find("flakyFailure")
    assert flaky is not None and flaky.get("type") == "fail" and "passed on retry" in flaky.text
    assert {p.get("name"): p.get("value") for p in case.iter("property")}["flaky"] == "passed on retry (try 2)"
    flakes = json.loads((run / "results.json").read_text())["triage"]["flakes"]
    assert [(f["cell_id"], f["tries"], f["failed"], f["passed_on_retry"]) for f in flakes] == [
        ("bad00@replay/default/emulate/1c/64M", 2, 1, 1)]


@pytest.mark.slow   # ~7 s: a harness run with three tries of a failing cell
def test_retry_failures_option_retries_until_the_budget(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=1, panicking=1)
    run = repo / "reports" / "r"
    proc = harness("run", "--retry-failures", "2", "--report-dir", str(run), "--no-live", cwd=repo)
    assert proc.returncode == 1
    by_id = {r.cell_id.split("@")[0]: r for r in RunDir(run).results()}
    assert [t["outcome"] for t in by_id["bad01"].tries] == ["fail", "fail", "fail"] and by_id["bad01"].attempts == 3
    assert [t["outcome"] for t in by_id["g00"].tries] == ["pass"]


STOPPED_BY_GAP = """\
- {at: 0.05, out: "fixture: entry replay\\n"}
- {at: 0.10, event: gap, data: {kind: host-emulation-failure, key: xrstor, fate: stopped, policy: emulate}}
"""


@pytest.mark.slow   # ~16 s: two runs of six replay cells, one with retries
def test_two_runs_show_a_known_issue_a_flake_a_confirmed_regression_and_every_culprit(tmp_path: Path):
    """The morning page: baseline run A, tonight's run B (with --retry-failures 1), report B against A."""
    repo = make_repo(tmp_path / "repo", passing=4, panicking=1)
    transcripts = repo / "transcripts"
    (repo / "matrix.yaml").write_text((repo / "matrix.yaml").read_text() + """\
overrides:
  - match: {guest: bad04}
    set:
      known_issue: {url: 'https://bugs.example/4', until: 2099-01-01, title: 'replay panic'}
""")
    run_a = repo / "reports" / "a"
    harness("run", "--report-dir", str(run_a), "--no-live", cwd=repo, check=True)
    # tonight: g01 regressed (panics on every try), g02 is flaky (fails, then passes on retry),
    # g03 stops on an emulation gap, g00 still passes, bad04 still fails under its known issue
    (transcripts / "g01.yaml").write_text(PANICKING)
    (transcripts / "g02.yaml").write_text(PANICKING)
    (transcripts / "g03.yaml").write_text(STOPPED_BY_GAP)
    cells = _cells(repo)
    run_b = repo / "reports" / "b"
    for name, cell in sorted(cells.items()):
        progress = _flip_on_retry(transcripts / "g02.yaml", PASSING) if name == "g02" else None
        run_cell(cell, RunOptions(run_dir=run_b, failure_retries=1, progress=progress))
    # and one cell the harness could not even start: its transcript is gone
    (transcripts / "g00.yaml").unlink()
    broken = cells["g00"]
    broken.guest.name = "g05"
    run_cell(broken, RunOptions(run_dir=run_b))

    write_reports(run_b, run_a)
    results = json.loads((run_b / "results.json").read_text())
    triage = results["triage"]
    failed = {c["key"].split("@")[0]: c for c in results["cells"] if not c["ok"]}
    assert set(failed) == {"g01", "g03", "g05"}
    assert {k: c["culprit"]["party"] for k, c in failed.items()} == {"g01": "guest", "g03": "hypervisor",
                                                                      "g05": "harness"}
    assert failed["g03"]["culprit"]["gap"]["key"] == "xrstor"
    assert [(k["cell"].split("@")[0], k["status"]) for k in triage["known_issues"]] == [("bad04", "known")]
    assert [f["cell_id"].split("@")[0] for f in triage["flakes"]] == ["g02"]
    calls = {c["cell_id"].split("@")[0]: c["call"] for c in results["baseline"]["cells"] if c["call"]}
    assert calls["g01"]["status"] == "confirmed" and calls["g01"]["confidence"] == pytest.approx(1 - (1 / 3) ** 2)
    assert calls["g02"]["status"] == "flaky"

    summary = (run_b / "summary.md").read_text()
    for text in ("| guest |", "| hypervisor (host-emulation-failure xrstor) |", "| harness |",
                 "## Known issues (1)", "## Flaky cells (1)", "regression confirmed: failed 2 of 2 tries"):
        assert text in summary, text
    html = (run_b / "index.html").read_text()
    assert 'id="triage"' in html and "replay panic" in html and "passed on try 2" in html
    types = {c.get("name").split("@")[0]: (c.find("failure") if c.find("failure") is not None else c.find("error"))
             for c in ET.parse(run_b / "junit.xml").getroot().iter("testcase")}
    assert {k: v.get("type") for k, v in types.items() if v is not None} == {
        "g01": "guest", "g03": "hypervisor", "g05": "harness"}


def test_merge_keeps_the_consoles_of_earlier_tries(tmp_path: Path):
    from harness.report import merge_runs
    repo = make_repo(tmp_path / "repo", passing=0, panicking=1)
    run = tmp_path / "shard"
    result = run_cell(_cells(repo)["bad00"], RunOptions(run_dir=run, failure_retries=1))
    assert [t["outcome"] for t in result.tries] == ["fail", "fail"]
    merged = merge_runs([run], tmp_path / "merged")
    first_try = merged / result.tries[0]["console_log"]
    assert first_try.parent.name.endswith("-try1") and b"deliberate panic" in first_try.read_bytes()
