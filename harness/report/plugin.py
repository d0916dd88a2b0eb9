"""pytest plugin: write a run's reports when the session ends, as junitxml writes its file.

    pytest -p harness.runner.plugin -p harness.report.plugin matrix.yaml

The runner never imports the reports: this plugin subscribes to `pytest_sessionfinish` and
builds them from the run directory's files (the runner plugin names that directory on the
config). `harness run` loads both plugins; `harness report RUN` writes the same files later.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.hookimpl(trylast=True)   # after the runner plugin has closed run.json
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    run_dir: Path | None = getattr(config, "_harness_run_dir", None)
    if hasattr(config, "workerinput") or run_dir is None or not (run_dir / "run.json").exists():
        return
    try:
        from harness.report import write_reports
        write_reports(run_dir)
    except Exception as e:  # a report bug must not hide the cells' results
        sys.stderr.write(f"harness: writing reports failed: {type(e).__name__}: {e}\n")
