"""`harness gaps` through argparse the way harness.cli.main drives it (register + args.func)."""
import argparse
import csv
import io
import json

import pytest

from fakerun import fixture_gaps, make_cell, make_run
from harness.cli import gaps_cmd
from harness.errors import HarnessError


def harness(argv, capsys):
    parser = argparse.ArgumentParser(prog="harness")
    gaps_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


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


def test_table_defaults_to_newest_run(runs, capsys):
    code, out = harness(["gaps", "--guest", "fixture-pvh"], capsys)
    assert code == 0 and "6 gaps in 1 cells" in out and "i8042-wait" in out
    assert "fixture-pvh@builtin/default/emulate/1c/64M" in out and "0x2ff" not in out


def test_json_and_csv_with_filters(runs, capsys):
    code, out = harness(["gaps", "reports/r1", "r2", "--kind", "mtrr-probe", "--format", "json"], capsys)
    rows = json.loads(out)
    assert {(r["run"], r["key"]) for r in rows} == {("r1", "0xfe"), ("r1", "0x2ff"), ("r2", "0xfe"), ("r2", "0x2ff")} and \
        len(rows) == 7
    _, out = harness(["gaps", "r1", "--format", "csv", "--guest", "fixture-mb"], capsys)
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert len(parsed) == 7 and parsed[0]["cell_id"] == "fixture-mb@builtin/default/gp/1c/64M"


def test_diff_shows_the_absent_gap_as_fixed(runs, capsys):
    code, out = harness(["gaps", "diff", "r1", "r2"], capsys)
    assert code == 0
    assert "0 new, 1 fixed" in out and "fixed  fixture-pvh@builtin/default/emulate/1c/64M  mtrr-probe 0x2ff" in out
    code, out = harness(["gaps", "diff", "r2", "r1", "--format", "json"], capsys)
    assert code == 1 and list(json.loads(out)["cells"]) == ["fixture-pvh@builtin/default/emulate/1c/64M"]


def test_accept(runs, capsys, tmp_path):
    code, out = harness(["gaps", "accept", "r1", "--guest", "fixture-mb", "--out", "base.yaml"], capsys)
    assert code == 0 and "wrote base.yaml" in out and "io-port" in (tmp_path / "base.yaml").read_text()


def test_user_errors(runs, capsys):
    with pytest.raises(HarnessError):
        harness(["gaps", "no-such-run"], capsys)
    with pytest.raises(HarnessError):
        harness(["gaps", "diff", "r1"], capsys)
    with pytest.raises(HarnessError) as e:
        harness(["gaps", "accept", "r1", "--out", "x.yaml"], capsys)     # two guests, one file
    assert "--guest" in e.value.fix
