"""virtio-blk (virtio 1.2, 5.2) over a CowDisk: read, write, flush, get-id.

size_max and seg_max are 32-bit config fields (seed 000: NetBSD read size_max as 32 bits; FreeBSD
refuses a size_max below its MAXPHYS, so the default is 1 MiB). A request beyond what we offered
is answered IOERR and recorded; a malformed one (no room for the status byte, a header that does
not fit) stops the device as any bad ring does.
"""
from __future__ import annotations

import struct
from typing import Any, Callable

from harness.devices.virtio.device import VirtioDevice
from harness.devices.virtio.disk import SECTOR, CowDisk
from harness.devices.virtio.queue import Virtqueue, VirtqueueError
from harness.model.gap import VIRTIO_QUEUE, GapRecord

DEVICE_ID = 2
# feature bits (5.2.3)
VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_RO = 1, 2, 5
VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH = 6, 9
# config layout (5.2.4)
CFG_CAPACITY, CFG_SIZE_MAX, CFG_SEG_MAX, CFG_GEOMETRY, CFG_BLK_SIZE = 0, 8, 12, 16, 20
CONFIG_SIZE = 60                   # through the write-zeroes fields of 1.2; we model up to blk_size
MODELLED = CFG_BLK_SIZE + 4
# request types and status (5.2.6)
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
HEADER = struct.Struct("<IIQ")
ID_BYTES = 20
QUEUE_SIZE = 128
DEFAULT_SIZE_MAX = 1 << 20
DEFAULT_SEG_MAX = QUEUE_SIZE - 2   # one descriptor each for the header and the status byte


class VirtioBlk(VirtioDevice):
    device_id = DEVICE_ID
    name = "blk"
    queue_sizes = (QUEUE_SIZE,)
    modelled_config = MODELLED

    def __init__(self, ram: Any, gap: Callable[[GapRecord], None], disk: CowDisk, serial: str = "harness-disk",
                 size_max: int = DEFAULT_SIZE_MAX, seg_max: int = DEFAULT_SEG_MAX) -> None:
        if not 512 <= size_max <= 0xFFFF_FFFF or not 1 <= seg_max <= 0xFFFF_FFFF:
            raise ValueError("virtio-blk size_max/seg_max must be 32-bit values (size_max >= 512)")
        self.disk, self.serial = disk, serial
        self.size_max, self.seg_max = size_max, seg_max
        super().__init__(ram, gap)

    def device_features(self) -> int:
        bits = (1 << VIRTIO_BLK_F_SIZE_MAX) | (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_BLK_SIZE) \
            | (1 << VIRTIO_BLK_F_FLUSH)
        return bits | ((1 << VIRTIO_BLK_F_RO) if self.disk.read_only else 0)

    def config_bytes(self) -> bytes:
        raw = bytearray(CONFIG_SIZE)
        struct.pack_into("<QII", raw, CFG_CAPACITY, self.disk.sectors, self.size_max, self.seg_max)
        struct.pack_into("<I", raw, CFG_BLK_SIZE, SECTOR)
        return bytes(raw)

    def process(self, index: int, queue: Virtqueue) -> bool:
        used = False
        while (chain := queue.pop()) is not None:
            if chain.readable_bytes < HEADER.size or chain.writable_bytes < 1:
                raise VirtqueueError("blk-request-malformed", {"head": chain.head, "readable": chain.readable_bytes,
                                                               "writable": chain.writable_bytes})
            written = self._serve(queue, chain)
            queue.push(chain, written)
            used = True
        return used

    def _serve(self, queue: Virtqueue, chain: Any) -> int:
        kind, _, sector = HEADER.unpack(queue.read_all(chain, HEADER.size))
        data_in = chain.writable_bytes - 1                 # the last writable byte is the status
        status, payload = S_OK, b""
        if kind == T_IN:
            status, payload = self._read(sector, data_in, chain)
        elif kind == T_OUT:
            status = self._write(sector, queue.read_all(chain, chain.readable_bytes)[HEADER.size:], chain)
        elif kind == T_FLUSH:
            self.disk.flush()
        elif kind == T_GET_ID:
            payload = self.serial.encode()[:ID_BYTES]   # NUL-padded to data_in below
        else:
            status = S_UNSUPP
        return queue.write_all(chain, payload.ljust(data_in, b"\0")[:data_in] + bytes([status]))

    def _limits_ok(self, chain: Any, length: int, writable: bool) -> bool:
        buffers = chain.writable if writable else chain.readable[1:] if chain.readable else []
        ok = length <= self.size_max * self.seg_max and all(b.length <= self.size_max for b in buffers)
        if not ok:
            self.gap(GapRecord(kind=VIRTIO_QUEUE, key="blk/request-beyond-size-max", access="write" if not writable
                               else "read", detail={"length": length, "size_max": self.size_max,
                                                    "seg_max": self.seg_max}))
        return ok

    def _read(self, sector: int, length: int, chain: Any) -> tuple[int, bytes]:
        offset = sector * SECTOR
        if length % SECTOR or not self.disk.in_range(offset, length) or not self._limits_ok(chain, length, True):
            return S_IOERR, b""
        return S_OK, self.disk.read(offset, length)

    def _write(self, sector: int, data: bytes, chain: Any) -> int:
        offset = sector * SECTOR
        if self.disk.read_only or len(data) % SECTOR or not self.disk.in_range(offset, len(data)) \
                or not self._limits_ok(chain, len(data), False):
            return S_IOERR
        self.disk.write(offset, data)
        return S_OK
