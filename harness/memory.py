"""Guest RAM: one anonymous mapping, split around the MMIO hole, every access bounds-checked.

The mapping is MAP_NORESERVE and lazily backed, so a 4 GiB guest costs only the pages it
touches. Loaders write through `write`, the VM core registers `regions()` with KVM, and the
device model reads guest buffers through `read` — a guest-supplied address that is not RAM
raises GuestMemoryError instead of touching host memory.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass

from harness import layout
from harness.errors import GuestMemoryError


@dataclass(frozen=True)
class RamRegion:
    guest_addr: int
    size: int
    host_offset: int  # offset into the one host mapping


class GuestRam:
    def __init__(self, memory_bytes: int,
                 ram_regions: list[tuple[int, int]] | None = None) -> None:
        """`ram_regions` (guest start, size) default to the x86 layout around the MMIO hole."""
        if memory_bytes < 2 * layout.MiB or memory_bytes % layout.MiB:
            raise GuestMemoryError(f"guest memory of {memory_bytes} bytes is not a whole number of MiB >= 2",
                                   "give memory in MiB, at least 2")
        self.size = memory_bytes
        self._map = mmap.mmap(-1, memory_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                              | getattr(mmap, "MAP_NORESERVE", 0))
        offset = 0
        regions = []
        for start, size in ram_regions or layout.ram_regions(memory_bytes):
            regions.append(RamRegion(start, size, offset))
            offset += size
        self._regions = tuple(regions)

    @classmethod
    def aarch64(cls, memory_bytes: int) -> "GuestRam":
        """RAM of an aarch64 VM: one region from layout.A64_RAM_START."""
        return cls(memory_bytes, [(layout.A64_RAM_START, memory_bytes)])

    # -- translation -----------------------------------------------------------------
    def regions(self) -> tuple[RamRegion, ...]:
        return self._regions

    @property
    def mapping(self) -> mmap.mmap:
        """The host mapping behind guest RAM (KVM_SET_USER_MEMORY_REGION needs its address)."""
        return self._map

    def _offset(self, gpa: int, length: int) -> int:
        if gpa < 0 or length < 0:
            raise GuestMemoryError(f"negative guest address or length ({gpa:#x}, {length})", "check the caller")
        for region in self._regions:
            if region.guest_addr <= gpa and gpa + length <= region.guest_addr + region.size:
                return region.host_offset + (gpa - region.guest_addr)
        raise GuestMemoryError(f"guest range [{gpa:#x}, {gpa + length:#x}) is not inside guest RAM "
                               f"({self.size // layout.MiB} MiB)", "give the guest more memory or fix the address")

    def contains(self, gpa: int, length: int = 1) -> bool:
        try:
            self._offset(gpa, length)
            return True
        except GuestMemoryError:
            return False

    # -- access ------------------------------------------------------------------------
    def read(self, gpa: int, length: int) -> bytes:
        off = self._offset(gpa, length)
        return self._map[off:off + length]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        off = self._offset(gpa, len(data))
        self._map[off:off + len(data)] = bytes(data)

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self.write(gpa, bytes([byte]) * length)

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))

    def read_cstring(self, gpa: int, max_len: int = 4096) -> bytes:
        """A NUL-terminated string from the guest, never reading past RAM or max_len."""
        out = bytearray()
        while len(out) < max_len and self.contains(gpa + len(out)):
            b = self.read(gpa + len(out), 1)[0]
            if b == 0:
                break
            out.append(b)
        return bytes(out)

    def close(self) -> None:
        self._map.close()
