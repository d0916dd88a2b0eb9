"""The devices of an aarch64 VM: a PL011 console and a PL031 RTC on the MMIO bus, placed where
the machine description (harness.boot.fdt.Aarch64Machine) says, which is also what the guest's
device tree says. The GICv3 and the architected timer are KVM's (in-kernel), not modelled here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from harness.devices.bus import Bus
from harness.devices.context import DeviceContext
from harness.devices.pl011 import WINDOW as PL011_WINDOW
from harness.devices.pl011 import Pl011
from harness.devices.pl031 import WINDOW as PL031_WINDOW
from harness.devices.pl031 import Pl031


class _Slot(Protocol):
    base: int
    spi: int


class _Machine(Protocol):
    uart: _Slot
    rtc: _Slot


@dataclass
class Aarch64Devices:
    mmio_bus: Bus
    uart: Pl011
    rtc: Pl031
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.rtc.close()

    def describe(self) -> dict[str, list[dict[str, object]]]:
        return {"mmio": [r.describe() for r in self.mmio_bus.ranges()]}


def build_aarch64_devices(ctx: DeviceContext, machine: _Machine,
                          console_output: Callable[[bytes], None]) -> Aarch64Devices:
    """`ctx.set_irq(spi, level)` gets SPI numbers; the KVM core turns them into GIC INTIDs."""
    bus = Bus("mmio")
    uart = Pl011(ctx, machine.uart.spi, console_output)
    bus.register(machine.uart.base, PL011_WINDOW, uart, "pl011")
    rtc = Pl031(ctx, machine.rtc.spi)
    bus.register(machine.rtc.base, PL031_WINDOW, rtc, "pl031")
    return Aarch64Devices(mmio_bus=bus, uart=uart, rtc=rtc)
