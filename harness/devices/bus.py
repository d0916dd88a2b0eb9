"""An address bus: maps port numbers (I/O bus) or guest-physical addresses (MMIO bus) to devices.

This is the VM-exit hot path. Small ranges (every I/O device, at most DENSE_LIMIT addresses) are
indexed address-by-address in a dict, so a port lookup is one dict hit; large ranges (MMIO
windows) are found by bisect over the sorted range starts. Registration happens while the VM is
built; lookups take no lock.

Devices see offsets relative to their base: `read(offset, size) -> int` and
`write(offset, size, value) -> None`. A device whose registers are one byte wide sets
`access_width = 1`; a wider access is then split into byte accesses to consecutive addresses, as
the x86 bus splits a 16/32-bit IN/OUT to an 8-bit ISA device.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

DENSE_LIMIT = 64   # ranges up to this many addresses get a per-address dict entry


@dataclass(frozen=True)
class BusRange:
    base: int
    length: int
    name: str
    device: Any

    @property
    def end(self) -> int:
        return self.base + self.length

    def describe(self) -> dict[str, Any]:
        return {"base": hex(self.base), "length": self.length, "name": self.name}


class Bus:
    """One class for both the port-I/O bus and the MMIO bus."""

    def __init__(self, name: str = "bus") -> None:
        self.name = name
        self._dense: dict[int, BusRange] = {}
        self._starts: list[int] = []          # sorted bases of every range
        self._ranges: list[BusRange] = []     # parallel to _starts

    def register(self, base: int, length: int, device: Any, name: str) -> None:
        if length <= 0 or base < 0:
            raise ValueError(f"{self.name} bus: bad range for {name}: base={base:#x} length={length}")
        new = BusRange(base, length, name, device)
        i = bisect.bisect_left(self._starts, base)
        for neighbour in self._ranges[max(0, i - 1):i + 1]:
            if neighbour.base < new.end and base < neighbour.end:
                raise ValueError(
                    f"{self.name} bus: {name} [{base:#x}, {new.end:#x}) overlaps "
                    f"{neighbour.name} [{neighbour.base:#x}, {neighbour.end:#x})")
        self._starts.insert(i, base)
        self._ranges.insert(i, new)
        if length <= DENSE_LIMIT:
            for addr in range(base, new.end):
                self._dense[addr] = new

    def _lookup(self, addr: int) -> BusRange | None:
        hit = self._dense.get(addr)
        if hit is not None:
            return hit
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            candidate = self._ranges[i]
            if addr < candidate.end:
                return candidate
        return None

    def find(self, addr: int) -> Any | None:
        hit = self._lookup(addr)
        return hit.device if hit is not None else None

    def read(self, addr: int, size: int) -> int | None:
        hit = self._lookup(addr)
        if hit is None:
            return None
        if size > 1 and getattr(hit.device, "access_width", 0) == 1:
            return self._split_read(addr, size)
        return int(hit.device.read(addr - hit.base, size))

    def write(self, addr: int, size: int, value: int) -> bool:
        hit = self._lookup(addr)
        if hit is None:
            return False
        if size > 1 and getattr(hit.device, "access_width", 0) == 1:
            self._split_write(addr, size, value)
            return True
        hit.device.write(addr - hit.base, size, value)
        return True

    def _split_read(self, addr: int, size: int) -> int:
        # Bytes nothing claims float high, like an empty ISA bus.
        value = 0
        for i in range(size):
            byte = self.read(addr + i, 1)
            value |= (0xFF if byte is None else byte & 0xFF) << (8 * i)
        return value

    def _split_write(self, addr: int, size: int, value: int) -> None:
        for i in range(size):
            self.write(addr + i, 1, (value >> (8 * i)) & 0xFF)

    def ranges(self) -> list[BusRange]:
        """Registered ranges, sorted by base (for reports: BusRange.describe())."""
        return list(self._ranges)
