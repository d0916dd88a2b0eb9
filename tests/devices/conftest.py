"""Fakes for a DeviceContext: they record what devices did, so tests can assert on it."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from harness.devices.context import DeviceContext
from harness.model.events import VmEvent
from harness.model.gap import GapRecord


@dataclass
class Recorder:
    irqs: list[tuple[int, int]] = field(default_factory=list)
    events: list[VmEvent] = field(default_factory=list)
    gaps: list[GapRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_irq(self, gsi: int, level: int) -> None:
        with self.lock:
            self.irqs.append((gsi, level))

    def emit(self, event: VmEvent) -> None:
        self.events.append(event)

    def gap(self, record: GapRecord) -> None:
        self.gaps.append(record)

    def context(self) -> DeviceContext:
        return DeviceContext(set_irq=self.set_irq, emit=self.emit, gap=self.gap)

    def level(self, gsi: int) -> int:
        """The current level of a line, from the last set_irq call for it (0 if never set)."""
        for g, lvl in reversed(self.irqs):
            if g == gsi:
                return lvl
        return 0

    def rising_edges(self, gsi: int) -> int:
        with self.lock:
            return sum(1 for g, lvl in self.irqs if g == gsi and lvl == 1)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()
