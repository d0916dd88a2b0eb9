"""The crash index: every crash and warning title across the cells of one or more runs.

One entry per (severity, title): the same crash in five cells of a run, or on three nights, is
one entry listing its cells, with the run and time it was first and last seen. Written into
results.json (`crashes`), summary.md and by `harness crashes RUN-DIR...`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from harness.report.run import RunData


@dataclass
class Sighting:
    run_id: str
    cell: str
    at: str            # the cell's start time (ISO-8601)


@dataclass
class CrashEntry:
    title: str
    severity: str                      # crash | warning
    kind: str
    sightings: list[Sighting] = field(default_factory=list)
    example: str = ""                  # the report block of the first sighting
    new_in: list[str] = field(default_factory=list)   # warnings: cells whose baseline lacks it (regressions)

    @property
    def first_seen(self) -> Sighting:
        return min(self.sightings, key=lambda s: (s.at, s.run_id))

    @property
    def last_seen(self) -> Sighting:
        return max(self.sightings, key=lambda s: (s.at, s.run_id))

    @property
    def cells(self) -> list[str]:
        return sorted({s.cell for s in self.sightings})

    @property
    def runs(self) -> list[str]:
        return sorted({s.run_id for s in self.sightings})

    def to_json(self) -> dict[str, Any]:
        first, last = self.first_seen, self.last_seen
        return {"title": self.title, "severity": self.severity, "kind": self.kind, "count": len(self.sightings),
                "cells": self.cells, "runs": self.runs,
                "first_seen": {"run": first.run_id, "cell": first.cell, "at": first.at},
                "last_seen": {"run": last.run_id, "cell": last.cell, "at": last.at},
                "new_in": sorted(set(self.new_in)), "example": self.example}


def crash_index(runs: Iterable[RunData]) -> list[CrashEntry]:
    """Entries sorted crashes first, then by how many cells saw them, then by title."""
    index: dict[tuple[str, str], CrashEntry] = {}
    for run in runs:
        for view in run.cells:
            result = view.result
            reports = ([result.crash] if result.crash else []) + list(result.warnings)
            unique = {(r.severity, r.title, r.clean_offset): r for r in reports}   # a failing warning is both
            for report in unique.values():
                entry = index.setdefault((report.severity, report.title),
                                         CrashEntry(report.title, report.severity, report.kind, example=report.block))
                entry.sightings.append(Sighting(run.run_id, view.key, result.started_at))
                if report.severity == "warning" and report.title in result.warning_diff.new:
                    entry.new_in.append(view.key)
    return sorted(index.values(), key=lambda e: (e.severity != "crash", -len(e.cells), e.title))


def render_markdown(entries: list[CrashEntry], md: Any = str, limit: int = 50) -> list[str]:
    if not entries:
        return ["None."]
    out = ["| severity | title | cells | new in | runs | first seen | last seen |", "|---|---|---:|---:|---:|---|---|"]
    for e in entries[:limit]:
        out.append(f"| {e.severity} | {md(e.title)} | {len(e.cells)} | {len(set(e.new_in))} | {len(e.runs)} | "
                   f"{md(e.first_seen.run_id)} {md(e.first_seen.at)} | {md(e.last_seen.run_id)} {md(e.last_seen.at)} |")
    if len(entries) > limit:
        out.append(f"\n… and {len(entries) - limit} more (`harness crashes RUN-DIR...`)")
    return out
