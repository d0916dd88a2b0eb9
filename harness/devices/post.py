"""Ports a guest writes to mark progress: the POST-code port 0x80 and the boot-timer port.

Facts followed: port 0x80 is the PC's POST diagnostic port (firmware and some kernels write a byte
there; Linux also uses it as an I/O delay). cloud-hypervisor timestamps writes to it. Firecracker's
boot-timer device takes a write at a fixed port to mark "the guest got here" (layout.BOOT_TIMER_PORT).
Both emit a VmEvent with the host CLOCK_MONOTONIC time so the runner can place it on the timeline.
"""
from __future__ import annotations

import threading

from harness.devices.context import DeviceContext
from harness.model.events import BOOT_TIMER, POST_CODE, VmEvent


def _mask(size: int, value: int) -> int:
    return value & ((1 << (8 * max(1, min(size, 4)))) - 1)


class PostPort:
    """Port 0x80: each write is a POST-code event; reads return the last code."""

    def __init__(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self.last = 0
        self.writes = 0

    def read(self, offset: int, size: int) -> int:
        return _mask(size, self.last)

    def write(self, offset: int, size: int, value: int) -> None:
        value = _mask(size, value)
        with self._lock:
            self.last = value
            self.writes += 1
        self._ctx.emit(VmEvent(POST_CODE, self._ctx.now(), {"value": value}))


class BootTimer:
    """The boot-timer port: a write of 1-4 bytes marks a moment; reads answer 0."""

    def __init__(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        self.marks: list[tuple[int, float]] = []

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        now = self._ctx.now()
        value = _mask(size, value)
        self.marks.append((value, now))
        self._ctx.emit(VmEvent(BOOT_TIMER, now, {"value": value, "t": now}))
