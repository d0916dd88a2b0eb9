import pytest

from fakerun import fixture_gaps, make_cell, make_run
from harness.errors import HarnessError
from harness.gaps.baseline import load_baseline
from harness.gaps.runs import accept_run, diff_gap_runs, gap_rows


def test_gaps_diff_one_probe_gap_absent_is_exactly_fixed(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", "run-b")
    make_cell(a)
    make_cell(b, gaps=[g for g in fixture_gaps() if g.key != "0x2ff"])
    d = diff_gap_runs(a, b)
    assert d.new == []
    assert [(c, g["kind"], g["key"]) for c, g in d.fixed] == [
        ("fixture-pvh@builtin/default/emulate/1c/64M", "mtrr-probe", "0x2ff")]
    assert "fixed  fixture-pvh@builtin/default/emulate/1c/64M  mtrr-probe 0x2ff" in d.to_text()
    # and the other way round it is new
    back = diff_gap_runs(b, a)
    assert [(g["kind"], g["key"]) for _, g in back.new] == [("mtrr-probe", "0x2ff")] and back.fixed == []


def test_gap_rows_filter(tmp_path):
    a = make_run(tmp_path / "a")
    make_cell(a)
    make_cell(a, guest="fixture-mb")
    rows = gap_rows([a], guest="fixture-mb", kind="mtrr-probe")
    assert [(r.guest, r.key) for r in rows] == [("fixture-mb", "0xfe"), ("fixture-mb", "0x2ff")]
    assert rows[0].id.startswith("fixture/mtrr-probe/0xfe#") and rows[0].phase == "handoff"


def test_accept_writes_baseline_that_makes_gaps_known(tmp_path):
    a = make_run(tmp_path / "a")
    make_cell(a)
    make_cell(a, policy="gp")
    [path] = accept_run(a, root=tmp_path)
    assert path == tmp_path / "baselines" / "fixture-pvh.yaml"
    entries = load_baseline("fixture-pvh", root=tmp_path)
    assert len(entries) == len(fixture_gaps())
    with pytest.raises(HarnessError):
        accept_run(a, guest="nope", root=tmp_path)
    with pytest.raises(HarnessError):
        accept_run(tmp_path / "missing")


def test_accept_writes_beside_the_runs_matrix(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "guests").mkdir(parents=True)
    run = make_run(repo / "reports" / "r1")
    import json
    meta = json.loads((run / "run.json").read_text())
    meta["matrix"] = str(repo / "matrix.yaml")
    (run / "run.json").write_text(json.dumps(meta))
    make_cell(run)
    monkeypatch.chdir(tmp_path)          # not the repository: the run.json tells where
    [path] = accept_run(run)
    assert path == repo / "baselines" / "fixture-pvh.yaml"
