"""Gaps read back from run directories: listing, run-to-run diff, accepting a run as baseline."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.gaps.baseline import GapDiff, baseline_path, compare, default_root, write_baseline
from harness.gaps.ledger import as_record, dedup, gap_id
from harness.model.result import CellResult
from harness.model.rundir import RunDir, result_key


def require_run(run_dir: Path) -> Path:
    return RunDir(run_dir).require().path


def load_results(run_dir: Path) -> list[CellResult]:
    return RunDir(run_dir).results()


@functools.lru_cache(maxsize=256)
def _family_from_guest_file(guest: str, root: str) -> str | None:
    path = Path(root) / "guests" / f"{guest}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    fam = data.get("family") if isinstance(data, dict) else None
    return str(fam) if fam else None


def cell_family(cell: CellResult, root: Path | None = None) -> str:
    """The guest family of a cell: params["family"], else the guest file, else the guest name."""
    fam = cell.params.get("family") if isinstance(cell.params, dict) else None
    return str(fam or _family_from_guest_file(cell.guest, str(root or default_root())) or cell.guest)


def cell_gaps(cell: CellResult) -> list[dict[str, Any]]:
    """A cell's ledger as dicts (deduplicated again: results written by older runners may repeat)."""
    return [g.to_json() for g in dedup(cell.gaps)]


@dataclass
class GapRow:
    run: str
    cell_id: str
    guest: str
    backend: str
    gap_policy: str
    id: str
    kind: str
    key: str
    access: str
    count: int
    first_rip: int | None
    phase: str | None
    policy: str
    fate: str
    status: str          # new | known | "" (from the cell's gap_diff)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _status(gap: dict[str, Any], diff: GapDiff) -> str:
    rec = as_record(gap)
    for status, items in (("new", diff.new), ("known", diff.known)):
        if any(as_record(i).key_tuple() == rec.key_tuple() for i in items):
            return status
    return ""


def gap_rows(run_dirs: list[Path], guest: str | None = None, kind: str | None = None) -> list[GapRow]:
    rows = []
    for run_dir in run_dirs:
        for cell in load_results(require_run(run_dir)):
            if guest and cell.guest != guest:
                continue
            fam, diff = cell_family(cell), GapDiff.from_dict(cell.gap_diff)
            for g in cell_gaps(cell):
                if kind and g["kind"] != kind:
                    continue
                rows.append(GapRow(Path(run_dir).name, cell.cell_id, cell.guest, cell.backend,
                                   str(cell.params.get("gap_policy", "")), gap_id(fam, g), g["kind"], g["key"],
                                   g.get("access", ""), int(g.get("count", 1)), g.get("first_rip"),
                                   g.get("phase"), g.get("policy", ""), g.get("fate", ""), _status(g, diff)))
    return rows


@dataclass
class GapRunDiff:
    """Gaps of run B against run A, per cell present in both."""
    a: str
    b: str
    cells: dict[str, GapDiff] = field(default_factory=dict)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    @property
    def new(self) -> list[tuple[str, dict[str, Any]]]:
        return [(c, g) for c, d in self.cells.items() for g in d.new]

    @property
    def fixed(self) -> list[tuple[str, dict[str, Any]]]:
        return [(c, g) for c, d in self.cells.items() for g in d.fixed]

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "only_in_a": self.only_in_a, "only_in_b": self.only_in_b,
                "cells": {c: {"new": d.new, "fixed": d.fixed, "known": len(d.known)}
                          for c, d in self.cells.items() if d.new or d.fixed}}

    def to_text(self) -> str:
        lines = [f"gaps of {self.b} against {self.a}: {len(self.new)} new, {len(self.fixed)} fixed"]
        for cell, diff in self.cells.items():
            for g in diff.new:
                lines.append(f"  new    {cell}  {g['kind']} {g['key']} {g.get('access', '')}".rstrip())
            for g in diff.fixed:
                lines.append(f"  fixed  {cell}  {g['kind']} {g['key']} {g.get('access', '')}".rstrip())
        for c in self.only_in_a:
            lines.append(f"  cell only in {self.a}: {c}")
        for c in self.only_in_b:
            lines.append(f"  cell only in {self.b}: {c}")
        return "\n".join(lines)


def _cells_by_key(run_dir: Path) -> dict[str, CellResult]:
    out: dict[str, CellResult] = {}
    for c in load_results(require_run(run_dir)):
        out[result_key(c)] = c
    return out


def diff_gap_runs(a: Path, b: Path) -> GapRunDiff:
    """What gaps B has that A had not (new), and what A had that B has not (fixed)."""
    ca, cb = _cells_by_key(a), _cells_by_key(b)
    out = GapRunDiff(str(a), str(b), only_in_a=sorted(set(ca) - set(cb)), only_in_b=sorted(set(cb) - set(ca)))
    for key in sorted(set(ca) & set(cb)):
        expected = [_entry_with_record(g) for g in cell_gaps(ca[key])]
        diff = compare(cell_gaps(cb[key]), expected)
        diff.fixed = [e["_record"] for e in diff.fixed]
        out.cells[key] = diff
    return out


def _entry_with_record(g: dict[str, Any]) -> dict[str, Any]:
    # Exact-access entry, carrying the old record so "fixed" shows what A saw.
    return {"kind": g["kind"], "key": g["key"], "access": g.get("access", ""), "_record": g}


def _run_root(run_dir: Path) -> Path | None:
    """The directory of the run's matrix, when guests/ is beside it: baselines go there too."""
    matrix = RunDir(run_dir).read_run_json().get("matrix")
    if isinstance(matrix, str) and matrix:
        parent = Path(matrix).parent
        if (parent / "guests").is_dir():
            return parent
    return None


def run_root(run_dir: Path) -> Path | None:
    """Where a run's guests/ and baselines/ are (None: unknown, use the default root)."""
    return _run_root(run_dir)


def accept_run(run_dir: Path, guest: str | None = None, out: Path | None = None,
               root: Path | None = None) -> list[Path]:
    """Write the gaps each guest hit in `run_dir` as its baseline; returns the files written."""
    cells = [c for c in load_results(require_run(run_dir)) if guest is None or c.guest == guest]
    if not cells:
        raise HarnessError(f"no finished cells{' of guest ' + guest if guest else ''} in {run_dir}",
                           "check the run directory and --guest (see `harness gaps RUN`)")
    guests = sorted({c.guest for c in cells})
    root = root or _run_root(Path(run_dir))
    if out is not None and len(guests) > 1:
        raise HarnessError(f"--out names one file but the run has {len(guests)} guests",
                           "add --guest G, or drop --out to write baselines/<guest>.yaml each")
    written = []
    for g in guests:
        gaps = [gap for c in cells if c.guest == g for gap in cell_gaps(c)]
        written.append(write_baseline(out or baseline_path(g, root), g, gaps, str(run_dir)))
    return written
