"""The result of one cell, written atomically as JSON the moment the cell finishes.

Layout of a run directory (reports/<run-id>/):
    run.json                      run metadata (matrix file, tier, shard, host, start time)
    cells/<cell-slug>.json        one CellResult each (schema: docs/results-schema.md)
    cells/<cell-slug>/            the cell's work dir: console.log, console.timing.jsonl,
                                  events.jsonl, summary.json, backend.stderr.log
Reports (harness.report) are built from these files alone, so a killed run still reports
every cell that finished.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.model.files import write_json_atomic

SCHEMA_VERSION = 1

# Outcomes
PASS, FAIL, GAP, TIMEOUT, ERROR = "pass", "fail", "gap", "timeout", "error"
OUTCOMES = (PASS, FAIL, GAP, TIMEOUT, ERROR)


@dataclass
class MilestoneHit:
    name: str
    t: float                 # seconds since VM start
    since_previous: float    # seconds since the previous milestone (or VM start)
    console_offset: int      # byte offset in console.log where the match ends
    line: str = ""           # the console line that matched


@dataclass
class Phase:
    """The stretch of boot that ends at a milestone."""
    name: str                                  # the milestone that ends it
    start: float
    end: float
    exit_counts: dict[str, int] = field(default_factory=dict)
    user_time_s: float | None = None           # time the VMM spent serving exits in this phase


@dataclass
class NearMiss:
    """Why a timeout happened, as far as the console tells."""
    waiting_for: str              # milestone name
    pattern: str
    last_milestone: str | None
    last_lines: list[str]
    closest_line: str | None
    closest_ratio: float


@dataclass
class Failure:
    kind: str                     # panic | oops | bug | ddb | triple-fault | reboot-loop | hang | reset | ...
    message: str
    t: float | None = None
    console_offset: int | None = None


@dataclass
class CellResult:
    cell_id: str
    guest: str
    backend: str
    params: dict[str, Any]                 # cpu_profile, gap_policy, vcpus, memory_mib, tier
    outcome: str
    reason: str = ""                       # one line: why this outcome
    started_at: str = ""                   # ISO-8601 wall clock
    duration_s: float = 0.0
    milestones: list[MilestoneHit] = field(default_factory=list)
    expected_milestones: list[str] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    failure: Failure | None = None
    near_miss: NearMiss | None = None
    gaps: list[dict[str, Any]] = field(default_factory=list)          # GapRecord.to_json(), phases assigned
    gap_diff: dict[str, Any] = field(default_factory=dict)            # vs expected gaps: new / fixed / known
    exit_counts: dict[str, int] = field(default_factory=dict)
    boot_timer: list[dict[str, Any]] = field(default_factory=list)    # guest marks {t, value}
    post_codes: list[dict[str, Any]] = field(default_factory=list)
    flight_recorder: list[dict[str, Any]] = field(default_factory=list)
    host: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)          # assets: path, sha256, package versions
    command: list[str] = field(default_factory=list)
    console_log: str = ""                  # path relative to the run directory
    attempts: int = 1
    repeat_index: int = 0
    # issue 14: each a small record's to_json() (harness.report.culprit.Culprit, runner.known_issues.KnownIssue,
    # runner.flakes.Try, runner.guest_shell.CommandResult), kept as plain dicts so old readers ignore them
    culprit: dict[str, Any] | None = None
    known_issue: dict[str, Any] | None = None
    tries: list[dict[str, Any]] = field(default_factory=list)      # every attempt's outcome, oldest first
    commands: list[dict[str, Any]] = field(default_factory=list)   # commands run after the prompt
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CellResult":
        data = dict(data)
        data["milestones"] = [MilestoneHit(**m) for m in data.get("milestones", [])]
        data["phases"] = [Phase(**p) for p in data.get("phases", [])]
        if data.get("failure"):
            data["failure"] = Failure(**data["failure"])
        if data.get("near_miss"):
            data["near_miss"] = NearMiss(**data["near_miss"])
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def cell_slug(cell_id: str) -> str:
    """A file-name-safe, still readable form of a cell id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", cell_id).strip("_")


def write_result(run_dir: Path, result: CellResult) -> Path:
    path = run_dir / "cells" / f"{cell_slug(result.cell_id)}.json"
    write_json_atomic(path, result.to_json())
    return path


def load_results(run_dir: Path) -> list[CellResult]:
    """Every finished cell of a run (temporary files of a killed writer are ignored)."""
    cells = run_dir / "cells"
    out = []
    for path in sorted(cells.glob("*.json")) if cells.is_dir() else []:
        try:
            out.append(CellResult.from_json(json.loads(path.read_text())))
        except (ValueError, TypeError, KeyError):
            continue
    return out
