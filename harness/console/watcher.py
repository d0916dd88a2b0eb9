"""Match a guest's console against its milestones, failure patterns and dialogs; decide the outcome.

One loop per cell, on the clean stream of ConsoleStream through pexpect. Between reads it
tails the backend's events (triple fault, reset, host emulation failure, ...), watches for
silence (a hang) and for the current milestone's deadline. The first decisive thing wins:
- every milestone matched                      -> pass
- a failure pattern, triple fault, reset,
  power-off or the boot banner seen twice      -> fail (banners are counted by ConsoleStream)
- the backend stopped on an emulation gap      -> gap
- a milestone's deadline or the hang window    -> timeout (with a near-miss report)
- the backend died / reported an infra error   -> error
"""
from __future__ import annotations

import codecs
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import pexpect
import pexpect.fdpexpect

from harness.console.nearmiss import near_miss
from harness.console.stream import ConsoleStream
from harness.model import events as ev
from harness.model.guest import Dialog, Milestone
from harness.model.result import ERROR, FAIL, GAP, PASS, TIMEOUT, Failure, MilestoneHit, NearMiss

Progress = Callable[[dict], None]


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


@dataclass
class WatchOutcome:
    outcome: str
    reason: str
    milestones: list[MilestoneHit]
    failure: Failure | None = None
    near_miss: NearMiss | None = None
    events: list[ev.VmEvent] = field(default_factory=list)


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
        start = self.stream.start_time
        milestones = self.config.milestones
        index = 0
        phase_start = start
        deadline = phase_start + milestones[0].timeout * self.config.timeout_scale
        patterns = self._patterns(0)
        last_progress = 0.0
        while True:
            decided = self._check_events() or self._reboot_loop()
            if decided:
                return decided
            try:
                i = self.child.expect([p.regex for p in patterns], timeout=self.config.poll_interval)
            except pexpect.TIMEOUT:
                now = time.monotonic()
                if now >= deadline:
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
                return self._ended(index)
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
                    return WatchOutcome(PASS, f"all {len(milestones)} milestones reached", self.hits,
                                        events=self.seen_events)
                phase_start = time.monotonic()
                deadline = phase_start + milestones[index].timeout * self.config.timeout_scale
            elif pattern.role == "failure":
                # Let the backend's events (e.g. a triple fault right after the panic text) arrive too.
                message = _text(self.child.after + self._rest_of_failure())
                self._check_events()
                failure = Failure(pattern.name, message.strip()[:2000], round(t, 6), raw_offset)
                return WatchOutcome(FAIL, f"{pattern.name}: {_headline(failure.message)}", self.hits,
                                    failure=failure, events=self.seen_events)
            elif pattern.role == "dialog":
                assert pattern.dialog is not None
                self._dialog_sends[id(pattern.dialog)] = self._dialog_sends.get(id(pattern.dialog), 0) + 1
                self.session.send(_unescape(pattern.dialog.send).encode())
            elif pattern.role == "keepalive":
                deadline = time.monotonic() + milestones[index].timeout * self.config.timeout_scale
            patterns = self._patterns(index)

    # -- helpers ------------------------------------------------------------------------------
    def _rest_of_failure(self, line_wait: float = 1.0, context_wait: float = 0.3, max_lines: int = 8) -> bytes:
        """The rest of the failure's line (a pattern can match a partial read) and a few lines of context."""
        tail = b""
        deadline = time.monotonic() + line_wait
        for n in range(max_lines + 1):
            wait = max(0.0, deadline - time.monotonic()) if n == 0 else context_wait
            try:
                self.child.expect(b"\n", timeout=wait)
            except (pexpect.TIMEOUT, pexpect.EOF):
                break
            self._advance()
            tail += self.child.before + b"\n"
        return tail

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
        if event.type == ev.BACKEND_ERROR:
            return WatchOutcome(ERROR, f"backend error: {data.get('message', '')}", self.hits,
                                failure=Failure("backend-error", str(data.get("message", "")), t),
                                events=self.seen_events)
        return None

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


def _headline(message: str) -> str:
    """The line that says what failed; a header line like Xen's 'Panic on CPU 0:' takes the next one too."""
    lines = [l.strip() for l in message.splitlines() if l.strip()]
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
