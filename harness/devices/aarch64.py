"""The devices of an aarch64 VM: a PL011 console, a PL031 RTC and the virtio devices the guest asks
for (harness.devices.virtio's models behind virtio-mmio, the x86 code) on the MMIO bus, placed
where the machine description (harness.boot.fdt.Aarch64Machine) says, which is also what the
guest's device tree says. The GICv3 and the architected timer are KVM's (in-kernel), not modelled here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from harness.devices.bus import Bus
from harness.devices.context import DeviceContext
from harness.devices.pl011 import WINDOW as PL011_WINDOW
from harness.devices.pl011 import Pl011
from harness.devices.pl031 import WINDOW as PL031_WINDOW
from harness.devices.pl031 import Pl031
from harness.devices.virtio import MmioSlots, VirtioSetup, attach_mmio, build_models, close_transports


class _Slot(Protocol):
    base: int
    spi: int


class _Machine(Protocol):
    uart: _Slot
    rtc: _Slot

    def virtio_devices(self) -> list[Any]: ...


@dataclass
class Aarch64Devices:
    mmio_bus: Bus
    uart: Pl011
    rtc: Pl031
    virtio: list[Any] = field(default_factory=list)     # virtio-mmio transports, slot order
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.rtc.close()
            close_transports(self.virtio)

    def describe(self) -> dict[str, list[dict[str, object]]]:
        return {"mmio": [r.describe() for r in self.mmio_bus.ranges()]}


def build_aarch64_devices(ctx: DeviceContext, machine: _Machine, console_output: Callable[[bytes], None],
                          ram: Any = None, virtio: VirtioSetup | None = None,
                          sinks: dict[str, Callable[[bytes], None]] | None = None) -> Aarch64Devices:
    """`ctx.set_irq(spi, level)` gets SPI numbers; the KVM core turns them into GIC INTIDs.
    `virtio` (with `ram`): the guest's virtio devices, one per slot of `machine.virtio_devices()`."""
    bus = Bus("mmio")
    uart = Pl011(ctx, machine.uart.spi, console_output)
    bus.register(machine.uart.base, PL011_WINDOW, uart, "pl011")
    rtc = Pl031(ctx, machine.rtc.spi)
    bus.register(machine.rtc.base, PL031_WINDOW, rtc, "pl031")
    devices = Aarch64Devices(mmio_bus=bus, uart=uart, rtc=rtc)
    described = machine.virtio_devices()
    wanted = virtio.devices if virtio is not None else []
    if len(described) != len(wanted):       # the DTB would name devices the bus does not have
        raise ValueError(f"{len(wanted)} virtio devices, {len(described)} virtio-mmio slots described")
    if wanted:
        slots = MmioSlots(lambda i: (described[i].base, described[i].spi), len(described), described[0].size)
        devices.virtio = attach_mmio(bus, build_models(ctx, ram, virtio, sinks), slots, ctx.set_irq)
    return devices
