"""The layout of a run directory, owned here and nowhere else.

    reports/                       default base ($HARNESS_REPORTS_DIR overrides it)
      <run-id>/                    one run (`harness run`, or $HARNESS_RUN_DIR / --harness-run-dir)
        run.json                   run metadata (matrix file, tier, shard, host, start/finish time)
        cells/<slug>.json          one CellResult each, written atomically (repeats: <slug>_rN.json)
        cells/<slug>[-rN]/         the cell's work dir: console.log, console.timing.jsonl,
                                   events.jsonl, summary.json, backend.stderr.log
        progress/<slug>.json       the live table's per-cell progress (any xdist worker writes it)
        results.json junit.xml summary.md index.html    the reports (harness.report)
      latest -> <run-id>           the last `harness run`

A repeat N > 0 of cell C has the result id "C#rN". Reports and the gap tools read these files
alone, so a killed run still reports every cell that finished.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from harness.errors import HarnessError
from harness.model.files import write_json_atomic
from harness.model.result import CellResult

REPORTS_ENV = "HARNESS_REPORTS_DIR"     # where runs go and are looked up (default: reports/)
RUN_DIR_ENV = "HARNESS_RUN_DIR"         # the run directory of a bare `pytest -p harness.runner.plugin`
REPEAT_MARK = "#r"


def reports_base() -> Path:
    return Path(os.environ.get(REPORTS_ENV, "reports"))


def cell_slug(cell_id: str) -> str:
    """A file-name-safe, still readable form of a cell id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", cell_id).strip("_")


def repeat_id(cell_id: str, repeat_index: int) -> str:
    """The result id of one repeat: the cell id, suffixed "#rN" for repeats after the first."""
    return f"{cell_id}{REPEAT_MARK}{repeat_index}" if repeat_index else cell_id


def base_cell_id(result: CellResult) -> str:
    """The cell id without the repeat suffix ("id#r2" -> "id"): what repeats share."""
    suffix = f"{REPEAT_MARK}{result.repeat_index}"
    if result.repeat_index and result.cell_id.endswith(suffix):
        return result.cell_id[:-len(suffix)]
    return result.cell_id


def result_key(result: CellResult) -> str:
    """Identity of one result in a run: the cell id plus the repeat, when it is a repeat."""
    return repeat_id(base_cell_id(result), result.repeat_index)


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # -- creating and finding runs ----------------------------------------------------------
    @classmethod
    def create(cls, base: Path | None = None) -> "RunDir":
        """A new, empty run directory named by the UTC time (suffixed when that name is taken)."""
        base = base or reports_base()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            candidate = base / (stamp if n == 0 else f"{stamp}-{n}")
            try:
                candidate.mkdir(parents=True)
                return cls(candidate)
            except FileExistsError:
                continue
        raise HarnessError(f"cannot create a run directory under {base}", f"clean up {base}/")

    @classmethod
    def newest(cls, base: Path | None = None) -> "RunDir | None":
        base = base or reports_base()
        runs = [cls(p) for p in base.iterdir() if cls(p).exists()] if base.is_dir() else []
        return max(runs, key=lambda r: (r.mtime(), r.path.name)) if runs else None

    @classmethod
    def resolve(cls, name: str | None, base: Path | None = None) -> "RunDir":
        """What a user typed: a path, a run id under the reports base, or nothing (the newest run)."""
        base = base or reports_base()
        if name is None:
            newest = cls.newest(base)
            if newest is None:
                raise HarnessError(f"no runs under {base}/", "run `harness run` first, or name a run directory")
            return newest
        for candidate in (cls(Path(name)), cls(base / name)):
            if candidate.exists():
                return candidate
        raise HarnessError(f"{name} is not a run directory (no cells/ or run.json there or under {base}/)",
                           f"pass a path like {base}/<run-id>; `ls {base}` lists the runs")

    @classmethod
    def containing(cls, path: Path) -> "RunDir":
        """The run a cell's result file or work directory (cells/<slug>.json, cells/<slug>/) is in."""
        return cls(Path(path).resolve().parent.parent)

    def exists(self) -> bool:
        return self.path.is_dir() and (self.cells_dir.is_dir() or self.run_json.is_file())

    def require(self) -> "RunDir":
        if not self.exists():
            raise HarnessError(f"{self.path} is not a run directory (no cells/ or run.json)",
                               "pass a directory under reports/, e.g. reports/<run-id>")
        return self

    def mtime(self) -> float:
        return (self.run_json if self.run_json.exists() else self.path).stat().st_mtime

    def link_latest(self) -> None:
        """Point <base>/latest at this run (best effort: some file systems have no symlinks)."""
        link = self.path.parent / "latest"
        try:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(self.path.name)
        except OSError:
            pass

    # -- files ----------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def cells_dir(self) -> Path:
        return self.path / "cells"

    def result_path(self, result_id: str) -> Path:
        return self.cells_dir / f"{cell_slug(result_id)}.json"

    def workdir(self, cell_id: str, repeat_index: int = 0) -> Path:
        return self.cells_dir / (cell_slug(cell_id) + (f"-r{repeat_index}" if repeat_index else ""))

    @property
    def progress_dir(self) -> Path:
        return self.path / "progress"

    def progress_path(self, cell_id: str) -> Path:
        return self.progress_dir / f"{cell_slug(cell_id)}.json"

    # -- reading and writing ------------------------------------------------------------------
    def read_run_json(self) -> dict[str, Any]:
        return _read_json(self.run_json)

    def write_run_json(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.run_json, data)

    def write_result(self, result: CellResult) -> Path:
        path = self.result_path(result.cell_id)
        write_json_atomic(path, result.to_json())
        return path

    def result_files(self) -> Iterator[Path]:
        """Every result file (a killed writer's temporary files are not results)."""
        if self.cells_dir.is_dir():
            yield from (p for p in sorted(self.cells_dir.glob("*.json")) if not p.name.startswith("."))

    def results(self) -> list[CellResult]:
        """Every finished cell of the run; unreadable files are skipped."""
        out = []
        for path in self.result_files():
            try:
                out.append(CellResult.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError, KeyError):
                continue
        return out

    def outcome_of(self, result_id: str) -> str | None:
        return _read_json(self.result_path(result_id)).get("outcome")

    def progress_of(self, cell_id: str) -> dict[str, Any]:
        return _read_json(self.progress_path(cell_id))

    def update_progress(self, cell_id: str, data: dict[str, Any]) -> None:
        path = self.progress_path(cell_id)
        write_json_atomic(path, {**_read_json(path), **data})

    def progress(self) -> dict[str, dict[str, Any]]:
        """The live per-cell progress, by cell id."""
        out = {}
        base = self.progress_dir
        for path in sorted(base.glob("*.json")) if base.is_dir() else []:
            data = _read_json(path)
            if "cell" in data:
                out[data["cell"]] = data
        return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
