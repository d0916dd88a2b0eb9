"""`harness run` end to end on replay guests: results, exit codes, resume, kill -9, shards, pytest items."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from runner_repo import REPO, harness, make_repo

from harness.model.rundir import RunDir


def cells_of(run: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["cell_id"]: json.loads(p.read_text()) for p in (run / "cells").glob("*.json")}


def test_run_writes_a_result_per_cell_and_exits_zero(replay_repo: Path):
    run = replay_repo / "reports" / "r1"
    proc = harness("run", "--report-dir", str(run), "-j", "2", "--no-live", cwd=replay_repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = cells_of(run)
    assert len(cells) == 4
    for cell in cells.values():
        assert cell["outcome"] == "pass"
        assert [m["name"] for m in cell["milestones"]] == ["entry", "handoff", "login"]
        assert cell["gaps"][0]["kind"] == "tsc-msr" and cell["gaps"][0]["phase"] == "entry"
        assert cell["gap_diff"]["known"] and not cell["gap_diff"]["new"]
        assert (run / cell["console_log"]).read_bytes().endswith(b"fixture login: ")
    assert json.loads((run / "run.json").read_text())["cells_selected"] == 4
    junit = ET.parse(run / "pytest-junit.xml").getroot()
    assert int(junit.find("testsuite").get("tests")) == 4


def test_failing_cell_gives_nonzero_exit_and_resume_reruns_only_it(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=2, panicking=1)
    run = repo / "reports" / "r"
    first = harness("run", "--report-dir", str(run), "--no-live", cwd=repo)
    assert first.returncode == 1
    cells = cells_of(run)
    bad = [c for c in cells.values() if c["outcome"] != "pass"]
    assert len(bad) == 1 and bad[0]["outcome"] == "fail" and bad[0]["failure"]["kind"] == "panic"
    assert "fixture deliberate panic" in bad[0]["reason"]
    passed_mtimes = {p.name: p.stat().st_mtime_ns for p in (run / "cells").glob("g*.json")}
    again = harness("run", "--report-dir", str(run), "--resume", "--no-live", cwd=repo)
    assert again.returncode == 1
    assert {p.name: p.stat().st_mtime_ns for p in (run / "cells").glob("g*.json")} == passed_mtimes
    assert "2 skipped" in (run / "pytest.log").read_text()


def test_kill_minus_9_keeps_finished_cells_and_resume_completes(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=6, delay=0.8)
    run = repo / "reports" / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "pytest", "-p", "harness.runner.plugin", "matrix.yaml", "--harness-run-dir",
            str(run), "-o", "testpaths=", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list((run / "cells").glob("*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = list((run / "cells").glob("*.json"))
    assert 2 <= len(finished) < 6
    for path in finished:                      # every result file is whole: written atomically
        assert json.loads(path.read_text())["outcome"] == "pass"
    assert len(RunDir(run).results()) == len(finished)
    resumed = harness("run", "--report-dir", str(run), "--resume", "--no-live", cwd=repo)
    assert resumed.returncode == 0, resumed.stdout
    assert len(cells_of(run)) == 6
    assert f"{len(finished)} skipped" in (run / "pytest.log").read_text()


def test_shards_partition_the_matrix(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=7, delay=0.1)
    ids = []
    for k in (1, 2, 3):
        proc = harness("run", "--shard", f"{k}/3", "--dry-run", cwd=repo)
        if proc.returncode == 2:   # a shard may be empty: that is an error naming the shard
            assert "no cells" in proc.stderr
            continue
        ids += [l for l in proc.stdout.splitlines() if "@replay/" in l]
    assert sorted(ids) == sorted(harness("run", "--dry-run", cwd=repo).stdout.splitlines()[:-1])
    assert len(ids) == len(set(ids)) == 7


def test_dry_run_with_k_uses_pytest_selection(replay_repo: Path):
    proc = harness("run", "--dry-run", "-k", "g01 or g03", cwd=replay_repo, check=True)
    assert proc.stdout.splitlines()[:-1] == ["g01@replay/default/emulate/1c/64M", "g03@replay/default/emulate/1c/64M"]


def test_list_and_bad_matrix_errors(replay_repo: Path):
    assert "g00@replay" in harness("list", cwd=replay_repo, check=True).stdout
    (replay_repo / "matrix.yaml").write_text("version: 1\nentries:\n  - guests: [g00]\n    backends: [vmware]\n")
    proc = harness("run", cwd=replay_repo)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "matrix.yaml:4" in proc.stderr and "vmware" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_asset_is_an_error_cell_with_the_fix(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", passing=1)
    guest = repo / "guests" / "g00.yaml"
    guest.write_text(guest.read_text().replace("kernel: {path:", "kernel: {path: /nonexistent/x, _:").replace(", _: " + str(repo / "transcripts" / "g00.yaml"), ""))
    run = repo / "reports" / "m"
    proc = harness("run", "--report-dir", str(run), "--no-live", cwd=repo)
    assert proc.returncode == 1
    (cell,) = cells_of(run).values()
    assert cell["outcome"] == "error" and "/nonexistent/x" in cell["reason"]
    assert cell["attempts"] == 2   # errors are retried once (matrix default retries: 1)
