"""The built-in hypervisor's device model: pure Python, one device per module, no KVM needed.

`build_x86_devices()` assembles the PC devices a guest finds on the I/O bus. Ports served inside
KVM when the in-kernel irqchip and PIT are on are deliberately left unregistered: PIT 0x40-0x43,
speaker 0x61, PIC 0x20/0xA0 and ELCR 0x4D0-0x4D1 (KVM never exits for them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from harness import layout
from harness.devices.acpi_sleep import AcpiSleep
from harness.devices.bus import Bus
from harness.devices.context import DeviceContext
from harness.devices.i8042 import I8042
from harness.devices.pci import PciHost
from harness.devices.post import BootTimer, PostPort
from harness.devices.rtc import Rtc
from harness.devices.uart16550 import Uart16550

__all__ = ["Bus", "DeviceContext", "DeviceSet", "build_x86_devices"]

UART_PORTS = 8
BOOT_TIMER_PORTS = 4   # a 1..4-byte write at BOOT_TIMER_PORT


def _discard(_data: bytes) -> None:
    """Output sink for a UART nobody listens to."""


@dataclass
class DeviceSet:
    io_bus: Bus
    mmio_bus: Bus
    uart: Uart16550
    rtc: Rtc
    i8042: I8042
    pci: PciHost
    post: PostPort
    boot_timer: BootTimer
    uart2: Uart16550 | None = None
    virtio: list[Any] = field(default_factory=list)     # attached virtio transports (harness.devices.virtio)
    ctx: DeviceContext | None = None                    # what later devices (virtio, table ROM) report through
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Stop the RTC timer and report the gaps devices were still counting. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.rtc.close()
        from harness.devices.virtio import close_transports
        close_transports(self.virtio)
        self.i8042.flush_gaps()
        self.pci.flush_gaps()

    def mmio_descriptions(self) -> list[Any]:
        """The virtio-mmio slots, as harness.firmware.machine.MmioDevice (for the DSDT)."""
        return [t.firmware_entry() for t in self.virtio if t.transport == "mmio"]

    def pci_descriptions(self) -> list[Any]:
        """The PCI functions beside the host bridge, as harness.firmware.machine.PciDevice."""
        return [t.firmware_entry() for t in self.virtio if t.transport == "pci"]

    def describe(self) -> dict[str, list[dict[str, object]]]:
        """The bus maps, for reports."""
        return {"io": [r.describe() for r in self.io_bus.ranges()],
                "mmio": [r.describe() for r in self.mmio_bus.ranges()]}


def build_x86_devices(ctx: DeviceContext, console_output: Callable[[bytes], None],
                      second_uart: bool = False,
                      second_output: Callable[[bytes], None] | None = None,
                      memory_bytes: int | None = None) -> DeviceSet:
    """The PC devices on a fresh I/O bus, and an empty MMIO bus for later devices.

    `console_output` gets COM1's bytes; `second_output` COM2's (dropped when None).
    `memory_bytes`, when given, fills the CMOS memory-size bytes as PC firmware would.
    """
    io_bus, mmio_bus = Bus("io"), Bus("mmio")
    uart = Uart16550(ctx, layout.COM1_IRQ, console_output)
    io_bus.register(layout.COM1_PORT, UART_PORTS, uart, "com1")
    uart2 = None
    if second_uart:
        uart2 = Uart16550(ctx, layout.COM2_IRQ, second_output or _discard)
        io_bus.register(layout.COM2_PORT, UART_PORTS, uart2, "com2")

    rtc = Rtc(ctx, layout.RTC_IRQ)
    if memory_bytes is not None:
        rtc.set_cmos_memory(memory_bytes)
    io_bus.register(layout.RTC_PORT, 2, rtc, "rtc")

    i8042 = I8042(ctx)
    io_bus.register(layout.I8042_DATA_PORT, 1, i8042.data_port, "i8042-data")
    io_bus.register(layout.I8042_CMD_PORT, 1, i8042.command_port, "i8042-command")

    pci = PciHost(ctx)
    io_bus.register(layout.PCI_CONFIG_ADDRESS, 8, pci, "pci-config")

    post = PostPort(ctx)
    io_bus.register(layout.POST_PORT, 1, post, "post")
    sleep = AcpiSleep(ctx, layout.ACPI_SLEEP_CONTROL_PORT)
    io_bus.register(layout.ACPI_SLEEP_CONTROL_PORT, 2, sleep, "acpi-sleep")
    boot_timer = BootTimer(ctx)
    io_bus.register(layout.BOOT_TIMER_PORT, BOOT_TIMER_PORTS, boot_timer, "boot-timer")

    return DeviceSet(io_bus=io_bus, mmio_bus=mmio_bus, uart=uart, rtc=rtc, i8042=i8042, pci=pci,
                     post=post, boot_timer=boot_timer, uart2=uart2, ctx=ctx)
