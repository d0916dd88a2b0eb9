import json
import xml.etree.ElementTree as ET

import pytest

from fakerun import fixture_gaps, make_cell, make_run, xrstor_gap
from harness.errors import HarnessError
from harness.report import diff_runs, merge_runs, write_reports
from harness.report.results import RESULTS_SCHEMA_VERSION
from harness.report.run import load_run

EVIL = "<script>alert('x')</script> <img src=x onerror=alert(1)> ]]> \x1b[31mred\x1b[0m \x00\x07 & done\n"


def mixed_run(path, run_id="run-a"):
    run = make_run(path, run_id)
    make_cell(run, policy="emulate")
    make_cell(run, policy="gp")
    make_cell(run, guest="linux-amd64-pvh", outcome="gap", reached=2, gaps=fixture_gaps()[:1] + [xrstor_gap()],
              console_extra=EVIL)
    make_cell(run, guest="netbsd-10", backend="qemu-tcg", outcome="timeout", reached=1, gaps=[])
    make_cell(run, guest="openbsd-7", backend="qemu-tcg", outcome="error", reached=0, gaps=[])
    return run


def test_junit_parses_with_right_counts(tmp_path):
    run = mixed_run(tmp_path / "r")
    paths = write_reports(run)
    root = ET.parse(paths["junit"]).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "2", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"builtin", "qemu-tcg"}
    assert (suites["builtin"].get("tests"), suites["builtin"].get("failures")) == ("3", "1")
    assert (suites["qemu-tcg"].get("failures"), suites["qemu-tcg"].get("errors")) == ("1", "1")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    gap = cases["linux-amd64-pvh@builtin/default/emulate/1c/64M"].find("failure")
    assert gap.get("type") == "hypervisor" and gap.get("message").startswith("gap:")   # type= is the culprit
    assert gap.text.startswith("culprit: hypervisor")
    assert "near miss: waiting for milestone 'probes'" in gap.text
    assert "new gap: host-emulation-failure xrstor" in gap.text
    assert "<script>" in gap.text and "\x00" not in gap.text       # text, and XML-safe
    timeout = cases["netbsd-10@qemu-tcg/default/emulate/1c/64M"]
    assert timeout.find("failure").get("type") == "guest"
    assert "console.log" in timeout.find("system-out").text
    assert cases["fixture-pvh@builtin/default/gp/1c/64M"].find("failure") is None


def test_expected_outcome_is_not_a_failure(tmp_path):
    run = make_run(tmp_path / "r")
    res = make_cell(run, guest="linux-amd64-pvh", outcome="gap", reached=2)
    res.params["expect"] = "gap"
    from harness.model.rundir import RunDir
    RunDir(run).write_result(res)
    root = ET.parse(write_reports(run)["junit"]).getroot()
    assert root.get("failures") == "0"


def test_results_json_schema_and_ledger(tmp_path):
    run = mixed_run(tmp_path / "r")
    data = json.loads(write_reports(run)["results"].read_text())
    assert data["schema"] == "harness.results" and data["schema_version"] == RESULTS_SCHEMA_VERSION == 1
    assert data["run"]["run_id"] == "run-a"
    assert data["summary"]["by_outcome"] == {"pass": 2, "fail": 0, "gap": 1, "timeout": 1, "error": 1}
    assert len(data["cells"]) == 5 and all("gaps" in c and "ok" in c for c in data["cells"])
    tsc = [g for g in data["gaps"] if g["kind"] == "tsc-msr"]
    assert len(tsc) == 1 and len(tsc[0]["cells"]) == 3           # merged over cells
    assert tsc[0]["id"].startswith("fixture/tsc-msr/0x10#")
    assert len(tsc[0]["new_in"]) == 3           # no baseline in this run: new everywhere
    assert data["baseline"] is None
    assert (tmp_path / "r" / "results.json").stat().st_mode & 0o044   # readable by CI uploaders


def test_killed_run_renders(tmp_path):
    run = tmp_path / "killed"
    make_cell(run)                       # no run.json: the runner died before/while writing it
    (run / "cells" / ".fixture-x.json.abc123.tmp").write_text('{"cell_id": "torn')
    (run / "cells" / "torn.json").write_text('{"cell_id": "half')
    paths = write_reports(run)
    data = json.loads(paths["results"].read_text())
    assert len(data["cells"]) == 1 and data["skipped_files"] == ["torn.json"]
    assert "1 unreadable cell files skipped" in paths["html"].read_text()
    assert ET.parse(paths["junit"]).getroot().get("tests") == "1"


def test_not_a_run_dir_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError):
        write_reports(tmp_path / "nothing")


def test_html_escapes_console_text(tmp_path):
    run = mixed_run(tmp_path / "r")
    page = write_reports(run)["html"].read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "\x1b" not in page and "\x00" not in page
    assert "␀␇" in page                       # control characters shown as pictures
    assert page.count("<script>") == 2        # only the page's own two scripts
    assert 'id="c-linux-amd64-pvh_builtin_default_emulate_1c_64M-ms-0"' in page   # milestone anchors


def test_html_has_every_cell_and_sections(tmp_path):
    run = mixed_run(tmp_path / "r")
    page = write_reports(run)["html"].read_text()
    for view in load_run(run).cells:
        assert f'id="c-{view.slug}"' in page and f'href="#c-{view.slug}"' in page
    for part in ('id="matrix"', 'id="gaps"', "<svg class=\"timeline\"", "VM exits per phase", "Flight recorder",
                 "Near miss"):
        assert part in page


def test_merge_two_shards_union_without_duplicates(tmp_path):
    a, b = make_run(tmp_path / "a", "s1", shard="1/2"), make_run(tmp_path / "b", "s2", shard="2/2")
    make_cell(a, policy="emulate")
    make_cell(a, policy="gp", outcome="error", reached=0, gaps=[])
    make_cell(b, policy="gp", attempts=2)                      # retried in shard 2: later attempt wins
    make_cell(b, policy="zero")
    out = merge_runs([a, b], tmp_path / "m")
    merged = load_run(out)
    assert sorted(c.result.cell_id for c in merged.cells) == [
        "fixture-pvh@builtin/default/emulate/1c/64M", "fixture-pvh@builtin/default/gp/1c/64M",
        "fixture-pvh@builtin/default/zero/1c/64M"]
    gp = next(c for c in merged.cells if "/gp/" in c.result.cell_id)
    assert gp.result.outcome == "pass" and gp.result.attempts == 2
    assert gp.console_path is not None and b"fixture login:" in gp.console_bytes()
    run_json = json.loads((out / "run.json").read_text())
    assert [s["shard"] for s in run_json["shards"]] == ["1/2", "2/2"]
    # merging again (or the same shard twice) gives no duplicates
    again = merge_runs([a, b, b], tmp_path / "m2")
    assert len(load_run(again).cells) == 3
    with pytest.raises(HarnessError):
        merge_runs([a], a)


def test_merge_keeps_repeats_apart(tmp_path):
    a = make_run(tmp_path / "a")
    for i in range(3):
        make_cell(a, repeat_index=i)
    out = merge_runs([a], tmp_path / "m")
    cells = load_run(out).cells
    assert sorted(c.result.repeat_index for c in cells) == [0, 1, 2]
    # repeats live in cells/<slug>-rN (the runner's layout); their consoles travel with them
    assert sorted(str(c.work_rel) for c in cells) == [
        "cells/fixture-pvh_builtin_default_emulate_1c_64M", "cells/fixture-pvh_builtin_default_emulate_1c_64M-r1",
        "cells/fixture-pvh_builtin_default_emulate_1c_64M-r2"]
    assert all(c.console_path is not None and c.console_path.is_relative_to(out) for c in cells)
    assert sorted(c.key for c in cells)[-1] == "fixture-pvh@builtin/default/emulate/1c/64M#r2"


def test_diff_runs_and_baseline_report(tmp_path):
    base = make_run(tmp_path / "base", "base")
    new = make_run(tmp_path / "new", "new")
    for i in range(5):
        make_cell(base, repeat_index=i, times=[0.05, 0.2 + i * 0.01, 0.45 + i * 0.01, 0.6 + i * 0.01])
        make_cell(new, repeat_index=i, times=[0.05, 0.2 + i * 0.01, 0.75 + i * 0.01, 0.9 + i * 0.01],
                  gaps=[g for g in fixture_gaps() if g.key != "0x2ff"])
    make_cell(base, guest="netbsd-10", backend="qemu-tcg")
    make_cell(new, guest="netbsd-10", backend="qemu-tcg", outcome="timeout", reached=2)
    d = diff_runs(base, new)
    assert len(d.regressions) == 2
    pvh = next(c for c in d.cells if c.cell_id.startswith("fixture-pvh"))
    assert pvh.slower == ["probes"] and [g["key"] for g in pvh.gaps_fixed] == ["0x2ff"] and not pvh.gaps_new
    nb = next(c for c in d.cells if c.cell_id.startswith("netbsd"))
    assert nb.outcome_b == "timeout" and nb.milestones_lost == ["probes", "login"]
    text = d.to_text()
    assert "REGRESSION fixture-pvh" in text and "Mann-Whitney" in text and "gap fixed mtrr-probe 0x2ff" in text
    assert json.loads(d.to_json())["regressions"] == 2
    paths = write_reports(new, base)
    summary = paths["summary"].read_text()
    assert "## Regressions against base (2)" in summary and "phase probes slower" in summary
    assert "Mann-Whitney" in summary and "N=5" in summary
    page = paths["html"].read_text()
    assert 'id="baseline"' in page and 'id="timing"' in page
    # the same run against itself: nothing regressed
    assert diff_runs(new, new).regressions == []


def test_large_console_is_tailed_and_linked(tmp_path):
    run = make_run(tmp_path / "r")
    make_cell(run, console_extra="x" * 300_000 + "\nlast line\n")
    page = write_reports(run)["html"].read_text()
    assert "showing the last 131072" in page and "last line" in page
    assert 'href="cells/fixture-pvh_builtin_default_emulate_1c_64M/console.log"' in page
    assert len(page) < 400_000


def test_summary_neutralises_markdown_from_guests(tmp_path):
    run = make_run(tmp_path / "r")
    res = make_cell(run, outcome="fail", reached=2)
    res.reason = "panic | [click](http://evil) <b>x</b>\nsecond line"
    from harness.model.rundir import RunDir
    RunDir(run).write_result(res)
    summary = write_reports(run)["summary"].read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| fixture-pvh"))
    assert r"panic \| \[click\](http://evil) \<b\>x\</b\> second line" in row
    assert row.count(" | ") == 4          # still five columns (cell, outcome, culprit, reason, milestone)


def test_run_without_finished_cells_renders(tmp_path):
    run = make_run(tmp_path / "empty")
    paths = write_reports(run)
    assert "No finished cells." in paths["html"].read_text()
    assert ET.parse(paths["junit"]).getroot().get("tests") == "0"
    assert json.loads(paths["results"].read_text())["summary"]["cells"] == 0


def test_timeline_marks_gaps_at_first_sighting(tmp_path):
    run = make_run(tmp_path / "r")
    make_cell(run)
    page = write_reports(run)["html"].read_text()
    assert page.count('class="gapmark"') == len(fixture_gaps())
    assert "tsc-msr 0x10 first at 100 ms" in page


def test_incomplete_run_says_so(tmp_path):
    run = make_run(tmp_path / "r")
    meta = json.loads((run / "run.json").read_text())
    meta.update(cells_selected=3, repeat=2)
    (run / "run.json").write_text(json.dumps(meta))
    make_cell(run)
    paths = write_reports(run)
    assert json.loads(paths["results"].read_text())["summary"]["expected_cells"] == 6
    assert "Incomplete: 1 of 6 cells finished" in paths["html"].read_text()
    assert "Incomplete: 1 of 6 cells finished" in paths["summary"].read_text()
