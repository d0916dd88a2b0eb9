"""`harness attach RUN-DIR CELL`: follow a running cell's console live (read-only), from its start.

CELL is a cell id, its file-name slug, or a unique part of either. The console comes from the cell's
work dir (cells/<slug>/console.log, which the runner appends to as the guest prints); attach ends
when the cell's progress file says it is done (its result is written), or on Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from harness.errors import ConfigError
from harness.model.rundir import RunDir, cell_slug

POLL_S = 0.1
WAIT_FOR_START_S = 60.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attach", help="follow a running cell's console live")
    p.add_argument("run_dir", metavar="RUN-DIR")
    p.add_argument("cell", metavar="CELL", help="cell id, slug, or a unique part of one")
    p.add_argument("--no-follow", action="store_true", help="print what the console has so far and exit")
    p.set_defaults(func=cmd_attach)


def cmd_attach(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    run = RunDir(run_dir)
    if not run.cells_dir.is_dir() and not run.progress_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run directory (no cells/ or progress/)",
                          "give the --report-dir of a running harness run or boot")
    slug = find_cell(run_dir, args.cell)
    log = run.workdir(slug) / "console.log"
    deadline = time.monotonic() + WAIT_FOR_START_S
    while not log.exists():
        if time.monotonic() > deadline or _done(run_dir, slug):
            raise ConfigError(f"cell {slug} has no console.log in {run_dir}", "attach while the cell runs")
        time.sleep(POLL_S)
    print(f"[attached to {slug}; Ctrl-C leaves]", file=sys.stderr, flush=True)
    try:
        follow(log, lambda: args.no_follow or _done(run_dir, slug))
    except KeyboardInterrupt:
        pass
    print(f"\n[{slug}: {_outcome(run_dir, slug)}]", file=sys.stderr, flush=True)
    return 0


def follow(log: Path, finished) -> None:
    """Copy `log` to stdout as it grows until `finished()` and nothing more is left to read."""
    out = sys.stdout.fileno()
    with open(log, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                os.write(out, chunk)
                continue
            if finished():
                rest = f.read()
                if rest:
                    os.write(out, rest)
                return
            time.sleep(POLL_S)


def find_cell(run_dir: Path, wanted: str) -> str:
    """The slug of the one cell (running or finished) that `wanted` names."""
    run = RunDir(run_dir)
    candidates = {cell_slug(cell): cell for cell in run.progress()}     # slug -> cell id
    for path in sorted(run.cells_dir.glob("*")) if run.cells_dir.is_dir() else []:
        if path.is_dir():
            candidates.setdefault(path.name, path.name)
    exact = [s for s, cid in candidates.items() if wanted in (s, cid) or cell_slug(wanted) == s]
    if len(exact) == 1:
        return exact[0]
    partial = [s for s, cid in candidates.items() if wanted in s or wanted in cid]
    if len(partial) == 1:
        return partial[0]
    listing = ", ".join(sorted(candidates)) or "none yet"
    if not partial:
        raise ConfigError(f"no cell of {run_dir} matches {wanted!r}", f"cells: {listing}")
    raise ConfigError(f"{wanted!r} matches {len(partial)} cells of {run_dir}", f"be more precise; cells: {listing}")


def _progress(run_dir: Path, slug: str) -> dict:
    return RunDir(run_dir).progress_of(slug)


def _done(run_dir: Path, slug: str) -> bool:
    return bool(_progress(run_dir, slug).get("done")) or RunDir(run_dir).result_path(slug).exists()


def _outcome(run_dir: Path, slug: str) -> str:
    """The result file's outcome (written before the progress file says done), else the progress file's."""
    outcome = RunDir(run_dir).outcome_of(slug)
    return str(outcome or _progress(run_dir, slug).get("outcome") or "still running")
