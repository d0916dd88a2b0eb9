"""virtio on an aarch64 VM: the x86 device models behind virtio-mmio on the aarch64 MMIO bus, at
the slots and SPIs the generated device tree names (read back with Debian's dtc/fdtget), driven
through the bus the way Linux's virtio_mmio driver does."""
from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "boot"))
from fdt_check import dtc_decompile, fdt_nodes, fdtget, needs_dtc  # noqa: E402
from virtio_driver import MmioDriver  # noqa: E402

from harness import layout  # noqa: E402
from harness.boot.fdt import Aarch64Machine, build_fdt  # noqa: E402
from harness.devices.aarch64 import build_aarch64_devices  # noqa: E402
from harness.devices.virtio import VirtioSetup  # noqa: E402
from harness.devices.virtio import blk as B  # noqa: E402
from harness.devices.virtio import mmio as M  # noqa: E402
from harness.devices.virtio.device import STATUS_DEVICE_NEEDS_RESET  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.model.gap import VIRTIO_QUEUE  # noqa: E402
from harness.memory import GuestRam  # noqa: E402

MiB = layout.MiB
RINGS = layout.A64_RAM_START + 16 * MiB          # driver structures inside aarch64 RAM (at 1 GiB)
DATA = layout.A64_RAM_START + 32 * MiB
AARCH64 = ("mmio",)


class BusPort:
    """One slot's registers reached through the machine's MMIO bus (as the guest's accesses are)."""

    def __init__(self, bus, base: int, device) -> None:
        self.bus, self.base, self.device = bus, base, device

    def read(self, offset: int, size: int) -> int:
        return self.bus.read(self.base + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        assert self.bus.write(self.base + offset, size, value)


@pytest.fixture
def ram():
    mem = GuestRam.aarch64(64 * MiB)
    yield mem
    mem.close()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 4096)          # 1 MiB
    return path


def _machine_and_devices(rec, ram, image, tmp_path, kinds):
    setup = VirtioSetup.from_guest({"virtio_devices": kinds}, image, tmp_path, transports=AARCH64)
    machine = Aarch64Machine(64 * MiB, virtio_slots=len(setup.devices))
    sinks = {"hvc0": lambda data: rec.emit(data)}
    return machine, build_aarch64_devices(rec.context(), machine, lambda data: None, ram, setup, sinks)


@needs_dtc
def test_virtio_mmio_nodes_name_the_transports_on_the_bus(rec, ram, image, tmp_path):
    machine, devs = _machine_and_devices(rec, ram, image, tmp_path, ["blk", "console", "rng"])
    try:
        blob = build_fdt(machine)
        dtc_decompile(blob, tmp_path)                       # no dtc warnings
        nodes = [n for n in fdt_nodes(blob, tmp_path) if n.startswith("virtio_mmio@")]
        assert nodes == [f"virtio_mmio@{t.base:x}" for t in devs.virtio]
        for transport in devs.virtio:
            node = f"/virtio_mmio@{transport.base:x}"
            assert fdtget(blob, tmp_path, node, "compatible", "s") == "virtio,mmio"
            reg = [int(c, 16) for c in fdtget(blob, tmp_path, node, "reg").split()]
            assert (reg[0] << 32 | reg[1], reg[2] << 32 | reg[3]) == (transport.base, layout.A64_VIRTIO_MMIO_SLOT)
            irq_type, spi, _flags = (int(c, 16) for c in fdtget(blob, tmp_path, node, "interrupts").split())
            assert (irq_type, spi) == (0, transport.gsi)     # a GIC SPI, the line the transport raises
            assert layout.A64_VIRTIO_FIRST_SPI <= spi < layout.A64_VIRTIO_FIRST_SPI + layout.A64_VIRTIO_MMIO_SLOTS
        names = {r.name for r in devs.mmio_bus.ranges()}
        assert names == {"pl011", "pl031", "virtio-mmio-blk", "virtio-mmio-console", "virtio-mmio-rng"}
        ids = [devs.mmio_bus.read(t.base + M.DEVICE_ID, 4) for t in devs.virtio]
        assert ids == [2, 3, 4]                             # block, console, entropy (virtio 1.2, 5)
    finally:
        devs.close()


def test_blk_reads_the_disk_through_the_bus_and_raises_its_spi(rec, ram, image, tmp_path):
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    machine, devs = _machine_and_devices(rec, ram, image, tmp_path, ["blk"])
    try:
        (transport,) = devs.virtio
        drv = MmioDriver(BusPort(devs.mmio_bus, transport.base, transport.device), ram, ring_base=RINGS)
        assert drv.init() & 4                              # DRIVER_OK
        assert drv.config(B.CFG_CAPACITY, 4) == 2048
        ram.write(DATA, struct.pack("<IIQ", B.T_IN, 0, 1))  # read sector 1
        drv.rings[0].submit([(DATA, 16, False), (DATA + 0x1000, 512, True), (DATA + 0x800, 1, True)])
        drv.kick(0)
        assert drv.rings[0].used_entries() == [(0, 513)]
        assert ram.read(DATA + 0x800, 1) == bytes([B.S_OK])
        assert ram.read(DATA + 0x1000, 512) == bytes(range(256)) * 2
        assert (transport.gsi, 1) in rec.irqs and transport.gsi == layout.a64_virtio_slot(0)[1]
        drv.ack()
        assert rec.level(transport.gsi) == 0
        ram.write(DATA, struct.pack("<IIQ", B.T_IN, 0, 1 << 40))  # far beyond the disk: refused
        drv.rings[0].submit([(DATA, 16, False), (DATA + 0x1000, 512, True), (DATA + 0x800, 1, True)])
        drv.kick(0)
        drv.rings[0].used_entries()
        assert ram.read(DATA + 0x800, 1) == bytes([B.S_IOERR])
    finally:
        devs.close()
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


def test_ring_outside_aarch64_ram_is_refused(rec, ram, image, tmp_path):
    """x86's ring address (1 MiB) is below aarch64 RAM: the shared virtqueue refuses to enable it."""
    machine, devs = _machine_and_devices(rec, ram, image, tmp_path, ["rng"])
    try:
        (transport,) = devs.virtio
        drv = MmioDriver(BusPort(devs.mmio_bus, transport.base, transport.device), ram, ring_base=0x100000)
        status = drv.init()
        assert not transport.device.queues[0].ready
        assert status & STATUS_DEVICE_NEEDS_RESET
        (gap,) = rec.gaps
        assert (gap.kind, gap.key, gap.detail["addr"]) == (VIRTIO_QUEUE, "rng/ring-outside-ram", 0x100000)
    finally:
        devs.close()


def test_pci_transport_is_refused_on_aarch64(tmp_path):
    with pytest.raises(ConfigError, match="not offered"):
        VirtioSetup.from_guest({"virtio_devices": ["rng"], "virtio_transport": "pci"}, None, tmp_path,
                               transports=AARCH64)
    assert VirtioSetup.from_guest({"virtio_devices": ["rng"]}, None, tmp_path, transports=AARCH64).transport == "mmio"


def test_more_devices_than_described_slots_is_an_error(rec, ram, image, tmp_path):
    setup = VirtioSetup.from_guest({"virtio_devices": ["rng", "rng"]}, None, tmp_path, transports=AARCH64)
    with pytest.raises(ValueError, match="slots described"):
        build_aarch64_devices(rec.context(), Aarch64Machine(64 * MiB, virtio_slots=1), lambda d: None, ram, setup)


def test_one_device_may_be_named_bare_as_the_option_table_accepts(tmp_path):
    from harness.model.builtin_options import option_problem
    assert option_problem("virtio_devices", "rng") is None
    assert VirtioSetup.from_guest({"virtio_devices": "rng"}, None, tmp_path, transports=AARCH64).devices == ["rng"]
