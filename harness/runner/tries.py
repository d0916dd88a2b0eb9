"""Every attempt of a cell, and when to make another.

Infrastructure errors are retried up to the cell's `retries` (as before). With
`harness run --retry-failures N`, a cell that did not end as the matrix expects is booted again,
up to N more times: a later pass makes it *flaky* ("passed on retry" in JUnit), a failure on
every try is what lets a report call a regression with a stated confidence
(harness.report.flakes). Each try's console stays in its own directory (`<cell>-tryK`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.runner.known_issues import as_expected
from harness.model.result import ERROR, CellResult


@dataclass
class Try:
    outcome: str
    reason: str
    duration_s: float
    console_log: str = ""          # relative to the run directory
    started_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Try":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def of(cls, result: CellResult) -> "Try":
        return cls(result.outcome, result.reason[:300], result.duration_s, result.console_log, result.started_at)


def tries_of(result: CellResult) -> list[Try]:
    """A result's tries; a result written before tries were recorded counts as one."""
    if result.tries:
        return [Try.from_json(t) for t in result.tries if isinstance(t, dict)]
    return [Try.of(result)]


def another_try(tries: list[Try], result: CellResult, error_retries: int, failure_retries: int) -> bool:
    """Whether the attempt that gave `result` (the last of `tries`) should be followed by another."""
    if result.outcome == ERROR:
        return sum(t.outcome == ERROR for t in tries) <= error_retries
    if as_expected(result):
        return False
    return sum(t.outcome != ERROR for t in tries) <= failure_retries


def passed_on_retry(result: CellResult) -> bool:
    tries = tries_of(result)
    return len(tries) > 1 and as_expected(result) and not all(t.outcome == result.outcome for t in tries)
