"""Every attempt of a cell, as its result records them (when to make another: harness.runner.tries).

With `harness run --retry-failures N` a later pass makes a cell *flaky* ("passed on retry" in JUnit), a failure on
every try is what lets a report call a regression with a stated confidence
(harness.report.flakes). Each try's console stays in its own directory (`<cell>-tryK`).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.model.record import JsonRecord
from harness.model.result import CellResult, ended_as_expected


@dataclass
class Try(JsonRecord):
    outcome: str
    reason: str
    duration_s: float
    console_log: str = ""          # relative to the run directory
    started_at: str = ""

    @classmethod
    def of(cls, result: CellResult) -> "Try":
        return cls(result.outcome, result.reason[:300], result.duration_s, result.console_log, result.started_at)


def tries_of(result: CellResult) -> list[Try]:
    """A result's tries; a result written before tries were recorded counts as one."""
    if result.tries:
        return [Try.from_json(t) for t in result.tries if isinstance(t, dict)]
    return [Try.of(result)]


def passed_on_retry(result: CellResult) -> bool:
    tries = tries_of(result)
    return len(tries) > 1 and ended_as_expected(result) and not all(t.outcome == result.outcome for t in tries)
