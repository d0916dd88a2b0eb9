"""results.json: the whole run in one versioned document (schema: docs/results-schema.md)."""
from __future__ import annotations

import datetime as _dt
from collections import Counter
from typing import Any

from harness.gaps.baseline import GapDiff
from harness.gaps.culprit import Culprit
from harness.gaps.ledger import gap_id, merge_run_ledger
from harness.gaps.runs import cell_gaps
from harness.model.result import OUTCOMES, CellResult
from harness.model.verdict import cell_ok, known_issue_status
from harness.report.crashes import crash_index
from harness.report.culprits import run_culprits
from harness.report.diff import RunDiff
from harness.report.profile import milestone_stats, repeat_groups
from harness.report.run import CellView, RunData

__all__ = ["build_results", "cell_ok", "cell_new_gaps"]

RESULTS_SCHEMA = "harness.results"
RESULTS_SCHEMA_VERSION = 1


def cell_new_gaps(result: CellResult) -> list[dict[str, Any]]:
    return GapDiff.from_dict(result.gap_diff).new


def _cell_entry(view: CellView, culprits: dict[str, Culprit | None]) -> dict[str, Any]:
    d = view.result.to_json()
    d["gaps"] = cell_gaps(view.result)
    for g in d["gaps"]:
        g["id"] = gap_id(view.family, g)
    culprit = culprits.get(view.key)
    d.update({"key": view.key, "slug": view.slug, "family": view.family, "ok": cell_ok(view.result),
              "culprit": culprit.to_json() if culprit else None,
              "known_issue_status": known_issue_status(view.result)})
    return d


def expected_cells(run: RunData) -> int | None:
    """How many results the run set out to produce (run.json: cells_selected x repeat), if it says."""
    selected, repeat = run.run.get("cells_selected"), run.run.get("repeat") or 1
    if isinstance(selected, int) and isinstance(repeat, int):
        return selected * max(1, repeat)
    return None


def summarize(run: RunData, baseline: RunDiff | None) -> dict[str, Any]:
    by_outcome = {o: 0 for o in OUTCOMES}
    by_backend: dict[str, dict[str, int]] = {}
    for c in run.cells:
        o = c.result.outcome
        by_outcome[o] = by_outcome.get(o, 0) + 1
        by_backend.setdefault(c.result.backend, {k: 0 for k in OUTCOMES})
        by_backend[c.result.backend][o] = by_backend[c.result.backend].get(o, 0) + 1
    return {
        "cells": len(run.cells),
        "expected_cells": expected_cells(run),
        "finished": bool(run.run.get("finished_at")),
        "ok": sum(1 for c in run.cells if cell_ok(c.result)),
        "not_ok": sum(1 for c in run.cells if not cell_ok(c.result)),
        "by_outcome": by_outcome,
        "by_backend": by_backend,
        "guests": len({c.result.guest for c in run.cells}),
        "new_gaps": sum(len(cell_new_gaps(c.result)) for c in run.cells),
        "gap_kinds": dict(Counter(g["kind"] for c in run.cells for g in cell_gaps(c.result))),
        "regressions": len(baseline.regressions) if baseline else None,
    }


def timing_section(run: RunData) -> dict[str, Any]:
    out = {}
    for cid, group in repeat_groups(run.results).items():
        out[cid] = {"repeats": len(group), "milestones": [m.to_dict() for m in milestone_stats(group)]}
    return out


def _with_status(entry: dict[str, Any], new_in: dict[tuple[str, str, str], list[str]]) -> dict[str, Any]:
    entry["new_in"] = new_in.get((entry["kind"], entry["key"], entry["access"]), [])
    return entry


def build_results(run: RunData, baseline: RunDiff | None = None) -> dict[str, Any]:
    new_in: dict[tuple[str, str, str], list[str]] = {}
    for c in run.cells:
        for g in cell_new_gaps(c.result):
            new_in.setdefault((g.get("kind", ""), g.get("key", ""), g.get("access", "")), []).append(c.key)
    ledger = merge_run_ledger((c.key, c.result.guest, c.family, cell_gaps(c.result)) for c in run.cells)
    culprits = run_culprits(run)
    return {
        "schema": RESULTS_SCHEMA,
        "schema_version": RESULTS_SCHEMA_VERSION,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_id": run.run_id,
        "run": run.run,
        "skipped_files": run.skipped,
        "summary": summarize(run, baseline),
        "cells": [_cell_entry(c, culprits) for c in run.cells],
        "gaps": [_with_status(g.to_dict(), new_in) for g in ledger],
        "crashes": [e.to_json() for e in crash_index([run])],
        "timing": timing_section(run),
        "baseline": baseline.to_dict() if baseline else None,
    }
