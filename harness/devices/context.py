"""What a device may do to the world outside it: raise interrupt lines, emit events, read the clock.

The KVM core builds one DeviceContext per VM. Devices are called from vCPU threads (and, for
host input and timers, from other threads), so every callable here must be thread-safe.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from harness.model.events import VmEvent
from harness.model.gap import GapRecord


def _drop_gap(_gap: GapRecord) -> None:
    """Default gap sink: a context built without a ledger simply forgets gaps."""


@dataclass
class DeviceContext:
    set_irq: Callable[[int, int], None]          # (gsi, level): KVM_IRQ_LINE
    emit: Callable[[VmEvent], None]              # a side-channel event (harness.model.events)
    now: Callable[[], float] = time.monotonic    # host CLOCK_MONOTONIC, shared with the runner
    gap: Callable[[GapRecord], None] = field(default=_drop_gap)  # report an emulation gap

    def pulse_irq(self, gsi: int) -> None:
        """An ISA edge: raise then lower, as KVM_IRQ_LINE expects for edge-triggered pins."""
        self.set_irq(gsi, 1)
        self.set_irq(gsi, 0)
