"""Finding run directories from what a user types: a path, a run id under reports/, or nothing."""
from __future__ import annotations

import os
from pathlib import Path

from harness.errors import HarnessError

REPORTS_DIR = Path(os.environ.get("HARNESS_REPORTS_DIR", "reports"))


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "cells").is_dir() or (path / "run.json").is_file())


def newest_run(reports: Path | None = None) -> Path:
    reports = reports or REPORTS_DIR
    runs = [p for p in reports.iterdir() if is_run_dir(p)] if reports.is_dir() else []
    if not runs:
        raise HarnessError(f"no runs under {reports}/", "run `harness run` first, or name a run directory")
    return max(runs, key=lambda p: ((p / "run.json").stat().st_mtime if (p / "run.json").exists()
                                    else p.stat().st_mtime, p.name))


def resolve_run(name: str | None, reports: Path | None = None) -> Path:
    """A run directory: `name` as a path, else reports/<name>; the newest run when name is None."""
    reports = reports or REPORTS_DIR
    if name is None:
        return newest_run(reports)
    for candidate in (Path(name), reports / name):
        if is_run_dir(candidate):
            return candidate
    raise HarnessError(f"{name} is not a run directory (no cells/ or run.json there or under {reports}/)",
                       f"pass a path like {reports}/<run-id>; `ls {reports}` lists the runs")
