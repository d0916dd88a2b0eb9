"""The shape of a crash-title table, and the generic matching that every OS family shares.

A table is a list of `ReportKind`s, each found by a literal `header` on a console line (the way
syzkaller's pkg/report finds an "oops"). Within the report that starts there, the kind's
`TitleRule`s compete: the rule whose `match` regex matches earliest wins; its `title` template is
filled with the groups of `capture` (or of `match`) and then with the guilty frames its `Stack`
finds in the backtrace. The result is normalised (addresses, numbers, pids, CPU numbers, source
lines stripped) so the same crash gets the same title on every run.

Templates use `{1}`, `{2}`, ...: capture groups first, then one frame per stack trace.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

# Placeholders expanded in every rule regex (short names for what backtraces are made of).
_PLACEHOLDERS = {
    "{{ADDR}}": r"0x[0-9a-f]+",
    "{{PC}}": r"\[\<?(?:0x)?[0-9a-f]+\>?\]",
    "{{FUNC}}": r"([a-zA-Z0-9_]+)(?:\.|\+)",
    "{{SRC}}": r"([a-zA-Z0-9-_/.]+\.[a-z]+:[0-9]+)",
    "{{TASK}}": r"[\s\S]{0,100}?",
}

CRASH, WARNING = "crash", "warning"      # severities: a crash ends the boot, a warning does not
CORRUPTED_FRAME = "corrupted"            # the frame name used when a backtrace yields none


def rx(pattern: str) -> re.Pattern[str]:
    for name, value in _PLACEHOLDERS.items():
        pattern = pattern.replace(name, value)
    return re.compile(pattern)


class _TraceMarker:
    """Stands in a Stack's parts for "the frames of a backtrace, up to the next trace start"."""

    def __repr__(self) -> str:
        return "TRACE"


TRACE = _TraceMarker()
FramePicker = Callable[[list[str]], "tuple[str, int]"]


@dataclass(frozen=True)
class Stack:
    """Where the guilty frame is: `parts` are scanned in order, line by line; a regex part takes
    its first group from the first line it matches, TRACE takes every frame line until the next
    trace starts. Frames matching `skip` (or the table's skip list) are never guilty."""
    parts: tuple = ()
    fallback: tuple = ()                 # parts tried when `parts` find no frame
    skip: tuple[str, ...] = ()
    pick: FramePicker | None = None      # chooses among the frames (default: the first)


@dataclass(frozen=True)
class TitleRule:
    match: re.Pattern[str]                       # locates this rule's title in the report
    title: str                                   # template, {1}.. = groups, then frames
    capture: re.Pattern[str] | None = None       # groups come from here when set
    stack: Stack | None = None
    alt: tuple[str, ...] = ()
    corrupted: bool = False                      # a rule for damaged or truncated reports
    severity: str | None = None                  # overrides the kind's severity
    follow_up: bool = False                      # printed *because of* an earlier report


@dataclass(frozen=True)
class ReportKind:
    header: str                                  # literal text that starts a report on a line
    rules: tuple[TitleRule, ...]
    severity: str = CRASH
    suppress: tuple[re.Pattern[str], ...] = ()   # a header line matching one of these is no report
    name: str = ""
    # When set, a header line that does not have this form starts a report only if one of the
    # rules matches the line itself. Linux: a kernel timestamp (an untimestamped "WARNING:" is
    # likely userspace, e.g. LVM's "WARNING: Failed to connect to lvmetad"); OpenBSD: the trap
    # line's own form (any other "kernel:" line is none of ours).
    line_form: re.Pattern[str] | None = None

    def starts(self, line: str) -> bool:
        if self.header not in line or any(s.search(line) for s in self.suppress):
            return False
        if self.line_form is not None and not self.line_form.search(line):
            return any(rule.match.search(line) for rule in self.rules)
        return True


@dataclass(frozen=True)
class FrameSyntax:
    """How one OS family writes backtraces."""
    trace_starts: tuple[re.Pattern[str], ...] = ()
    frame_lines: tuple[re.Pattern[str], ...] = ()
    skip: tuple[str, ...] = ()
    strip_prefixes: tuple[str, ...] = ()             # syscall wrappers: SyS_foo -> foo
    corrupted_lines: tuple[re.Pattern[str], ...] = ()


@dataclass
class Titled:
    title: str
    alt: list[str] = field(default_factory=list)
    corrupted: bool = False
    rule: TitleRule | None = None


# -- normalisation -------------------------------------------------------------------------
_DYNAMIC = [
    (re.compile(r"syz-executor\.?[0-9]+((/|:)[0-9]+)?"), "syz-executor"),
    (re.compile(r"syzkaller[0-9]+((/|:)[0-9]+)?"), "syzkaller"),
    (re.compile(r"([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}"), r"\1ADDR"),
    (re.compile(r"([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})"), "IP"),
    (re.compile(r"(\.\w+)(:[0-9]+)+"), r"\1:LINE"),
    (re.compile(r"([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+"), r"\1"),
    (re.compile(r"CPU#[0-9]+"), "CPU"),
    (re.compile(r"(\W)(\d+)(\W|$)"), r"\1NUM\3"),
    (re.compile(r"(\d+){7,}"), "NUM"),
]
MAX_TITLE = 120


def normalise(title: str) -> str:
    """Strip what changes from run to run (addresses, numbers, IPs, lines), then squeeze blanks."""
    for pattern, replacement in _DYNAMIC:
        while True:
            new = pattern.sub(replacement, title)
            if new == title:
                break
            title = new
    out: list[str] = []
    for ch in title[:MAX_TITLE]:
        if ch == "\t":
            ch = " "
        elif ord(ch) < 0x20 or ord(ch) >= 0x7F:
            continue
        if ch == " " and out and out[-1] == " ":
            continue
        out.append(ch)
    return "".join(out).strip()


def fill(template: str, args: list[str]) -> str:
    return re.sub(r"\{(\d+)\}", lambda m: args[int(m.group(1)) - 1] if int(m.group(1)) <= len(args) else "",
                  template)


# -- titles --------------------------------------------------------------------------------
def title_report(kind: ReportKind, report: str, syntax: FrameSyntax | None) -> Titled:
    """The title of one report (text starting at its header line): the earliest matching rule."""
    best: Titled | None = None
    best_pos = len(report) + 1
    matched_any = False
    for rule in kind.rules:
        m = rule.match.search(report)
        if m is None or m.start() > best_pos or (m.start() == best_pos and best is not None):
            continue
        if m.start() < best_pos:
            best, best_pos = None, m.start()
        matched_any = True
        groups = m
        if rule.capture is not None:
            groups = rule.capture.search(report)
            if groups is None:
                continue
        args = [g or "" for g in groups.groups()]
        corrupted = rule.corrupted
        if rule.stack is not None and syntax is not None:
            frames, ok = guilty_frames(rule.stack, report[groups.start():], syntax)
            corrupted = corrupted or not ok
            args += frames
        best = Titled(fill(rule.title, args), [fill(a, args) for a in rule.alt], corrupted, rule)
    if best is None:
        first = report.find(kind.header)
        line = report[first:].split("\n", 1)[0] if first >= 0 else report.split("\n", 1)[0]
        best = Titled(line, corrupted=matched_any)
    best.title = normalise(best.title)
    best.alt = [normalise(a) for a in best.alt]
    return best


# -- frames --------------------------------------------------------------------------------
def guilty_frames(stack: Stack, text: str, syntax: FrameSyntax) -> tuple[list[str], bool]:
    skip = re.compile("|".join(syntax.skip + stack.skip)) if syntax.skip or stack.skip else None
    frames, ok = _scan(stack.parts, stack, text, syntax, skip)
    if not ok and stack.fallback:
        return _scan(stack.fallback, stack, text, syntax, skip)
    return frames, ok


def _scan(parts: tuple, stack: Stack, text: str, syntax: FrameSyntax,
          skip: re.Pattern[str] | None) -> tuple[list[str], bool]:
    """Walk `parts` over the lines of `text`; one guilty frame per backtrace (TRACE) part."""
    lines = text.split("\n")
    pos, i, traces = 0, 0, 0
    raw: list[str] = []
    found: list[str] = []
    ok = True
    while True:
        if i == len(parts) or (parts[i] is TRACE and traces > 0):
            frame = _pick(stack, raw, syntax)
            if not frame:
                frame, ok = CORRUPTED_FRAME, False
            found.append(frame)
            raw = []
        if i == len(parts):
            return found, ok
        traces += parts[i] is TRACE
        following = parts[i + 1] if i + 1 < len(parts) and parts[i + 1] is not TRACE else None
        pos, took_following, corrupted = _consume(lines, pos, parts[i], following, syntax, skip, raw)
        ok = ok and not corrupted
        i += 2 if took_following else 1


def _consume(lines: list[str], pos: int, part: Any, following: Any, syntax: FrameSyntax,
             skip: re.Pattern[str] | None, raw: list[str]) -> tuple[int, bool, bool]:
    """Read lines from `pos` for one part: a regex part up to its first match; a TRACE part its
    frames up to the next trace start (or to a line matching the part that follows it).
    Returns (next line, whether the following part matched, whether a corrupted line was seen)."""
    while pos < len(lines):
        line = lines[pos]
        pos += 1
        if any(c.search(line) for c in syntax.corrupted_lines):
            return pos, False, True
        if part is not TRACE:
            m = part.search(line)
            if m:
                _add(raw, m, skip)
                return pos, False, False
            continue
        if any(s.search(line) for s in syntax.trace_starts):
            return pos, False, False
        m = following.search(line) if following is not None else None
        if m:
            _add(raw, m, skip)
            return pos, True, False
        for frame_re in syntax.frame_lines:
            m = frame_re.search(line)
            if m:
                _add(raw, m, skip)
                break
    return pos, False, False


def _add(raw: list[str], m: re.Match[str], skip: re.Pattern[str] | None) -> None:
    for frame in m.groups():
        if frame is not None and (skip is None or not skip.search(frame)):
            raw.append(frame)


def _pick(stack: Stack, raw: list[str], syntax: FrameSyntax) -> str:
    if not raw:
        return ""
    stripped = [_strip_prefix(f, syntax.strip_prefixes) for f in raw]
    if stack.pick is None:
        return stripped[0]
    frame, _ = stack.pick(stripped)
    return frame


def _strip_prefix(frame: str, prefixes: tuple[str, ...]) -> str:
    best = frame
    for prefix in prefixes:
        if frame.startswith(prefix) and len(frame) - len(prefix) < len(best):
            best = frame[len(prefix):]
    return best
