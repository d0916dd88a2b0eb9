"""The result of one cell (schema: docs/results-schema.md), its parts, and the outcomes.

The runner writes one the moment its cell finishes, into the run directory (harness.model.rundir).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.model.record import JsonRecord

SCHEMA_VERSION = 1

# Outcomes
PASS, FAIL, GAP, TIMEOUT, ERROR = "pass", "fail", "gap", "timeout", "error"
OUTCOMES = (PASS, FAIL, GAP, TIMEOUT, ERROR)


@dataclass
class MilestoneHit(JsonRecord):
    name: str
    t: float                 # seconds since VM start
    since_previous: float    # seconds since the previous milestone (or VM start)
    console_offset: int      # byte offset in console.log where the match ends
    line: str = ""           # the console line that matched


@dataclass
class Phase(JsonRecord):
    """The stretch of boot that ends at a milestone."""
    name: str                                  # the milestone that ends it
    start: float
    end: float
    exit_counts: dict[str, int] = field(default_factory=dict)
    user_time_s: float | None = None           # time the VMM spent serving exits in this phase


@dataclass
class NearMiss(JsonRecord):
    """Why a timeout happened, as far as the console tells."""
    waiting_for: str              # milestone name
    pattern: str
    last_milestone: str | None
    last_lines: list[str]
    closest_line: str | None
    closest_ratio: float


@dataclass
class Failure(JsonRecord):
    kind: str                     # panic | oops | bug | ddb | triple-fault | reboot-loop | hang | reset | ...
    message: str
    t: float | None = None
    console_offset: int | None = None


@dataclass
class ConsoleReport(JsonRecord):
    """One report found in a console (a crash, or a warning the boot survived); found and titled
    by harness.console.crashes, kept here because a cell result carries it."""
    title: str
    severity: str                 # crash | warning
    kind: str                     # the table entry that found it (bug, warning, panic, uvm-fault, ...)
    block: str                    # the report's text, first line to end of backtrace
    line: str = ""                # its first line from the header on, as printed (numbers kept)
    clean_offset: int = 0         # where its first line starts in the clean console text
    corrupted: bool = False       # the report is damaged (interleaved or truncated): the title is a best effort
    follow_up: bool = False       # printed because of an earlier report (panic_on_warn, Fatal exception)
    alt_titles: list[str] = field(default_factory=list)


@dataclass
class WarningDiff(JsonRecord):
    """The warning titles of a cell against its guest's warning baseline."""
    new: list[str] = field(default_factory=list)      # no baseline entry matches: a regression
    known: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "WarningDiff":
        data = data or {}
        return cls(list(data.get("new", [])), list(data.get("known", [])))


@dataclass
class CellResult(JsonRecord):
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
    crash: ConsoleReport | None = None     # the titled report that ended (or spoiled) the boot
    warnings: list[ConsoleReport] = field(default_factory=list)       # reports the boot survived
    warning_diff: WarningDiff = field(default_factory=WarningDiff)
    near_miss: NearMiss | None = None
    gaps: list[dict[str, Any]] = field(default_factory=list)          # GapRecord.to_json(), phases assigned
    gap_diff: dict[str, Any] = field(default_factory=dict)            # vs expected gaps: new / fixed / known
    exit_counts: dict[str, int] = field(default_factory=dict)
    boot_timer: list[dict[str, Any]] = field(default_factory=list)    # guest marks {t, value}
    post_codes: list[dict[str, Any]] = field(default_factory=list)
    flight_recorder: list[dict[str, Any]] = field(default_factory=list)
    vcpus: list[dict[str, Any]] = field(default_factory=list)          # not passed: each vCPU's registers, insn at RIP
    host: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)          # assets: path, sha256, package versions
    command: list[str] = field(default_factory=list)
    repro: dict[str, Any] = field(default_factory=dict)               # what harness repro needs (runner/repro_record.py)
    console_log: str = ""                  # path relative to the run directory
    attempts: int = 1
    repeat_index: int = 0
    # issue 14: each a small record's to_json() (harness.gaps.culprit.Culprit, harness.model.verdict.KnownIssue,
    # harness.model.tries.Try, harness.model.guest.CommandResult), kept as plain dicts so old readers ignore them
    culprit: dict[str, Any] | None = None
    known_issue: dict[str, Any] | None = None
    tries: list[dict[str, Any]] = field(default_factory=list)      # every attempt's outcome, oldest first
    commands: list[dict[str, Any]] = field(default_factory=list)   # commands run after the prompt
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CellResult":
        data = dict(data)
        data["milestones"] = [MilestoneHit.from_json(m) for m in data.get("milestones", [])]
        data["phases"] = [Phase.from_json(p) for p in data.get("phases", [])]
        if data.get("failure"):
            data["failure"] = Failure.from_json(data["failure"])
        if data.get("near_miss"):
            data["near_miss"] = NearMiss.from_json(data["near_miss"])
        if data.get("crash"):
            data["crash"] = ConsoleReport.from_json(data["crash"])
        data["warnings"] = [ConsoleReport.from_json(w) for w in data.get("warnings", [])]
        data["warning_diff"] = WarningDiff.from_json(data.get("warning_diff"))
        return super().from_json(data)


def ended_as_expected(result: CellResult) -> bool:
    """Passed, or ended the way the matrix said it would (an override such as `expect: gap`).

    The one definition: the CLI's exit code, the live summary, junit.xml, results.json, the
    summary and the HTML report all use it (a pass under `expect: gap` is good news, not a failure).
    """
    return outcome_as_expected(result.outcome, result.params)


def outcome_as_expected(outcome: str, params: Any) -> bool:
    """`ended_as_expected` for one outcome of a cell with these params (one try of it, say)."""
    expect = params.get("expect") if isinstance(params, dict) else None
    return outcome == PASS or (bool(expect) and outcome == expect)
