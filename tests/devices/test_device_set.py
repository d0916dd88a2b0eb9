from __future__ import annotations

from harness import layout
from harness.devices import build_x86_devices
from harness.model.events import BOOT_TIMER, POST_CODE


def test_builder_wires_every_device(rec) -> None:
    out: list[bytes] = []
    devs = build_x86_devices(rec.context(), out.append, memory_bytes=256 * layout.MiB)
    try:
        io = devs.io_bus
        io.write(layout.COM1_PORT, 1, ord("A"))
        assert out == [b"A"]
        io.write(layout.RTC_PORT, 1, 0x0D)
        assert io.read(layout.RTC_PORT + 1, 1) == 0x80
        io.write(layout.RTC_PORT, 1, 0x17)
        assert io.read(layout.RTC_PORT + 1, 1) == 0xFF  # 255 MiB of extended memory, in KiB (low byte)
        io.write(layout.I8042_CMD_PORT, 1, 0xAA)
        assert io.read(layout.I8042_DATA_PORT, 1) == 0x55
        io.write(layout.PCI_CONFIG_ADDRESS, 4, 0x8000_0000)
        assert io.read(layout.PCI_CONFIG_DATA, 4) == 0x1237_8086
        io.write(layout.POST_PORT, 1, 0x10)
        io.write(layout.BOOT_TIMER_PORT, 4, 123)
        assert [e.type for e in rec.events] == [POST_CODE, BOOT_TIMER]
        assert devs.uart2 is None and io.read(layout.COM2_PORT, 1) is None
    finally:
        devs.close()
        devs.close()


def test_kvm_served_ports_stay_unclaimed(rec) -> None:
    devs = build_x86_devices(rec.context(), lambda b: None)
    try:
        for port in (0x20, 0x21, 0xA0, 0xA1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x4D0, 0x4D1):
            assert devs.io_bus.find(port) is None, hex(port)
        assert devs.mmio_bus.ranges() == []
        names = [r["name"] for r in devs.describe()["io"]]
        assert names == ["i8042-data", "i8042-command", "rtc", "post", "com1", "boot-timer", "acpi-sleep", "pci-config"]
    finally:
        devs.close()


def test_second_uart(rec) -> None:
    com2: list[bytes] = []
    devs = build_x86_devices(rec.context(), lambda b: None, second_uart=True, second_output=com2.append)
    try:
        devs.io_bus.write(layout.COM2_PORT + 4, 1, 0x08)   # OUT2
        devs.io_bus.write(layout.COM2_PORT + 1, 1, 0x02)   # THRE interrupt
        devs.io_bus.write(layout.COM2_PORT, 1, ord("z"))
        assert com2 == [b"z"]
        assert (layout.COM2_IRQ, 1) in rec.irqs
    finally:
        devs.close()


def test_close_flushes_counted_gaps(rec) -> None:
    devs = build_x86_devices(rec.context(), lambda b: None)
    for _ in range(1500):
        devs.io_bus.read(layout.I8042_CMD_PORT, 1)
    devs.close()
    assert sum(g.count for g in rec.gaps) == 1500
