"""Reading a run directory back for reports: run.json, finished cells, their console files.

Only files are read (never a live runner), and everything is optional except cells/*.json:
a run killed halfway has fewer cells, maybe a stray temporary file, maybe no run.json.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.gaps.runs import cell_family
from harness.model.events import EventReader, VmEvent
from harness.model.result import CellResult
from harness.model.rundir import RunDir, result_key

CONSOLE_TAIL_BYTES = 64 * 1024


@dataclass
class CellView:
    result: CellResult
    slug: str                      # the stem of cells/<slug>.json
    run_dir: Path
    family: str

    @property
    def key(self) -> str:
        """Identity within a run: the cell id, plus the repeat when there are repeats."""
        return result_key(self.result)

    @property
    def work_rel(self) -> Path:
        """The cell's work directory relative to the run: where its console.log lives.

        Not always cells/<slug>: the runner puts repeat N of a cell in cells/<cell-slug>-rN.
        """
        rel = Path(self.result.console_log) if self.result.console_log else None
        if rel is not None and not rel.is_absolute() and ".." not in rel.parts and len(rel.parts) > 1:
            return rel.parent
        return Path("cells") / self.slug

    @property
    def work_dir(self) -> Path:
        return self.run_dir / self.work_rel

    @property
    def console_path(self) -> Path | None:
        """console.log, if it exists inside the run directory (paths are never followed outside)."""
        rel = self.result.console_log or f"cells/{self.slug}/console.log"
        path = (self.run_dir / rel).resolve()
        root = self.run_dir.resolve()
        if root not in path.parents or not path.is_file():
            return None
        return path

    def console_bytes(self, limit: int | None = None) -> bytes:
        path = self.console_path
        if path is None:
            return b""
        with open(path, "rb") as f:
            if limit is None:
                return f.read()
            return f.read(limit)

    def console_tail_lines(self, n: int = 20) -> list[str]:
        path = self.console_path
        if path is None:
            return []
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - CONSOLE_TAIL_BYTES))
            data = f.read()
        return data.decode(errors="replace").replace("\r", "").splitlines()[-n:]

    def events(self) -> list[VmEvent]:
        return EventReader(self.work_dir / "events.jsonl").poll()


@dataclass
class RunData:
    run_dir: Path
    run: dict[str, Any]
    cells: list[CellView] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)    # unreadable cell files (torn by a kill)

    @property
    def run_id(self) -> str:
        return str(self.run.get("run_id") or self.run_dir.name)

    @property
    def results(self) -> list[CellResult]:
        return [c.result for c in self.cells]


def load_run(run_dir: Path) -> RunData:
    run = RunDir(run_dir).require()
    run_dir = run.path
    data = RunData(run_dir, run.read_run_json())
    for path in run.result_files():
        try:
            result = CellResult.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            data.skipped.append(path.name)
            continue
        data.cells.append(CellView(result, path.stem, run_dir, cell_family(result)))
    data.cells.sort(key=lambda c: (c.result.guest, c.result.backend, c.result.cell_id, c.result.repeat_index))
    return data
