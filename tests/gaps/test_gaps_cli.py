"""`harness gaps` in process through the real parser (harness_cli in tests/conftest.py)."""
import csv
import io
import json

import pytest

from fakerun import fixture_gaps, make_cell, make_run
from harness.errors import HarnessError


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = make_run(tmp_path / "reports" / "r1", "r1")
    make_cell(a)
    make_cell(a, guest="fixture-mb", policy="gp")
    b = make_run(tmp_path / "reports" / "r2", "r2")
    make_cell(b, gaps=[g for g in fixture_gaps() if g.key != "0x2ff"])
    make_cell(b, guest="fixture-mb", policy="gp")
    import os
    os.utime(a / "run.json", (1, 1))      # r2 is the newest
    return a, b


def test_table_defaults_to_newest_run(runs, harness_cli):
    code, out = harness_cli(["gaps", "--guest", "fixture-pvh"])
    assert code == 0 and "6 gaps in 1 cells" in out and "i8042-wait" in out
    assert "fixture-pvh@builtin/default/emulate/1c/64M" in out and "0x2ff" not in out


def test_json_and_csv_with_filters(runs, harness_cli):
    code, out = harness_cli(["gaps", "reports/r1", "r2", "--kind", "mtrr-probe", "--format", "json"])
    rows = json.loads(out)
    assert {(r["run"], r["key"]) for r in rows} == {("r1", "0xfe"), ("r1", "0x2ff"), ("r2", "0xfe"), ("r2", "0x2ff")} and \
        len(rows) == 7
    _, out = harness_cli(["gaps", "r1", "--format", "csv", "--guest", "fixture-mb"])
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert len(parsed) == 7 and parsed[0]["cell_id"] == "fixture-mb@builtin/default/gp/1c/64M"


def test_diff_shows_the_absent_gap_as_fixed(runs, harness_cli):
    code, out = harness_cli(["gaps", "diff", "r1", "r2"])
    assert code == 0
    assert "0 new, 1 fixed" in out and "fixed  fixture-pvh@builtin/default/emulate/1c/64M  mtrr-probe 0x2ff" in out
    code, out = harness_cli(["gaps", "diff", "r2", "r1", "--format", "json"])
    assert code == 1 and list(json.loads(out)["cells"]) == ["fixture-pvh@builtin/default/emulate/1c/64M"]


def test_accept(runs, harness_cli, tmp_path):
    code, out = harness_cli(["gaps", "accept", "r1", "--guest", "fixture-mb", "--out", "base.yaml"])
    assert code == 0 and "wrote base.yaml" in out and "io-port" in (tmp_path / "base.yaml").read_text()


def test_user_errors(runs, harness_cli):
    with pytest.raises(HarnessError):
        harness_cli(["gaps", "no-such-run"])
    with pytest.raises(HarnessError):
        harness_cli(["gaps", "diff", "r1"])
    with pytest.raises(HarnessError) as e:
        harness_cli(["gaps", "accept", "r1", "--out", "x.yaml"])     # two guests, one file
    assert "--guest" in e.value.fix
