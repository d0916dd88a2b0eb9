"""The merge job's pass/fail: every selected cell finished and ended as expected (or under a live known issue)."""
from __future__ import annotations

from pathlib import Path

from harness.model.verdict import cell_ok
from harness.report.results import expected_cells
from harness.report.run import load_run


def verdict(run_dir: Path) -> tuple[bool, str]:
    run = load_run(run_dir)
    bad = [c.key for c in run.cells if not cell_ok(c.result)]
    want = expected_cells(run)
    if not run.cells:
        return False, f"{run_dir}: no finished cells"
    if want is not None and len(run.cells) < want:
        return False, f"{run_dir}: incomplete, {len(run.cells)} of {want} cells finished"
    if bad:
        return False, f"{run_dir}: {len(bad)} of {len(run.cells)} cells not ok: {', '.join(bad[:10])}"
    return True, f"{run_dir}: all {len(run.cells)} cells ok"
