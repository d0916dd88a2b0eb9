"""`harness ci github|gitlab`: schema-valid pipelines whose commands, run here, give the single-machine result.

Slow (~40 s): two nights of a 3-shard GitHub workflow and one night of a 2-shard GitLab pipeline on a
replay matrix, plus the single-machine runs they are compared with.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner_repo import PANICKING, REPO, harness, make_repo

from harness.ci import github
from harness.ci.plan import Plan

CHECK = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHECK).exists(), reason="check-jsonschema not installed (pip install "
                                 "-e '.[test]')")]
HOST_SETUP = {s.name for s in github.HOST_STEPS + Plan(1).setup}


def ci_repo(tmp_path: Path, passing: int = 5) -> Path:
    repo = make_repo(tmp_path / "repo", passing=passing, delay=0.2)
    shim = repo / ".venv" / "bin" / "harness"          # what scripts/setup.sh would have installed
    shim.parent.mkdir(parents=True)
    shim.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m harness \"$@\"\n")
    shim.chmod(0o755)
    return repo


def generate(repo: Path, engine: str, shards: int) -> dict:
    out = repo / f"{engine}.yml"
    harness("ci", engine, "--shards", str(shards), "--tier", "quick", "--out", str(out), cwd=repo, check=True)
    schema = {"github": "vendor.github-workflows", "gitlab": "vendor.gitlab-ci"}[engine]
    proc = subprocess.run([CHECK, "--builtin-schema", schema, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return yaml.safe_load(out.read_text())


def sh(repo: Path, script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", script], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def run_github_night(repo: Path, wf: dict) -> subprocess.CompletedProcess:
    """The workflow's own shell steps, shard jobs then merge job; uses: steps (checkout, artifacts, cache) are
    the engine's file transport, which one working directory stands in for here."""
    shard_job, merge_job = wf["jobs"]["shard"], wf["jobs"]["merge"]
    shutil.rmtree(repo / "reports", ignore_errors=True) if not (repo / "reports" / "last-good").exists() else None
    for p in (repo / "reports").glob("shard-*"):
        shutil.rmtree(p)
    shutil.rmtree(repo / "reports" / "nightly", ignore_errors=True)
    for k in shard_job["strategy"]["matrix"]["shard"]:
        for step in shard_job["steps"]:
            if "run" in step and step["name"] not in HOST_SETUP:
                assert sh(repo, step["run"].replace("${{ matrix.shard }}", str(k))).returncode == 0
    summary = repo / "step-summary.md"
    last = None
    for step in merge_job["steps"]:
        if "run" in step and step["name"] not in HOST_SETUP:
            last = sh(repo, step["run"], {"GITHUB_STEP_SUMMARY": str(summary)})
            if last.returncode != 0:
                return last    # a failed step ends the job, as on GitHub
    return last


def outcomes(run_dir: Path) -> dict[str, tuple]:
    cells = json.loads((run_dir / "results.json").read_text())["cells"]
    return {c["key"]: (c["outcome"], tuple(m["name"] for m in c["milestones"]), c["ok"]) for c in cells}


def test_github_workflow_runs_here_and_keeps_the_last_good_night(tmp_path: Path):
    repo = ci_repo(tmp_path)
    wf = generate(repo, "github", 3)
    assert wf["jobs"]["merge"]["needs"] == "shard" and wf["jobs"]["shard"]["strategy"]["matrix"]["shard"] == [1, 2, 3]
    night1 = run_github_night(repo, wf)
    assert night1.returncode == 0, night1.stdout + night1.stderr
    single = repo / "reports" / "single"
    harness("run", "--tier", "quick", "--report-dir", str(single), "--no-live", cwd=repo, check=True)
    merged = repo / "reports" / "nightly"
    assert outcomes(merged) == outcomes(single) and len(outcomes(merged)) == 5
    shards = json.loads((merged / "run.json").read_text())["shards"]
    assert sorted(s["shard"] for s in shards) == ["1/3", "2/3", "3/3"] and sum(s["cells"] for s in shards) == 5
    baseline = repo / "reports" / "last-good"
    assert outcomes(baseline) == outcomes(merged)
    assert (repo / "step-summary.md").read_text().startswith("# Boot matrix")

    # night 2: one guest now panics; the night fails, the good baseline stays, the report compares against it
    (repo / "transcripts" / "g02.yaml").write_text(PANICKING)
    night2 = run_github_night(repo, wf)
    assert night2.returncode == 1 and "1 of 5 cells not ok" in night2.stdout
    assert outcomes(baseline) == outcomes(single)                       # not replaced by a bad night
    summary = (repo / "reports" / "nightly" / "summary.md").read_text()
    assert "against last-good" in summary or "Regressions against" in summary
    assert "regression confirmed: failed 2 of 2 tries" in summary        # --retry-failures 1 in the shards


def test_gitlab_pipeline_runs_here_like_a_single_machine(tmp_path: Path):
    repo = ci_repo(tmp_path, passing=4)
    pl = generate(repo, "gitlab", 2)
    shard, merge = pl["shard"], pl["merge"]
    script = [line for line in shard["script"] if not line.startswith("bash scripts/setup.sh")]
    for k in range(1, shard["parallel"] + 1):
        proc = sh(repo, "\n".join(script), {"CI_NODE_INDEX": str(k), "CI_NODE_TOTAL": str(shard["parallel"])})
        assert proc.returncode == 0, proc.stderr
    assert shard["artifacts"]["paths"] == ["reports/shard-$CI_NODE_INDEX"]
    merge_script = [line for line in merge["script"] if not line.startswith("bash scripts/setup.sh")]
    proc = sh(repo, "\n".join(merge_script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single = repo / "reports" / "single"
    harness("run", "--tier", "quick", "--report-dir", str(single), "--no-live", cwd=repo, check=True)
    assert outcomes(repo / "reports" / "nightly") == outcomes(single)
    assert merge["cache"]["paths"] == ["reports/last-good"] and (repo / "reports" / "last-good" / "run.json").exists()


def test_bad_shard_count_is_a_one_line_error(tmp_path: Path):
    proc = harness("ci", "github", "--shards", "0", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --shards 0") and "Traceback" not in proc.stderr
