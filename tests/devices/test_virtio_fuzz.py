"""Hostile drivers against the virtqueue and every device (hypothesis): random descriptor tables,
available rings and indices, and valid requests with mutated fields. The harness must never raise
or hang: the device serves, answers an error status, or stops with a virtio-queue gap.
Cases: FUZZ_EXAMPLES per test (env HARNESS_FUZZ_EXAMPLES, default 300), all in CI (~30 s)."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import layout
from harness.devices.virtio import blk as B
from harness.devices.virtio.console import VirtioConsole
from harness.devices.virtio.disk import CowDisk
from harness.devices.virtio.mmio import VirtioMmio
from harness.devices.virtio.pci import VirtioPci
from harness.devices.virtio.rng import VirtioRng
from harness.memory import GuestRam
from harness.model.gap import VIRTIO_QUEUE

from virtio_driver import DATA_BASE, MmioDriver, PciModernDriver

FUZZ_EXAMPLES = int(os.environ.get("HARNESS_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=2000,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
RAM_BYTES = 8 * layout.MiB
CASES: dict[str, int] = {}


class Gaps(list):
    def __call__(self, gap):
        self.append(gap)


@pytest.fixture(scope="module")
def ram():
    mem = GuestRam(RAM_BYTES)
    yield mem
    mem.close()


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzzdisk")
    (tmp / "img").write_bytes(bytes(256 * 1024))
    d = CowDisk(tmp / "img", tmp / "overlay")
    yield d
    d.close()


def make(kind: str, ram, disk, gaps):
    if kind == "blk":
        return B.VirtioBlk(ram, gaps, disk, size_max=8192, seg_max=8)
    if kind == "console":
        return VirtioConsole(ram, gaps, lambda data: None)
    return VirtioRng(ram, gaps)


def driver(transport: str, dev, ram):
    irq = lambda gsi, level: None  # noqa: E731
    if transport == "mmio":
        return MmioDriver(VirtioMmio(dev, layout.VIRTIO_MMIO_START, 20, irq), ram)
    return PciModernDriver(VirtioPci(dev, 1, irq, msi=lambda address, data: True), ram)   # MSI-X on


def outcome_ok(dev, gaps) -> None:
    """The device either still works or stopped with exactly its reason recorded."""
    if dev.broken:
        assert any(g.kind == VIRTIO_QUEUE and g.key.endswith(dev.broken) for g in gaps)


DESC = st.tuples(st.one_of(st.integers(0, RAM_BYTES + 4096), st.integers(0, 1 << 64 - 1)),
                 st.integers(0, 1 << 32 - 1), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))


@pytest.mark.parametrize("transport", ["mmio", "pci"])
@pytest.mark.parametrize("kind", ["blk", "console", "rng"])
@SETTINGS
@given(descs=st.lists(DESC, min_size=1, max_size=16), avail=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=16),
       avail_idx=st.integers(0, 0xFFFF), kicks=st.lists(st.integers(0, 3), min_size=1, max_size=4))
def test_random_rings_never_escape(ram, disk, transport, kind, descs, avail, avail_idx, kicks):
    CASES[f"rings-{kind}-{transport}"] = CASES.get(f"rings-{kind}-{transport}", 0) + 1
    gaps = Gaps()
    dev = make(kind, ram, disk, gaps)
    drv = driver(transport, dev, ram)
    drv.init()
    ring = drv.rings[0]
    for i, (addr, length, flags, nxt) in enumerate(descs):
        ram.write(ring.desc + 16 * (i % ring.size), struct.pack("<QIHH", addr % (1 << 64), length, flags, nxt))
    for i, head in enumerate(avail):
        ram.write(ring.avail + 4 + 2 * (i % ring.size), struct.pack("<H", head))
    ram.write(ring.avail + 2, struct.pack("<H", avail_idx))
    for q in kicks:
        drv.kick(q)
    outcome_ok(dev, gaps)


FIELDS = st.sampled_from(["type", "sector", "hdr_len", "data_len", "status_len", "data_addr", "flags"])


@pytest.mark.parametrize("transport", ["mmio", "pci"])
@SETTINGS
@given(mutations=st.lists(st.tuples(FIELDS, st.integers(0, 1 << 64 - 1)), min_size=1, max_size=4))
def test_mutated_blk_requests_are_answered_or_stop_the_device(ram, disk, transport, mutations):
    CASES[f"blk-mutated-{transport}"] = CASES.get(f"blk-mutated-{transport}", 0) + 1
    gaps = Gaps()
    dev = make("blk", ram, disk, gaps)
    drv = driver(transport, dev, ram)
    drv.init()
    req = {"type": B.T_IN, "sector": 0, "hdr_len": 16, "data_len": 512, "status_len": 1,
           "data_addr": DATA_BASE + 0x1000, "flags": 2}
    for name, value in mutations:
        req[name] = value % (1 << 64) if name in ("sector", "data_addr") else value & 0xFFFF_FFFF
    ram.write(DATA_BASE, struct.pack("<IIQ", req["type"], 0, req["sector"]))
    ring = drv.rings[0]
    descs = [(DATA_BASE, req["hdr_len"], 1, 1), (req["data_addr"], req["data_len"], req["flags"] | 1, 2),
             (DATA_BASE + 0x800, req["status_len"], 2, 0)]
    for i, (addr, length, flags, nxt) in enumerate(descs):
        ram.write(ring.desc + 16 * i, struct.pack("<QIHH", addr, length, flags & 0xFFFF, nxt))
    ram.write(ring.avail + 4, struct.pack("<H", 0))
    ram.write(ring.avail + 2, struct.pack("<H", 1))
    drv.kick(0)
    outcome_ok(dev, gaps)
    if not dev.broken:
        used = ring.used_entries()
        assert len(used) == 1 and used[0][0] == 0


@pytest.mark.parametrize("transport", ["mmio", "pci"])
@SETTINGS
@given(writes=st.lists(st.tuples(st.integers(0, 0x3FFF), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFF_FFFF)),
                       min_size=1, max_size=40))
def test_random_register_writes_never_escape(ram, disk, transport, writes):
    CASES[f"registers-{transport}"] = CASES.get(f"registers-{transport}", 0) + 1
    gaps = Gaps()
    dev = make("blk", ram, disk, gaps)
    drv = driver(transport, dev, ram)
    for offset, size, value in writes:
        if transport == "mmio":
            drv.t.write(offset % 0x200, size, value & ((1 << (8 * size)) - 1))
            drv.t.read(offset % 0x200, size)
        else:
            drv.fn.mem_write(offset, size, value & ((1 << (8 * size)) - 1))
            drv.fn.mem_read(offset, size)
            drv.fn.io_write(offset % 0x100, size, value & ((1 << (8 * size)) - 1))
    outcome_ok(dev, gaps)


def test_report_case_counts():
    total = sum(CASES.values())
    print(f"\nvirtio fuzz: {total} cases: " + ", ".join(f"{k}={v}" for k, v in sorted(CASES.items())))
    assert total == 0 or total >= FUZZ_EXAMPLES
