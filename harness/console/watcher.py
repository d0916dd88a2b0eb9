"""Match a guest's console against its milestones, failure patterns and dialogs; decide the outcome.

One loop per cell, on the clean stream of ConsoleStream through pexpect. Between reads it
tails the backend's events (triple fault, reset, host emulation failure, ...), watches for
silence (a hang) and for the current milestone's deadline. The first decisive thing wins:
- every milestone matched, then `settle` s
  without a crash                              -> pass
- a crash report (harness.console.crashes),
  a failure pattern, triple fault, reset,
  power-off or the boot banner seen twice      -> fail (banners are counted by ConsoleStream)
- the backend stopped on an emulation gap      -> gap
- a milestone's deadline or the hang window    -> timeout (with a near-miss report)
- the backend died / reported an infra error   -> error
Warning reports (WARNING:, lockdep, KASAN, lock order reversal, witness) do not end a cell
unless `warnings` is "fail" (panic_on_warn semantics); the runner titles them from console.log.
After a crash line the watcher keeps reading until the console is quiet, so the whole report
(first line to end of backtrace) reaches console.log before the backend is stopped.
"""
from __future__ import annotations

import codecs
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import pexpect
import pexpect.fdpexpect

from harness.console.crashes import CRASH, WARNINGS_FAIL, classify_line
from harness.console.nearmiss import near_miss
from harness.console.patterns import REPORT
from harness.console.stream import ConsoleStream
from harness.model import events as ev
from harness.model.guest import Dialog, Milestone
from harness.model.result import ERROR, FAIL, GAP, PASS, TIMEOUT, Failure, MilestoneHit, NearMiss

Progress = Callable[[dict], None]
GUEST_STOPS = ("shutdown", "reset")   # failures decided by a guest stop event, not by the console
STOP_GRACE_S = 3.0                    # how long the console may still deliver lines printed before a stop
_PRINTK_PREFIX = re.compile(r"^(?:.*? login: )?(?:<\d+>)?\[\s*\d+\.\d+\](?:\[\s*[CT]\d+\])?\s*")


class Guest(Protocol):
    """What the watcher needs of a running guest (a backend session): answer dialogs, see it exit."""

    def send(self, data: bytes) -> None: ...

    def poll_exit(self) -> int | None: ...


@dataclass
class WatchConfig:
    milestones: list[Milestone]
    failures: list[tuple[str, str]]            # (kind, regex)
    dialogs: list[Dialog] = field(default_factory=list)
    keepalive: list[str] = field(default_factory=list)
    hang_timeout: float = 60.0
    banner: str | None = None
    timeout_scale: float = 1.0
    poll_interval: float = 0.1
    detached: threading.Event | None = None      # set by an interactive console's escape: stop watching
    family: str = "other"
    settle: float = 1.5          # seconds watched after the last milestone: a crash there still fails
    warnings: str = "record"     # record: warnings never end the cell; fail: the first one fails it
    report_quiet: float = 0.5    # after a crash line, read until the console is quiet this long
    report_max_s: float = 5.0    # ... or this long at most



@dataclass
class WatchOutcome:
    outcome: str
    reason: str
    milestones: list[MilestoneHit]
    failure: Failure | None = None
    near_miss: NearMiss | None = None
    events: list[ev.VmEvent] = field(default_factory=list)
    console_bytes: int | None = None   # how much of console.log the boot wrote (None: all of it)


@dataclass
class _Pattern:
    role: str          # milestone | failure | dialog | keepalive
    regex: re.Pattern[bytes]
    name: str = ""
    dialog: Dialog | None = None


class ConsoleWatcher:
    def __init__(self, session: Guest, stream: ConsoleStream, events: ev.EventReader,
                 config: WatchConfig, progress: Progress | None = None) -> None:
        self.session = session
        self.stream = stream
        self.events = events
        self.config = config
        self.progress = progress or (lambda info: None)
        self.child = pexpect.fdpexpect.fdspawn(stream.clean_read_fd, timeout=config.poll_interval,
                                               maxread=65536)
        self.hits: list[MilestoneHit] = []
        self.seen_events: list[ev.VmEvent] = []
        self.gap_count = 0
        self._consumed = 0              # clean bytes consumed by matches so far
        self._dialog_sends: dict[int, int] = {}
        self._fixed = self._compile_fixed()
        # A guest stopped in a debugger is neither hung nor late: no timeouts while it is, and the
        # current deadline moves by the time it spent stopped (DEBUG_STOP / DEBUG_RESUME events).
        self.debug_stopped_at: float | None = None
        self.debug_shift = 0.0

    # -- patterns ---------------------------------------------------------------------------
    def _compile_fixed(self) -> list[_Pattern]:
        c = self.config
        fixed = [_Pattern("failure", _re(rx), kind) for kind, rx in c.failures]
        fixed += [_Pattern("dialog", _re(d.pattern), d.pattern, d) for d in c.dialogs]
        fixed += [_Pattern("keepalive", _re(rx), rx) for rx in c.keepalive]
        return fixed

    def _patterns(self, index: int) -> list[_Pattern]:
        m = self.config.milestones[index]
        active = [p for p in self._fixed
                  if p.role != "dialog" or self._dialog_sends.get(id(p.dialog), 0) < (p.dialog.max if p.dialog else 1)]
        return [_Pattern("milestone", _re(m.pattern), m.name)] + active

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> WatchOutcome:
        milestones = self.config.milestones
        index = 0
        deadline = self.stream.start_time + milestones[0].timeout * self.config.timeout_scale
        patterns = self._patterns(0)
        last_progress = 0.0
        # A guest that powers off (or resets) right after its last line: the event can overtake the
        # console bytes still in the pipe. The stop is held for STOP_GRACE_S while the console is read;
        # the console's EOF (the child exited) ends the hold at once, so only a loaded host waits
        # (0.5 s was too short there: fixture-arm64's last line lost to its PSCI power-off).
        pending_stop: WatchOutcome | None = None
        grace_end = 0.0
        settle_until: float | None = None       # set once every milestone matched
        while True:
            if pending_stop is None:
                decided = self._check_events() or self._reboot_loop()
                if decided and decided.failure is not None and decided.failure.kind in GUEST_STOPS:
                    pending_stop, grace_end = decided, time.monotonic() + STOP_GRACE_S
                elif decided:
                    return decided
            elif time.monotonic() >= grace_end:
                return self._after_stop(pending_stop, settle_until is not None)
            try:
                i = self.child.expect([p.regex for p in patterns], timeout=self.config.poll_interval)
            except pexpect.TIMEOUT:
                if pending_stop is not None:
                    continue
                now = time.monotonic()
                if settle_until is not None:
                    if now >= settle_until:
                        return self._passed()
                    continue
                if self.config.detached is not None and self.config.detached.is_set():
                    return self._timeout(index, f"detached from the interactive console while waiting for "
                                                f"milestone {milestones[index].name!r}")
                if self.debug_stopped_at is not None:
                    continue
                if now >= deadline + self.debug_shift:
                    return self._timeout(index, f"milestone {milestones[index].name!r} not seen within "
                                                f"{milestones[index].timeout * self.config.timeout_scale:g} s")
                hang = self.config.hang_timeout * self.config.timeout_scale
                if self.stream.silence(now) >= hang:
                    return self._timeout(index, f"no console output for {hang:g} s", hang=True)
                if now - last_progress >= 1.0:
                    last_progress = now
                    self._report_progress(index)
                continue
            except pexpect.EOF:
                if pending_stop is not None:
                    return self._after_stop(pending_stop, settle_until is not None)
                return self._passed() if settle_until is not None else self._ended(index)
            pattern = patterns[i]
            offset = self._advance()
            t, raw_offset = self.stream.locate(offset)
            line = self._match_line()
            if pattern.role == "milestone":
                previous = self.hits[-1].t if self.hits else 0.0
                self.hits.append(MilestoneHit(pattern.name, round(t, 6), round(t - previous, 6), raw_offset, line))
                index += 1
                self._report_progress(index)
                if index == len(milestones):
                    if self.config.settle <= 0:
                        return self._passed()
                    settle_until = time.monotonic() + self.config.settle * self.config.timeout_scale
                    patterns = [p for p in self._fixed if p.role == "failure"]
                    continue
                deadline = time.monotonic() + milestones[index].timeout * self.config.timeout_scale
                self.debug_shift = 0.0
            elif pattern.role == "failure":
                kind = self._failure_kind(pattern, line)
                if kind is not None:
                    return self._failed(kind, t, raw_offset)
            elif pattern.role == "dialog":
                assert pattern.dialog is not None
                self._dialog_sends[id(pattern.dialog)] = self._dialog_sends.get(id(pattern.dialog), 0) + 1
                self.session.send(_unescape(pattern.dialog.send).encode())
            elif pattern.role == "keepalive":
                deadline = time.monotonic() + milestones[index].timeout * self.config.timeout_scale
                self.debug_shift = 0.0
            if settle_until is None:
                patterns = self._patterns(index)

    def _failure_kind(self, pattern: _Pattern, line: str) -> str | None:
        """The failure kind a matched failure pattern stands for, or None if the line is no failure
        (a report header in a suppressed line, or a warning while warnings only get recorded)."""
        if pattern.name != REPORT:
            return pattern.name
        whole_line = self.child.before.rsplit(b"\n", 1)[-1] + self.child.after
        found = classify_line(self.config.family, _text(whole_line))
        if found is None:
            return None
        kind, severity = found
        if severity != CRASH and self.config.warnings != WARNINGS_FAIL:
            return None
        return kind

    def _failed(self, kind: str, t: float, raw_offset: int) -> WatchOutcome:
        # The rest of the report (and the backend's events, e.g. a triple fault right after a panic).
        message = _text(self.child.after + self._rest_of_report())
        self._check_events()
        failure = Failure(kind, message.strip()[:2000], round(t, 6), raw_offset)
        return WatchOutcome(FAIL, _reason(kind, _headline(failure.message)), self.hits, failure=failure,
                            events=self.seen_events)

    def _after_stop(self, stop: WatchOutcome, settled: bool) -> WatchOutcome:
        """A guest that powers off while settling (every milestone seen, no crash within the grace
        for its last lines) has finished its boot: fixture-arm64 ends with PSCI SYSTEM_OFF."""
        if settled and stop.failure is not None and stop.failure.kind == "shutdown":
            return self._passed()
        return stop

    def _passed(self) -> WatchOutcome:
        n = len(self.config.milestones)
        return WatchOutcome(PASS, f"all {n} milestones reached", self.hits, events=self.seen_events)

    # -- helpers ------------------------------------------------------------------------------
    def _rest_of_report(self, max_lines: int = 2000) -> bytes:
        """Read on until the console is quiet (the backtrace is complete) or a bound is reached."""
        tail = b""
        deadline = time.monotonic() + self.config.report_max_s
        for _ in range(max_lines):
            wait = min(self.config.report_quiet, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                self.child.expect(b"\n", timeout=wait)
            except (pexpect.TIMEOUT, pexpect.EOF):
                break
            self._advance()
            tail += self.child.before + b"\n"
        return tail[-65536:]

    def _advance(self) -> int:
        self._consumed += len(self.child.before) + len(self.child.after)
        return self._consumed

    def _match_line(self) -> str:
        before = self.child.before.rsplit(b"\n", 1)[-1]
        return _text(before + self.child.after).strip()[:300]

    def _reboot_loop(self) -> WatchOutcome | None:
        banners = self.stream.banners
        if len(banners) < 2:
            return None
        t, raw_offset, line = banners[1]
        failure = Failure("reboot-loop", f"boot banner seen {len(banners)} times: {line}", round(t, 6), raw_offset)
        return WatchOutcome(FAIL, "reboot loop: the boot banner appeared again", self.hits, failure=failure,
                            events=self.seen_events)

    def _report_progress(self, index: int) -> None:
        names = [m.name for m in self.config.milestones]
        self.progress({"milestone": names[index - 1] if index else None,
                       "waiting_for": names[index] if index < len(names) else None,
                       "elapsed": round(time.monotonic() - self.stream.start_time, 3),
                       "gaps": self.gap_count, "milestones_hit": index, "milestones_total": len(names)})

    def _check_events(self) -> WatchOutcome | None:
        for event in self.events.poll():
            self.seen_events.append(event)
            decided = self._decide(event)
            if decided:
                return decided
        return None

    def _decide(self, event: ev.VmEvent) -> WatchOutcome | None:
        t = round(event.t - self.stream.start_time, 6)
        data = event.data
        if event.type == ev.GAP:
            self.gap_count += 1
            if data.get("fate") == "stopped":
                return self._stopped_by_gap(t, f"{data.get('kind')} {data.get('key')}")
            return None
        if event.type == ev.HOST_EMULATION_FAILURE:
            insn = data.get("insn") or data.get("instruction") or "unknown instruction"
            return self._stopped_by_gap(t, f"host emulation failure on {insn}")
        if event.type == ev.TRIPLE_FAULT:
            return self._fail("triple-fault", f"triple fault at rip {data.get('rip', '?')}", t)
        if event.type == ev.RESET:
            return self._fail("reset", f"guest reset ({data.get('source', 'unknown source')})", t)
        if event.type == ev.SHUTDOWN:
            return self._fail("shutdown", "guest powered off before reaching every milestone", t)
        if event.type in (ev.DEBUG_STOP, ev.DEBUG_RESUME, ev.DEBUG_LISTEN):
            self._debugger_event(event)
            return None
        if event.type == ev.BACKEND_ERROR:
            return WatchOutcome(ERROR, f"backend error: {data.get('message', '')}", self.hits,
                                failure=Failure("backend-error", str(data.get("message", "")), t),
                                events=self.seen_events)
        return None

    def _debugger_event(self, event: ev.VmEvent) -> None:
        if event.type == ev.DEBUG_LISTEN:
            self.progress({"gdb": f"{event.data.get('host')}:{event.data.get('port')}"})
        elif event.type == ev.DEBUG_STOP and self.debug_stopped_at is None:
            self.debug_stopped_at = event.t
        elif event.type == ev.DEBUG_RESUME and self.debug_stopped_at is not None:
            self.debug_shift += event.t - self.debug_stopped_at
            self.stream.touch(event.t)         # silence is counted from the resume
            self.debug_stopped_at = None

    def _fail(self, kind: str, message: str, t: float) -> WatchOutcome:
        return WatchOutcome(FAIL, message, self.hits, failure=Failure(kind, message, t), events=self.seen_events)

    def _stopped_by_gap(self, t: float, what: str) -> WatchOutcome:
        last = self.hits[-1].name if self.hits else "none"
        return WatchOutcome(GAP, f"stopped by an emulation gap: {what} (last milestone: {last})", self.hits,
                            failure=Failure("emulation-gap", what, t), events=self.seen_events)

    def _timeout(self, index: int, why: str, hang: bool = False) -> WatchOutcome:
        m = self.config.milestones[index]
        miss = near_miss(m.name, m.pattern, self.hits[-1].name if self.hits else None, self.stream.last_lines(20))
        failure = Failure("hang", why, round(time.monotonic() - self.stream.start_time, 6)) if hang else None
        return WatchOutcome(TIMEOUT, why, self.hits, failure=failure, near_miss=miss, events=self.seen_events)

    def _ended(self, index: int) -> WatchOutcome:
        """The console closed: the backend process is gone. Its events say why, if anything does."""
        deadline = time.monotonic() + 3.0
        while self.session.poll_exit() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        decided = self._check_events()
        if decided:
            return decided
        code = self.session.poll_exit()
        m = self.config.milestones[index]
        return WatchOutcome(ERROR, f"backend exited (code {code}) before milestone {m.name!r}", self.hits,
                            failure=Failure("backend-exit", f"exit code {code}"),
                            near_miss=near_miss(m.name, m.pattern, self.hits[-1].name if self.hits else None,
                                                self.stream.last_lines(20)),
                            events=self.seen_events)


def _reason(kind: str, headline: str) -> str:
    """`kind: headline`, without saying the kind twice (`panic: panic: ...`)."""
    if headline.lower().startswith(kind.lower()):
        return headline
    return f"{kind}: {headline}"


def _headline(message: str) -> str:
    """The line that says what failed; a header line like Xen's 'Panic on CPU 0:' takes the next one too."""
    lines = [_PRINTK_PREFIX.sub("", l).strip() for l in message.splitlines() if l.strip()]
    head = lines[0] if lines else ""
    if head.endswith(":") and len(lines) > 1:
        head = f"{head} {lines[1]}"
    return head[:200]


def _re(pattern: str) -> re.Pattern[bytes]:
    return re.compile(pattern.encode())


def _text(data: bytes) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def _unescape(text: str) -> str:
    """Dialog answers may be written with backslash escapes in single-quoted YAML ('wd0a\\n')."""
    return codecs.decode(text, "unicode_escape") if "\\" in text else text
