"""virtio devices through their guest-visible registers (tests/devices/virtio_driver.py plays the driver)."""
from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess

import pytest

from harness import layout
from harness.devices import build_x86_devices
from harness.devices.virtio import VirtioSetup, attach
from harness.devices.virtio import blk as B
from harness.devices.virtio.console import VirtioConsole
from harness.devices.virtio.device import STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK
from harness.devices.virtio.disk import CowDisk, prepare_image
from harness.devices.virtio.mmio import VirtioMmio
from harness.devices.virtio.pci import VirtioPci
from harness.devices.virtio.rng import VirtioRng
from harness.memory import GuestRam
from harness.model.gap import VIRTIO_CONFIG, VIRTIO_FEATURE, VIRTIO_QUEUE

from virtio_driver import DATA_BASE, VERSION_1, MmioDriver, PciModernDriver

DISK_BYTES = 1 << 20


@pytest.fixture
def ram():
    mem = GuestRam(16 * layout.MiB)
    yield mem
    mem.close()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (DISK_BYTES // 256))
    return path


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_blk(ram, rec, image, tmp_path, **kw):
    return B.VirtioBlk(ram, rec.gap, CowDisk(image, tmp_path / "overlay"), **kw)


def driver_for(kind, device, ram, rec):
    if kind == "mmio":
        return MmioDriver(VirtioMmio(device, layout.VIRTIO_MMIO_START, 20, rec.set_irq), ram)
    return PciModernDriver(VirtioPci(device, 1, rec.set_irq), ram)


TRANSPORTS = ["mmio", "pci"]


def blk_request(drv, ram, kind, sector, data_len=0, payload=b"", at=DATA_BASE):
    ram.write(at, struct.pack("<IIQ", kind, 0, sector))
    bufs = [(at, 16, False)]
    if payload:
        ram.write(at + 0x1000, payload)
        bufs.append((at + 0x1000, len(payload), False))
    if data_len:
        bufs.append((at + 0x1000, data_len, True))
    bufs.append((at + 0x800, 1, True))
    drv.rings[0].submit(bufs)
    drv.kick(0)
    (used,) = drv.rings[0].used_entries()
    return ram.read(at + 0x800, 1)[0], ram.read(at + 0x1000, data_len) if data_len else b"", used


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blk_read_write_flush_never_touch_the_image(ram, rec, image, tmp_path, transport):
    before = sha(image)
    dev = make_blk(ram, rec, image, tmp_path)
    drv = driver_for(transport, dev, ram, rec)
    status = drv.init()
    assert status & STATUS_DRIVER_OK and status & STATUS_FEATURES_OK
    assert drv.config(B.CFG_CAPACITY, 4) == DISK_BYTES // 512
    assert drv.config(B.CFG_SIZE_MAX, 4) == B.DEFAULT_SIZE_MAX and drv.config(B.CFG_SEG_MAX, 4) == B.DEFAULT_SEG_MAX
    st, data, used = blk_request(drv, ram, B.T_IN, 2, 1024)
    assert st == B.S_OK and data == (bytes(range(256)) * 4) and used[1] == 1025
    st, _, _ = blk_request(drv, ram, B.T_OUT, 3, payload=b"\xAA" * 512)
    assert st == B.S_OK
    st, data, _ = blk_request(drv, ram, B.T_IN, 3, 512)
    assert data == b"\xAA" * 512
    assert blk_request(drv, ram, B.T_FLUSH, 0)[0] == B.S_OK
    st, ident, _ = blk_request(drv, ram, B.T_GET_ID, 0, 20)
    assert st == B.S_OK and ident.rstrip(b"\0") == b"harness-disk"
    assert drv.ack() & 1
    assert sha(image) == before                                 # the image itself is never written


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blk_refuses_out_of_range_and_oversized_requests(ram, rec, image, tmp_path, transport):
    dev = make_blk(ram, rec, image, tmp_path, size_max=4096, seg_max=4)
    drv = driver_for(transport, dev, ram, rec)
    drv.init()
    assert blk_request(drv, ram, B.T_IN, DISK_BYTES // 512, 512)[0] == B.S_IOERR        # past the end
    assert blk_request(drv, ram, B.T_IN, 0, 8192)[0] == B.S_IOERR                       # > size_max
    assert blk_request(drv, ram, 99, 0)[0] == B.S_UNSUPP
    assert any(g.kind == VIRTIO_QUEUE and g.key == "blk/request-beyond-size-max" for g in rec.gaps)
    assert not dev.broken                                        # answered, not stopped


def test_size_max_is_a_32_bit_field(ram, rec, image, tmp_path):
    """Seed 000: a driver reading size_max as 32 bits must see the whole value."""
    dev = make_blk(ram, rec, image, tmp_path, size_max=0xFFFF_F000)
    assert struct.unpack_from("<I", dev.config, B.CFG_SIZE_MAX)[0] == 0xFFFF_F000
    with pytest.raises(ValueError):
        make_blk(ram, rec, image, tmp_path, size_max=1 << 32)


def test_qcow2_image_is_converted_not_written(tmp_path, image):
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        pytest.skip("qemu-img not installed (qemu-utils)")
    q = tmp_path / "disk.qcow2"
    subprocess.run([qemu_img, "convert", "-O", "qcow2", str(image), str(q)], check=True)
    before = sha(q)
    work = tmp_path / "work"
    work.mkdir()
    raw = prepare_image(q, work)
    assert raw.parent == work and raw.read_bytes() == image.read_bytes()
    assert sha(q) == before


def test_unknown_feature_bits_and_unmodelled_config_are_gaps(ram, rec, image, tmp_path):
    dev = make_blk(ram, rec, image, tmp_path)
    drv = driver_for("mmio", dev, ram, rec)
    status = drv.init(accept=VERSION_1 | (1 << 12) | (1 << B.VIRTIO_BLK_F_FLUSH))   # bit 12 = MQ, not offered
    assert not status & STATUS_FEATURES_OK                        # the device refuses FEATURES_OK
    assert [g.key for g in rec.gaps if g.kind == VIRTIO_FEATURE] == ["blk/12"]
    drv.config(34, 2)                                            # num_queues: not modelled
    assert any(g.kind == VIRTIO_CONFIG and g.key == "blk/0x22" for g in rec.gaps)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_console_transmits_to_its_own_stream_and_receives(ram, rec, transport):
    out = []
    dev = VirtioConsole(ram, rec.gap, out.append)
    drv = driver_for(transport, dev, ram, rec)
    drv.init()
    ram.write(DATA_BASE, b"hvc0 says hi\n")
    drv.rings[1].submit([(DATA_BASE, 13, False)])
    drv.kick(1)
    assert b"".join(out) == b"hvc0 says hi\n"
    drv.rings[0].submit([(DATA_BASE + 0x100, 64, True)])
    drv.kick(0)
    dev.feed(b"root\n")
    (used,) = drv.rings[0].used_entries()
    assert used[1] == 5 and ram.read(DATA_BASE + 0x100, 5) == b"root\n"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rng_fills_writable_buffers(ram, rec, transport):
    drv = driver_for(transport, VirtioRng(ram, rec.gap), ram, rec)
    drv.init()
    drv.rings[0].submit([(DATA_BASE, 64, True)])
    drv.kick(0)
    (used,) = drv.rings[0].used_entries()
    assert used[1] == 64 and ram.read(DATA_BASE, 64) != bytes(64)


BAD_CHAINS = {
    "buffer-outside-ram": [(16 * layout.MiB - 8, 64, True)],
    "readable-after-writable": [(DATA_BASE, 16, True), (DATA_BASE + 64, 16, False)],
}


@pytest.mark.parametrize("what", sorted(BAD_CHAINS))
def test_bad_descriptor_stops_the_device_with_a_gap(ram, rec, what):
    dev = VirtioRng(ram, rec.gap)
    drv = driver_for("mmio", dev, ram, rec)
    drv.init()
    drv.rings[0].submit(BAD_CHAINS[what])
    drv.kick(0)
    assert dev.broken == what and dev.status & STATUS_DEVICE_NEEDS_RESET
    (gap,) = [g for g in rec.gaps if g.kind == VIRTIO_QUEUE]
    assert gap.key == f"rng/{what}" and gap.fate == "stopped"
    drv.rings[0].submit([(DATA_BASE, 8, True)])
    drv.kick(0)                                                  # stopped: nothing more is served
    assert drv.rings[0].used_entries() == []
    drv.init()                                                   # a reset brings it back
    assert dev.broken is None


def test_descriptor_loop_and_bad_head_are_caught(ram, rec):
    dev = VirtioRng(ram, rec.gap)
    drv = driver_for("mmio", dev, ram, rec)
    drv.init()
    ring = drv.rings[0]
    ram.write(ring.desc, struct.pack("<QIHH", DATA_BASE, 8, 3, 0))      # NEXT|WRITE pointing at itself
    ram.write(ring.avail + 4, struct.pack("<H", 0))
    ram.write(ring.avail + 2, struct.pack("<H", 1))
    drv.kick(0)
    assert dev.broken == "descriptor-loop"
    drv.init()
    ram.write(drv.rings[0].avail + 4, struct.pack("<H", 999))
    ram.write(drv.rings[0].avail + 2, struct.pack("<H", 1))
    drv.kick(0)
    assert dev.broken == "head-out-of-range"


def test_ring_placed_outside_ram_is_refused_at_enable(ram, rec):
    dev = VirtioRng(ram, rec.gap)
    t = VirtioMmio(dev, layout.VIRTIO_MMIO_START, 20, rec.set_irq)
    from harness.devices.virtio import mmio as M
    t.write(M.QUEUE_SEL, 4, 0)
    t.write(M.QUEUE_DESC_LOW, 4, 0xFFFF_0000)
    t.write(M.QUEUE_DESC_HIGH, 4, 0x1)
    t.write(M.QUEUE_READY, 4, 1)
    assert dev.broken == "ring-outside-ram" and t.read(M.QUEUE_READY, 4) == 0


def test_attach_puts_devices_on_the_buses_and_into_the_tables(ram, rec, image, tmp_path):
    for transport in TRANSPORTS:
        devs = build_x86_devices(rec.context(), lambda b: None)
        setup = VirtioSetup.from_guest({"virtio_transport": transport, "virtio_devices": ["blk", "console", "rng"]},
                                       image, tmp_path)
        attach(devs, rec.context(), ram, setup)
        if transport == "mmio":
            assert [m.gsi for m in devs.mmio_descriptions()] == list(layout.VIRTIO_MMIO_GSIS[:3])
            assert devs.mmio_bus.find(layout.VIRTIO_MMIO_START).device.name == "blk"
            assert devs.pci_descriptions() == []
        else:
            assert [p.slot for p in devs.pci_descriptions()] == [1, 2, 3]
            # the legacy I/O BAR of the transitional blk device answers at its firmware-set address
            fn = devs.virtio[0]
            assert devs.io_bus.read(fn.bar_base(0), 4) == fn.device.offered & 0xFFFF_FFFF
        devs.close()


def test_msix_vectors_fire_latch_when_masked_and_fall_back_to_intx(ram, rec):
    from harness.devices.virtio import pci as P
    sent = []
    fn = VirtioPci(VirtioRng(ram, rec.gap), 1, rec.set_irq, msi=lambda a, d: sent.append((a, d)) or True)
    drv = PciModernDriver(fn, ram)
    cap = fn.msix_cap
    assert fn.read_config(cap, 1) == P.PCI_CAP_MSIX and fn.read_config(cap + 2, 2) & 0x7FF == 1   # 2 vectors
    drv.init()
    drv.cw(P.CC_Q_SELECT, 2, 0)
    drv.cw(P.CC_Q_MSIX, 2, 1)
    assert drv.cr(P.CC_Q_MSIX, 2) == 1
    drv.cw(P.CC_MSIX, 2, 7)                                    # beyond the table: refused
    assert drv.cr(P.CC_MSIX, 2) == P.NO_VECTOR
    base = P.MSIX_TABLE_OFF + 16
    fn.mem_write(base, 4, 0xFEE0_0000)
    fn.mem_write(base + 8, 4, 0x41)
    fn.write_config(cap + 2, 2, P.MSIX_ENABLE)                  # MSI-X on; entry 1 still masked
    drv.rings[0].submit([(DATA_BASE, 16, True)])
    drv.kick(0)
    assert sent == [] and fn.mem_read(P.MSIX_PBA_OFF, 1) == 0b10  # pending bit latched
    fn.mem_write(base + 12, 4, 0)                              # unmask -> delivered
    assert sent == [(0xFEE0_0000, 0x41)] and fn.mem_read(P.MSIX_PBA_OFF, 1) == 0
    assert rec.level(fn.gsi) == 0                              # no INTx while MSI-X is on
    fn.write_config(cap + 2, 2, 0)                             # MSI-X off: INTx again
    drv.rings[0].submit([(DATA_BASE, 16, True)])
    drv.kick(0)
    assert rec.level(fn.gsi) == 1 and len(sent) == 1


def test_no_msix_capability_without_an_msi_path(ram, rec):
    fn = VirtioPci(VirtioRng(ram, rec.gap), 1, rec.set_irq)
    at, ids = fn.read_config(0x34, 1), []
    while at:
        ids.append(fn.read_config(at, 1))
        at = fn.read_config(at + 1, 1)
    assert ids == [0x09] * 4


def test_zero_length_descriptor_before_the_header_is_skipped(ram, rec, image, tmp_path):
    """Found by test_virtio_fuzz: a 0-byte first descriptor cut the header read short."""
    dev = make_blk(ram, rec, image, tmp_path)
    drv = driver_for("mmio", dev, ram, rec)
    drv.init()
    ram.write(DATA_BASE, struct.pack("<IIQ", B.T_IN, 0, 0))
    drv.rings[0].submit([(DATA_BASE + 0x40, 0, False), (DATA_BASE, 16, False), (DATA_BASE + 0x1000, 512, True),
                         (DATA_BASE + 0x800, 1, True)])
    drv.kick(0)
    assert ram.read(DATA_BASE + 0x800, 1) == bytes([B.S_OK]) and not dev.broken


def test_writes_to_read_only_msix_capability_fields_are_ignored(ram, rec):
    """Seed 001 (bhyve/OpenBSD): drivers write MSI capability registers that are read-only;
    fine on hardware, so they must be harmless here: only enable/function-mask change."""
    fn = VirtioPci(VirtioRng(ram, rec.gap), 1, rec.set_irq, msi=lambda a, d: True)
    cap = fn.msix_cap
    before = bytes(fn.config[cap:cap + 12])
    for off in range(12):
        fn.write_config(cap + off, 1, 0xFF)
    after = bytes(fn.config[cap:cap + 12])
    assert after[:2] == before[:2] and after[4:] == before[4:]            # id, next, table/PBA offsets
    ctrl_before, ctrl_after = int.from_bytes(before[2:4], "little"), int.from_bytes(after[2:4], "little")
    assert ctrl_after & 0x7FF == ctrl_before & 0x7FF and ctrl_after & 0xC000 == 0xC000


def test_default_size_max_satisfies_freebsd_vtblk(ram, rec, image, tmp_path):
    """FreeBSD's vtblk (sys/dev/virtio/block/virtio_blk.c) gives up on VIRTIO_BLK_F_SIZE_MAX when
    size_max < MAXPHYS (1 MiB since FreeBSD 13): the default offers exactly 1 MiB."""
    dev = make_blk(ram, rec, image, tmp_path)
    assert dev.offered >> B.VIRTIO_BLK_F_SIZE_MAX & 1
    assert struct.unpack_from("<I", dev.config, B.CFG_SIZE_MAX)[0] >= 1 << 20
