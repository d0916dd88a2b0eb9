"""Titled crash and warning reports of a finished cell, from its console.log.

The watcher decides *that* a boot failed; this names *what* failed: the console is parsed with
the guest family's report tables (harness.console.crashes), the report that names the failure
becomes `result.crash` (its title the reason line), and every warning report the boot survived is
kept in `result.warnings`, compared with the guest's warning baseline (`expected_warnings` in the
guest file plus `warnings:` in baselines/<guest>.yaml). A new warning is a regression; with
`warnings: fail-new` (or `fail`) it fails a cell that otherwise passed.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

from harness.console.clean import ConsoleCleaner
from harness.console.crashes import (CRASH, WARNING, WARNINGS_FAIL, WARNINGS_FAIL_NEW, ConsoleReport, crash_of,
                                     find_reports, headline)
from harness.model.result import FAIL, PASS, CellResult, Failure, WarningDiff

MAX_CONSOLE = 64 * 1024 * 1024     # a console larger than this is titled from its last 64 MiB


def add_console_reports(result: CellResult, console_log: Path, family: str, mode: str,
                        baseline: list[str], limit: int | None = None) -> None:
    """`limit`: only the first `limit` bytes of console.log are the boot's (commands came after)."""
    raw = _read_tail(console_log, limit)
    text = _clean(raw)
    reports = find_reports(family, text)
    after = _after_milestones(text, result)
    if result.outcome == FAIL:
        crash = crash_of(reports, after)
    elif result.outcome != PASS:     # a timeout or gap names a crash (a hung task, say), not a warning
        crash = next((r for r in reports if r.severity == CRASH and r.clean_offset >= after), None)
    else:
        crash = None
    result.crash = crash
    result.warnings = [r for r in reports if r.severity == WARNING and r is not crash]
    result.warning_diff = compare_warnings(result.warnings, baseline)
    if result.outcome == FAIL and crash is not None and _console_failure(result):
        result.reason = headline(crash)
    if result.outcome == PASS and result.warnings and mode in (WARNINGS_FAIL, WARNINGS_FAIL_NEW):
        failing = result.warning_diff.new if mode == WARNINGS_FAIL_NEW else [w.title for w in result.warnings]
        if failing:
            what = "new warnings not in the baseline" if mode == WARNINGS_FAIL_NEW else "warnings"
            result.outcome, result.reason = FAIL, f"{what}: {'; '.join(failing)}"[:500]
            result.failure = Failure("new-warning" if mode == WARNINGS_FAIL_NEW else "warning", result.reason)
            result.crash = next(w for w in result.warnings if w.title in failing)


def compare_warnings(warnings: list[ConsoleReport], baseline: list[str]) -> WarningDiff:
    diff = WarningDiff()
    for title in dict.fromkeys(w.title for w in warnings):
        known = any(fnmatch.fnmatchcase(title, entry) for entry in baseline)
        (diff.known if known else diff.new).append(title)
    return diff


def _console_failure(result: CellResult) -> bool:
    """The failure came from the console (a report line or a debugger prompt), not from an event."""
    return result.failure is not None and result.failure.console_offset is not None


def _read_tail(path: Path, limit: int | None) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell() if limit is None else min(f.tell(), limit)
            f.seek(max(0, size - MAX_CONSOLE))
            return f.read(size - max(0, size - MAX_CONSOLE))
    except OSError:
        return b""


def _clean(raw: bytes) -> str:
    cleaner = ConsoleCleaner()
    return (cleaner.feed(raw, now=0.0) + cleaner.flush()).decode(errors="replace")


def _after_milestones(text: str, result: CellResult) -> int:
    """Where the last milestone's line starts in the clean text (each hit is looked for after the
    previous one; a hit's console offset is that of its read chunk, too coarse for this)."""
    pos = line_start = 0
    for hit in result.milestones:
        found = text.find(hit.line, pos) if hit.line else -1
        if found < 0:
            break
        pos = found + len(hit.line)
        line_start = text.rfind("\n", 0, pos - 1) + 1
    return line_start    # a report on the milestone's own line (`login: panic: ...`) comes after it
