"""The split virtqueue (virtio 1.2, 2.7), shared by every virtio device and both transports.

Architecture-neutral: it only reads and writes guest RAM through a bounds-checked memory object
(harness.memory.GuestRam: read/write/contains), so an aarch64 VMM reuses it with virtio-mmio.

Every guest-supplied value is checked before use: ring addresses and sizes, the available index
(may run at most `size` ahead of ours), each head and `next` index (< size), descriptor lengths
(sum capped), chain length (a loop is caught by counting), the direction order (device-readable
before device-writable), and indirect tables. A violation raises VirtqueueError; the device turns
it into a `virtio-queue` gap and stops (sets DEVICE_NEEDS_RESET), never the harness.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

# descriptor flags (2.7.5)
VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT = 1, 2, 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
DESC_SIZE = 16
MAX_QUEUE_SIZE = 32768               # 2.7: queue size is a power of two <= 32768
MAX_CHAIN_BYTES = 1 << 30            # no single request of ours needs more (blk caps it lower)
_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


class VirtqueueError(Exception):
    """A guest-caused violation of the virtqueue rules; `what` names it for the gap record."""

    def __init__(self, what: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.detail = detail or {}


@dataclass(frozen=True)
class Buffer:
    addr: int
    length: int
    writable: bool


@dataclass
class Chain:
    """One request: its head index, the device-readable then the device-writable buffers."""
    head: int
    readable: list[Buffer] = field(default_factory=list)
    writable: list[Buffer] = field(default_factory=list)

    @property
    def readable_bytes(self) -> int:
        return sum(b.length for b in self.readable)

    @property
    def writable_bytes(self) -> int:
        return sum(b.length for b in self.writable)


def check_size(size: int, maximum: int) -> None:
    if size <= 0 or size > maximum or size & (size - 1):
        raise VirtqueueError("bad-queue-size", {"size": size, "max": maximum})


class Virtqueue:
    """Device side of one split virtqueue. Configure (size, three addresses), then `enable()`."""

    def __init__(self, ram: Any, max_size: int = 256) -> None:
        self.ram = ram
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.ready = False
        self.last_avail = 0
        self.used_idx = 0
        self.msix_vector = 0xFFFF

    # -- setup -----------------------------------------------------------------------------------
    def enable(self) -> None:
        """Check the driver's ring placement against guest RAM; VirtqueueError if it does not fit."""
        check_size(self.size, self.max_size)
        spans = {"descriptor table": (self.desc_addr, DESC_SIZE * self.size, 16),
                 "available ring": (self.avail_addr, 6 + 2 * self.size, 2),
                 "used ring": (self.used_addr, 6 + 8 * self.size, 4)}
        for name, (addr, length, align) in spans.items():
            if addr % align or not self.ram.contains(addr, length):
                raise VirtqueueError("ring-outside-ram", {"ring": name, "addr": addr, "length": length})
        self.ready = True

    # -- the driver's side, read ----------------------------------------------------------------
    def _avail_idx(self) -> int:
        return _U16.unpack(self.ram.read(self.avail_addr + 2, 2))[0]

    def interrupts_suppressed(self) -> bool:
        return bool(_U16.unpack(self.ram.read(self.avail_addr, 2))[0] & VIRTQ_AVAIL_F_NO_INTERRUPT)

    def pending(self) -> int:
        """How many new chains the driver has made available (checked: at most `size`)."""
        ahead = (self._avail_idx() - self.last_avail) & 0xFFFF
        if ahead > self.size:
            raise VirtqueueError("avail-index-too-far", {"avail_idx": self._avail_idx(),
                                                         "last_seen": self.last_avail, "size": self.size})
        return ahead

    def pop(self) -> Chain | None:
        """The next available chain, or None. Raises VirtqueueError for a malformed one."""
        if not self.ready or not self.pending():
            return None
        slot = self.avail_addr + 4 + 2 * (self.last_avail % self.size)
        head = _U16.unpack(self.ram.read(slot, 2))[0]
        if head >= self.size:
            raise VirtqueueError("head-out-of-range", {"head": head, "size": self.size})
        chain = self._walk(head)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return chain

    def _read_desc(self, table: int, count: int, index: int) -> tuple[int, int, int, int]:
        if index >= count:
            raise VirtqueueError("next-out-of-range", {"index": index, "table_size": count})
        return _DESC.unpack(self.ram.read(table + DESC_SIZE * index, DESC_SIZE))

    def _walk(self, head: int) -> Chain:
        chain = Chain(head)
        table, count, index = self.desc_addr, self.size, head
        seen, total, indirect_used = 0, 0, False
        while True:
            addr, length, flags, nxt = self._read_desc(table, count, index)
            seen += 1
            if seen > count:
                raise VirtqueueError("descriptor-loop", {"head": head})
            if flags & VIRTQ_DESC_F_INDIRECT:
                if indirect_used or table != self.desc_addr or flags & VIRTQ_DESC_F_NEXT:
                    raise VirtqueueError("bad-indirect", {"head": head, "flags": flags})
                if length == 0 or length % DESC_SIZE or length // DESC_SIZE > MAX_QUEUE_SIZE \
                        or not self.ram.contains(addr, length):
                    raise VirtqueueError("bad-indirect-table", {"addr": addr, "length": length})
                table, count, index, seen, indirect_used = addr, length // DESC_SIZE, 0, 0, True
                continue
            total += length
            if total > MAX_CHAIN_BYTES:
                raise VirtqueueError("chain-too-long", {"head": head, "bytes": total})
            if length and not self.ram.contains(addr, length):
                raise VirtqueueError("buffer-outside-ram", {"head": head, "addr": addr, "length": length})
            buf = Buffer(addr, length, bool(flags & VIRTQ_DESC_F_WRITE))
            if buf.writable:
                chain.writable.append(buf)
            elif chain.writable:
                raise VirtqueueError("readable-after-writable", {"head": head})
            else:
                chain.readable.append(buf)
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            index = nxt

    # -- data ---------------------------------------------------------------------------------------
    def read_all(self, chain: Chain, limit: int) -> bytes:
        """The device-readable bytes of `chain`, at most `limit`."""
        out = bytearray()
        for buf in chain.readable:
            if len(out) >= limit:
                break
            take = min(buf.length, limit - len(out))
            if take:                           # zero-length descriptors are legal: skip, don't stop
                out += self.ram.read(buf.addr, take)
        return bytes(out)

    def write_all(self, chain: Chain, data: bytes) -> int:
        """Scatter `data` over the writable buffers; returns how many bytes fitted."""
        done = 0
        for buf in chain.writable:
            if done >= len(data):
                break
            take = min(buf.length, len(data) - done)
            self.ram.write(buf.addr, data[done:done + take])
            done += take
        return done

    # -- completion ----------------------------------------------------------------------------------
    def push(self, chain: Chain, written: int) -> None:
        """Return `chain` to the driver with `written` bytes in its writable part."""
        elem = self.used_addr + 4 + 8 * (self.used_idx % self.size)
        self.ram.write(elem, _USED_ELEM.pack(chain.head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.ram.write(self.used_addr + 2, _U16.pack(self.used_idx))   # after the element (x86 is TSO)
