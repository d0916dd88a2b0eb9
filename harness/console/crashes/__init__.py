"""Crash and warning reports in a console, each with a stable title.

`find_reports(family, text)` walks a console and returns every report (crash or warning) in
order, each with its title (the same crash gets the same title on every run: addresses, pids,
CPU numbers, timestamps and line numbers are stripped), its severity and its text block (from
its first line to the end of its backtrace). One table per OS family, in FAMILIES (a registry:
add a family by adding an entry). Title rules follow syzkaller's pkg/report, so titles compare
with the ones its dashboards show.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.console.crashes import bsd, linux
from harness.console.crashes.rules import (CRASH, WARNING, FrameSyntax, ReportKind, TitleRule, Titled, rx,
                                           title_report)
from harness.model.result import ConsoleReport

# What a warning report does to its cell: recorded only; fails the cell when its title is not in
# the guest's baseline; fails the cell at once (the harness's panic_on_warn).
WARNINGS_RECORD, WARNINGS_FAIL_NEW, WARNINGS_FAIL = "record", "fail-new", "fail"
WARNING_MODES = (WARNINGS_RECORD, WARNINGS_FAIL_NEW, WARNINGS_FAIL)

MAX_BLOCK_LINES = 300      # a report block kept in a result is at most this long
MAX_REPORTS = 200          # a console flooding reports keeps the first ones
MAX_REPORT_LINES = 4000    # title rules read at most this many lines of a report (a guest may flood)

__all__ = ["CRASH", "WARNING", "ConsoleReport", "FAMILIES", "find_reports", "reports_in_console", "crash_of",
           "spotter", "classify_line", "headline"]


@dataclass(frozen=True)
class _Cut:
    text: str           # what the title rules see
    title_end: int      # titles are searched in text[:title_end]
    next_line: int      # where to look for the next report


Cutter = Callable[[list[str], int, "tuple[ReportKind, ...]"], _Cut]


@dataclass(frozen=True)
class FamilyTable:
    kinds: tuple[ReportKind, ...]
    cut: Cutter
    syntax: FrameSyntax | None = None


def _cut_linux(lines: list[str], start: int, kinds: tuple[ReportKind, ...]) -> _Cut:
    cut = linux.cut_report(lines[:start + MAX_REPORT_LINES], start, kinds)
    following = _next_header(lines, start + 1, kinds, tails=linux.TAIL_LINES)
    return _Cut(cut.text, cut.title_end or len(cut.text), following)


def _cut_to_end(lines: list[str], start: int, kinds: tuple[ReportKind, ...]) -> _Cut:
    """BSD consoles: the report runs to the end (ddb's `show panic` may come much later)."""
    text = "\n".join(lines[start:start + MAX_REPORT_LINES]) + "\n"
    return _Cut(text, len(text), _next_header(lines, start + 1, kinds))


TAIL_WINDOW = 150   # lines: a panic or oops line this close after a report is that report's tail


def _next_header(lines: list[str], first: int, kinds: tuple[ReportKind, ...], tails: tuple[str, ...] = ()) -> int:
    for i in range(first, len(lines)):
        if i - first < TAIL_WINDOW and any(t in lines[i] for t in tails):
            continue
        if any(k.starts(lines[i]) for k in kinds):
            return i
    return len(lines)


_OTHER = linux.KINDS + bsd.NETBSD[:1] + bsd.OPENBSD[4:6] + bsd.FREEBSD[:1] + bsd.COMMON
_XEN = (ReportKind("Panic on CPU", (TitleRule(rx(r"Panic on CPU \d+:\n(?:\(XEN\) )*(.*)"), "Xen panic: {1}"),),
                   CRASH, (), "panic"),)

FAMILIES: dict[str, FamilyTable] = {
    "linux": FamilyTable(linux.KINDS + bsd.COMMON, _cut_linux, linux.SYNTAX),
    "netbsd": FamilyTable(bsd.NETBSD, _cut_to_end),
    "openbsd": FamilyTable(bsd.OPENBSD, _cut_to_end),
    "freebsd": FamilyTable(bsd.FREEBSD, _cut_to_end),
    "xen": FamilyTable(_XEN, _cut_to_end),
    "fixture": FamilyTable(bsd.COMMON, _cut_to_end),
    "other": FamilyTable(_OTHER, _cut_linux, linux.SYNTAX),
}


def table_for(family: str) -> FamilyTable:
    return FAMILIES.get(family, FAMILIES["other"])


def find_reports(family: str, text: str) -> list[ConsoleReport]:
    """Every report in `text` (a clean console), in console order."""
    table = table_for(family)
    lines = text.split("\n")
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    reports: list[ConsoleReport] = []
    i = 0
    while i < len(lines) and len(reports) < MAX_REPORTS:
        kind = _kind_of(table, lines, i)
        if kind is None:
            i += 1
            continue
        cut = table.cut(lines, i, table.kinds)
        titled = title_report(kind, cut.text[:cut.title_end], table.syntax)
        reports.append(_report(kind, titled, lines[i:cut.next_line], offsets[i]))
        reports[-1].line = lines[i][max(0, lines[i].find(kind.header)):][:300].strip()
        i = max(cut.next_line, i + 1)
    return reports


def _kind_of(table: FamilyTable, lines: list[str], i: int) -> ReportKind | None:
    for kind in table.kinds:
        if kind.starts(lines[i]) and not (table.syntax is not None and linux.replayed_after(lines, i)):
            return kind
    return None


def _report(kind: ReportKind, titled: Titled, block_lines: list[str], offset: int) -> ConsoleReport:
    rule = titled.rule
    severity = (rule.severity if rule and rule.severity else kind.severity)
    block = "\n".join(block_lines[:MAX_BLOCK_LINES]).strip("\n")
    return ConsoleReport(title=titled.title, severity=severity, kind=kind.name, block=block, clean_offset=offset,
                         corrupted=titled.corrupted, follow_up=bool(rule and rule.follow_up),
                         alt_titles=[a for a in titled.alt if a != titled.title])


def spotter(family: str) -> str:
    """A regex matching a report header of `family` and the rest of its line, once the line is
    complete (the watcher's detector; `classify_line` then says, from the whole line, whether it
    really starts a report and how bad). It starts at the header, not the line: a milestone
    earlier on the same line (`login: panic: ...`) still matches first."""
    headers = sorted({re.escape(k.header) for k in table_for(family).kinds}, key=len, reverse=True)
    return r"(?:" + "|".join(headers) + r")[^\n]*\n"


def classify_line(family: str, line: str) -> tuple[str, str] | None:
    """(kind, severity) of the report a console line starts, or None if it starts none."""
    for kind in table_for(family).kinds:
        if kind.starts(line):
            for rule in kind.rules:
                if rule.severity and rule.match.search(line):
                    return kind.name, rule.severity
            return kind.name, kind.severity
    return None


def reports_in_console(family: str, raw: bytes) -> list[ConsoleReport]:
    """Reports in a raw console log (escape sequences and interleaved log lines cleaned first)."""
    from harness.console.clean import ConsoleCleaner
    cleaner = ConsoleCleaner()
    text = (cleaner.feed(raw) + cleaner.flush()).decode(errors="replace")
    return find_reports(family, text)


def headline(report: ConsoleReport) -> str:
    """What a reason line says of a report: its first line as printed when the title is just that
    line normalised (the numbers tell more: `required MSR 0x4b564dfe faulted`), else the title
    (it names the guilty function the first line lacks)."""
    from harness.console.crashes.rules import normalise
    return report.line if report.line and normalise(report.line) == report.title else report.title


def crash_of(reports: list[ConsoleReport], after: int = 0) -> ConsoleReport | None:
    """The report that names a failed boot: the first one printed after the boot's last milestone
    (`after`, a clean-text offset), as syzkaller takes the first: a KASAN report or WARNING that a
    panic_on_warn panic or an oops follows is the cause, the panic its consequence. Warnings the
    boot had already survived (before its last milestone) are not the crash."""
    later = [r for r in reports if r.clean_offset >= after]
    if later:
        return later[0]
    crashes = [r for r in reports if r.severity == CRASH]
    return crashes[-1] if crashes else None
