"""Merging the run directories of CI shards (or re-tries) into one run directory.

Cells are identified by (cell_id, repeat_index). When two shards both have a cell, the later
attempt wins: more `attempts` first, then the later `started_at`, then the later shard on the
command line. The winner's result file and work directory (console, events) are copied.
"""
from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.model.rundir import RunDir
from harness.report.run import CellView, load_run


def _rank(view: CellView, order: int) -> tuple[int, str, int]:
    r = view.result
    return (int(r.attempts or 0), str(r.started_at or ""), order)


def _copy_workdir(view: CellView, out_dir: Path) -> None:
    """The cell's work directory, and those its earlier tries left (cells/<slug>-tryK, runner.tries)."""
    rels = [view.work_rel] + [Path(t["console_log"]).parent for t in view.result.tries[:-1]
                              if isinstance(t, dict) and _inside(t.get("console_log"))]
    for rel in rels:
        src = view.run_dir / rel
        if not src.is_dir():
            continue
        dst = out_dir / rel
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, symlinks=True)  # never follow a link out of the shard


def _inside(rel: object) -> bool:
    """A relative path of two or more parts that stays inside the run directory."""
    if not isinstance(rel, str) or not rel:
        return False
    path = Path(rel)
    return not path.is_absolute() and ".." not in path.parts and len(path.parts) > 2


def merge_runs(run_dirs: list[Path], out_dir: Path) -> Path:
    """Union of the shards' cells in `out_dir` (created; must not be one of the inputs)."""
    if not run_dirs:
        raise HarnessError("nothing to merge", "name the shard run directories: harness report merge A B --out D")
    out_dir = Path(out_dir)
    resolved = {Path(d).resolve() for d in run_dirs}
    if out_dir.resolve() in resolved:
        raise HarnessError(f"--out {out_dir} is one of the runs being merged", "choose a new directory for --out")
    runs = [load_run(Path(d)) for d in run_dirs]
    best: dict[tuple[str, int], tuple[tuple[int, str, int], CellView]] = {}
    for order, run in enumerate(runs):
        for view in run.cells:
            ident = (view.result.cell_id, view.result.repeat_index)
            rank = _rank(view, order)
            if ident not in best or rank >= best[ident][0]:
                best[ident] = (rank, view)
    out = RunDir(out_dir)
    out.cells_dir.mkdir(parents=True, exist_ok=True)
    for _, view in best.values():
        _copy_workdir(view, out_dir)
        out.write_result(view.result)
    out.write_run_json(_merged_run_json(runs, len(best)))
    return out_dir


def _merged_run_json(runs: list[Any], n_cells: int) -> dict[str, Any]:
    first = dict(runs[0].run)
    first.update({
        "run_id": f"merged-{runs[0].run_id}" if len(runs) > 1 else runs[0].run_id,
        "merged_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "shards": [{"run_dir": str(r.run_dir), "run_id": r.run_id, "shard": r.run.get("shard"),
                    "cells": len(r.cells)} for r in runs],
        "cells": n_cells,
    })
    selected = [r.run.get("cells_selected") for r in runs]
    if all(isinstance(n, int) for n in selected):
        first["cells_selected"] = sum(selected)  # each shard selected its own part of the matrix
    return first
