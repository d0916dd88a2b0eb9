"""`harness run -k`: a selection is not an incomplete run; a bad expression is a one-line error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner_repo import harness, make_repo


def test_selected_cells_are_the_expected_count(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=3)
    run = repo / "reports" / "r"
    proc = harness("run", "-k", "g01", "--report-dir", str(run), "--no-live", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run / "run.json").read_text())["cells_selected"] == 1
    summary = (run / "summary.md").read_text()
    assert "**1 cells**" in summary and "Incomplete" not in summary


@pytest.mark.slow   # ~12 s: pytest-xdist workers start
def test_selected_cells_with_xdist_are_the_expected_count(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=3)
    run = repo / "reports" / "r"
    proc = harness("run", "-k", "g01 or g02", "-j", "2", "--report-dir", str(run), "--no-live", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run / "run.json").read_text())["cells_selected"] == 2
    assert "Incomplete" not in (run / "summary.md").read_text()


def test_invalid_expression_is_one_line_and_nonzero(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=2)
    proc = harness("run", "-k", "bad@expr", "--no-live", cwd=repo)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: -k 'bad@expr' is not a valid expression")
    assert "Traceback" not in proc.stderr and not (repo / "reports").exists()
