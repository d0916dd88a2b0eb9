"""When a cell gets another try (the record of each try is harness.model.tries).

Infrastructure errors are retried up to the cell's `retries`. With `harness run --retry-failures N`,
a cell that did not end as the matrix expects is booted again, up to N more times.
"""
from __future__ import annotations

from harness.model.result import ERROR, CellResult, ended_as_expected
from harness.model.tries import Try


def another_try(tries: list[Try], result: CellResult, error_retries: int, failure_retries: int) -> bool:
    """Whether the attempt that gave `result` (the last of `tries`) should be followed by another."""
    if result.outcome == ERROR:
        return sum(t.outcome == ERROR for t in tries) <= error_retries
    if ended_as_expected(result):
        return False
    return sum(t.outcome != ERROR for t in tries) <= failure_retries
