"""A minimal virtio *driver* for tests: lays rings out in GuestRam and talks to a transport's
registers the way Linux's virtio_mmio / virtio_pci_modern do (status sequence, feature
negotiation, queue setup, notify), so device tests exercise the guest-visible interface."""
from __future__ import annotations

import struct

from harness.devices.virtio import mmio as M
from harness.devices.virtio import pci as P
from harness.devices.virtio.device import (STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
                                           STATUS_FEATURES_OK, VIRTIO_F_VERSION_1)
from harness.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE

RING_BASE = 0x100000          # rings at 1 MiB, data buffers from 2 MiB
DATA_BASE = 0x200000


class RingLayout:
    def __init__(self, ram, size: int, base: int) -> None:
        self.ram, self.size = ram, size
        self.desc = base
        self.avail = base + 16 * size
        self.used = (self.avail + 6 + 2 * size + 4095) // 4096 * 4096
        self.avail_idx = 0
        self.used_seen = 0
        self.next_free = 0

    def submit(self, buffers: list[tuple[int, int, bool]]) -> int:
        """Chain (addr, len, device_writable) descriptors; publish the head; returns it."""
        head = self.next_free
        for i, (addr, length, writable) in enumerate(buffers):
            idx = (head + i) % self.size
            flags = (VIRTQ_DESC_F_WRITE if writable else 0) | (VIRTQ_DESC_F_NEXT if i + 1 < len(buffers) else 0)
            self.ram.write(self.desc + 16 * idx, struct.pack("<QIHH", addr, length, flags, (idx + 1) % self.size))
        self.next_free = (head + len(buffers)) % self.size
        self.ram.write(self.avail + 4 + 2 * (self.avail_idx % self.size), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.ram.write(self.avail + 2, struct.pack("<H", self.avail_idx))
        return head

    def used_entries(self) -> list[tuple[int, int]]:
        idx = struct.unpack("<H", self.ram.read(self.used + 2, 2))[0]
        out = []
        while self.used_seen != idx:
            at = self.used + 4 + 8 * (self.used_seen % self.size)
            out.append(struct.unpack("<II", self.ram.read(at, 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out


class MmioDriver:
    """`transport`: anything with read/write(offset, ...) and `.device` (a VirtioMmio, or its
    registers reached through a bus); rings from `ring_base` (inside the guest's RAM)."""

    def __init__(self, transport: M.VirtioMmio, ram, ring_base: int = RING_BASE) -> None:
        self.t, self.ram = transport, ram
        self.ring_base = ring_base
        self.rings: list[RingLayout] = []

    def r(self, off: int) -> int:
        return self.t.read(off, 4)

    def w(self, off: int, value: int) -> None:
        self.t.write(off, 4, value)

    def features(self) -> int:
        self.w(M.DEVICE_FEATURES_SEL, 0)
        lo = self.r(M.DEVICE_FEATURES)
        self.w(M.DEVICE_FEATURES_SEL, 1)
        return lo | self.r(M.DEVICE_FEATURES) << 32

    def init(self, accept: int | None = None, queue_size: int = 16) -> int:
        assert self.r(M.MAGIC_VALUE) == M.MAGIC and self.r(M.VERSION) == 2
        self.w(M.STATUS, 0)
        self.w(M.STATUS, STATUS_ACKNOWLEDGE)
        self.w(M.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        offered = self.features()
        want = offered if accept is None else accept
        for sel in (0, 1):
            self.w(M.DRIVER_FEATURES_SEL, sel)
            self.w(M.DRIVER_FEATURES, (want >> (32 * sel)) & 0xFFFFFFFF)
        self.w(M.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        status = self.r(M.STATUS)
        if not status & STATUS_FEATURES_OK:
            return status
        for q in range(len(self.t.device.queues)):
            ring = RingLayout(self.ram, queue_size, self.ring_base + q * 0x10000)
            self.w(M.QUEUE_SEL, q)
            assert self.r(M.QUEUE_NUM_MAX) >= queue_size
            self.w(M.QUEUE_NUM, queue_size)
            for (lo, hi), addr in (((M.QUEUE_DESC_LOW, M.QUEUE_DESC_HIGH), ring.desc),
                                   ((M.QUEUE_DRIVER_LOW, M.QUEUE_DRIVER_HIGH), ring.avail),
                                   ((M.QUEUE_DEVICE_LOW, M.QUEUE_DEVICE_HIGH), ring.used)):
                self.w(lo, addr & 0xFFFFFFFF)
                self.w(hi, addr >> 32)
            self.w(M.QUEUE_READY, 1)
            self.rings.append(ring)
        self.w(M.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
        return self.r(M.STATUS)

    def kick(self, q: int) -> None:
        self.w(M.QUEUE_NOTIFY, q)

    def ack(self) -> int:
        isr = self.r(M.INTERRUPT_STATUS)
        self.w(M.INTERRUPT_ACK, isr)
        return isr

    def config(self, offset: int, size: int) -> int:
        return self.t.read(M.CONFIG + offset, size)


class PciModernDriver:
    """Through the modern capabilities of BAR 4 (found by walking the capability list)."""

    def __init__(self, fn: P.VirtioPci, ram) -> None:
        self.fn, self.ram = fn, ram
        self.rings: list[RingLayout] = []
        self.caps = {}
        at = fn.read_config(0x34, 1)
        while at:
            vndr, nxt, _, kind = (fn.read_config(at + i, 1) for i in range(4))
            if vndr == P.PCI_CAP_VENDOR:
                self.caps[kind] = fn.read_config(at + 8, 4)
            at = nxt

    def cr(self, off: int, size: int) -> int:
        return self.fn.mem_read(self.caps[P.CAP_COMMON] + off, size)

    def cw(self, off: int, size: int, value: int) -> None:
        self.fn.mem_write(self.caps[P.CAP_COMMON] + off, size, value)

    def init(self, accept: int | None = None, queue_size: int = 16) -> int:
        self.cw(P.CC_STATUS, 1, 0)
        self.cw(P.CC_STATUS, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        offered = 0
        for sel in (0, 1):
            self.cw(P.CC_DFSELECT, 4, sel)
            offered |= self.cr(P.CC_DF, 4) << (32 * sel)
        want = offered if accept is None else accept
        for sel in (0, 1):
            self.cw(P.CC_GFSELECT, 4, sel)
            self.cw(P.CC_GF, 4, (want >> (32 * sel)) & 0xFFFFFFFF)
        self.cw(P.CC_STATUS, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        if not self.cr(P.CC_STATUS, 1) & STATUS_FEATURES_OK:
            return self.cr(P.CC_STATUS, 1)
        for q in range(self.cr(P.CC_NUMQ, 2)):
            ring = RingLayout(self.ram, queue_size, RING_BASE + q * 0x10000)
            self.cw(P.CC_Q_SELECT, 2, q)
            self.cw(P.CC_Q_SIZE, 2, queue_size)
            for off, addr in ((P.CC_Q_DESC, ring.desc), (P.CC_Q_AVAIL, ring.avail), (P.CC_Q_USED, ring.used)):
                self.cw(off, 4, addr & 0xFFFFFFFF)
                self.cw(off + 4, 4, addr >> 32)
            self.cw(P.CC_Q_ENABLE, 2, 1)
            self.rings.append(ring)
        self.cw(P.CC_STATUS, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
        return self.cr(P.CC_STATUS, 1)

    def kick(self, q: int) -> None:
        self.fn.mem_write(self.caps[P.CAP_NOTIFY] + q * P.NOTIFY_MULTIPLIER, 2, q)

    def ack(self) -> int:
        return self.fn.mem_read(self.caps[P.CAP_ISR], 1)

    def config(self, offset: int, size: int) -> int:
        return self.fn.mem_read(self.caps[P.CAP_DEVICE] + offset, size)


VERSION_1 = 1 << VIRTIO_F_VERSION_1
