"""`harness report` in process through the real parser (harness_cli in tests/conftest.py)."""
import json

import pytest

from fakerun import make_cell, make_run
from harness.errors import HarnessError


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = make_run(tmp_path / "reports" / "r1", "r1", shard="1/2")
    make_cell(a)
    b = make_run(tmp_path / "reports" / "r2", "r2", shard="2/2")
    make_cell(b, times=[0.05, 0.2, 0.9, 1.0])
    make_cell(b, guest="netbsd-10", backend="qemu-tcg", outcome="timeout", reached=1, gaps=[])
    return a, b


def test_report_newest_with_baseline(runs, harness_cli):
    a, b = runs
    code, out = harness_cli(["report", "--baseline", "r1"])
    assert code == 0 and "index.html" in out and "1 regressed" in out
    assert (b / "index.html").exists() and (b / "junit.xml").exists()
    assert json.loads((b / "results.json").read_text())["baseline"]["regressions"] == 1


def test_open_without_display_prints_the_uri(runs, harness_cli, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code, out = harness_cli(["report", "r1", "--open"])
    assert code == 0 and "no display here; open file://" in out and out.rstrip().endswith("index.html in a browser")


def test_report_diff_exit_code(runs, harness_cli):
    code, out = harness_cli(["report", "diff", "r1", "r2"])
    assert code == 1 and "REGRESSION fixture-pvh" in out and "only in r2" in out
    code, out = harness_cli(["report", "diff", "r1", "r1", "--format", "json"])
    assert code == 0 and json.loads(out)["regressions"] == 0


def test_report_merge(runs, harness_cli, tmp_path):
    code, out = harness_cli(["report", "merge", "r1", "r2", "--out", "merged"])
    assert code == 0 and (tmp_path / "merged" / "index.html").exists()
    data = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert len(data["cells"]) == 2           # the pvh cell in both shards counted once
    with pytest.raises(HarnessError):
        harness_cli(["report", "merge", "r1"])


def test_report_errors(tmp_path, monkeypatch, harness_cli):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HarnessError) as e:
        harness_cli(["report"])
    assert "no runs under reports" in e.value.problem
