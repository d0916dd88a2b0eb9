"""Events a backend reports beside the console stream.

A backend process appends one JSON object per line to its events file; the runner tails it
while it matches milestones. Times are host CLOCK_MONOTONIC (time.monotonic()), which is
shared by every process on the host, so a child's timestamps compare with the runner's.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harness.model.files import LineTail
from harness.model.record import JsonRecord

# Event types
VM_START = "vm-start"            # first KVM_RUN / QEMU started; data: {host: {...}}
GAP = "gap"                      # data: GapRecord.to_json()
TRIPLE_FAULT = "triple-fault"    # data: {rip, flight_recorder}
RESET = "reset"                  # guest asked for a reset (8042 0xFE, port 0xCF9, QEMU reset)
SHUTDOWN = "shutdown"            # guest powered off
HOST_EMULATION_FAILURE = "host-emulation-failure"  # data: {insn, bytes, registers, suberror}
BOOT_TIMER = "boot-timer"        # data: {value}
POST_CODE = "post-code"          # data: {value}
EXIT_COUNTS = "exit-counts"      # periodic snapshot: {counts: {reason: n}, user_time_s: float}
BACKEND_ERROR = "backend-error"  # infrastructure failure inside the backend: {message}
VM_EXIT = "vm-exit"              # the VM stopped; data: {reason, code}
DEBUG_LISTEN = "debug-listen"    # a gdb stub listens; data: {host, port}
DEBUG_STOP = "debug-stop"        # the VM stopped for a debugger; data: {vcpu, why, signal}
DEBUG_RESUME = "debug-resume"    # the debugger let it run again
CPU_ON = "cpu-on"                # a secondary vCPU left power-off (PSCI CPU_ON); data: {vcpu, source}


@dataclass
class VmEvent(JsonRecord):
    type: str
    t: float
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VmEvent":
        return cls(str(data["type"]), float(data["t"]), data.get("data") or {})

    def to_line(self) -> str:
        """One line of an events file."""
        return json.dumps(self.to_json(), separators=(",", ":"), default=str)


class EventWriter:
    """Appends events, one line each, flushed at once (a killed VM keeps what it reported)."""

    def __init__(self, path: Path | str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, event: VmEvent) -> None:
        os.write(self._fd, (event.to_line() + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


class EventReader:
    """Tails an events file; `poll()` returns the events appended since the last call."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._tail = LineTail(self.path)

    def poll(self) -> list[VmEvent]:
        return list(_parse(self._tail.lines()))


def _parse(lines: list[bytes]) -> Iterator[VmEvent]:
    for line in lines:
        if not line.strip():
            continue
        try:
            yield VmEvent.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError):
            continue  # a torn line from a killed writer is not an event
