"""A scripted backend session: console bytes and events at given times, no hypervisor."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from harness.backends.base import BackendSession
from harness.console.patterns import banner_pattern, failure_patterns
from harness.console.stream import ConsoleStream
from harness.console.watcher import ConsoleWatcher, WatchConfig
from harness.model import events as ev
from harness.model.guest import Dialog, Milestone
from harness.model.session import BootRequest, SessionSummary

TRANSCRIPTS = Path(__file__).parent / "transcripts"


class ScriptedSession(BackendSession):
    """Steps: (delay_s, bytes) writes console output; (delay_s, VmEvent-type, data) appends an event;
    (delay_s, "EXIT") closes the console."""

    def __init__(self, tmp: Path, steps: list[tuple], idle: bool = True) -> None:
        super().__init__(BootRequest("c", "g", "linux", "x86_64", "pvh", None, workdir=tmp))
        self._r, self._w = os.pipe()
        self.sent = bytearray()
        self._exit: int | None = None
        self._writer = ev.EventWriter(self.request.events_path)
        self._thread = threading.Thread(target=self._play, args=(steps, idle), daemon=True)
        self._thread.start()

    def _play(self, steps: list[tuple], idle: bool) -> None:
        for step in steps:
            time.sleep(step[0])
            if step[1] == "EXIT":
                self._exit = 1
                os.close(self._w)
                return
            if isinstance(step[1], bytes):
                os.write(self._w, step[1])
            else:
                self._writer.emit(ev.VmEvent(step[1], time.monotonic(), step[2]))

    @property
    def console_fd(self) -> int:
        return self._r

    def send(self, data: bytes) -> None:
        self.sent.extend(data)

    def poll_exit(self) -> int | None:
        return self._exit

    def stop(self) -> SessionSummary:
        return SessionSummary(exit_code=self._exit)


def chunks(text: bytes, size: int = 7, delay: float = 0.0) -> list[tuple]:
    """Split console text into small chunks so patterns straddle reads."""
    return [(delay, text[i:i + size]) for i in range(0, len(text), size)]


@pytest.fixture
def watch(tmp_path: Path):
    def run(steps: list[tuple], milestones: list[tuple[str, str, float]], family: str = "linux",
            dialogs: list[Dialog] | None = None, keepalive: list[str] | None = None, hang: float = 5.0,
            idle: bool = True, settle: float = 0.0, warnings: str = "record"):
        session = ScriptedSession(tmp_path, steps, idle)
        stream = ConsoleStream(session.console_fd, tmp_path / "console.log", session.start_time,
                               banner=banner_pattern(family))
        config = WatchConfig([Milestone(*m) for m in milestones], failure_patterns(family), dialogs or [],
                             keepalive or [], hang_timeout=hang, banner=banner_pattern(family), family=family,
                             settle=settle, warnings=warnings, report_quiet=0.2)
        outcome = ConsoleWatcher(session, stream, ev.EventReader(session.request.events_path), config).run()
        stream.detach()
        return outcome, session, stream
    return run
