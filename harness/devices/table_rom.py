"""Firmware tables served from an MMIO window (builtin option `acpi_watch`), so that every read
the guest makes of a table exits to us: each table it reads is a `firmware-table-read` gap keyed
by its signature, counted per access. Writes are dropped (firmware tables are read-only) and
recorded under the same kind with access "write"."""
from __future__ import annotations

import bisect

from harness.devices.context import DeviceContext
from harness.model.gap import FIRMWARE_TABLE_READ, GapRecord


class TableRom:
    def __init__(self, ctx: DeviceContext, base: int, size: int, blobs: dict[int, bytes]) -> None:
        self._ctx = ctx
        self.base, self.size = base, size
        self.image = bytearray(size)
        self._starts: list[int] = []
        self._spans: list[tuple[int, str]] = []
        for addr, blob in sorted(blobs.items()):
            off = addr - base
            if off < 0 or off + len(blob) > size:
                raise ValueError(f"table at {addr:#x} is outside the window [{base:#x}, {base + size:#x})")
            self.image[off:off + len(blob)] = blob
            self._starts.append(off)
            self._spans.append((off + len(blob), blob[:4].decode("ascii", "replace")))

    def table_at(self, offset: int) -> str:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and offset < self._spans[i][0]:
            return self._spans[i][1]
        return "none"

    def read(self, offset: int, size: int) -> int:
        self._note(offset, size, "read")
        return int.from_bytes(self.image[offset:offset + size].ljust(size, b"\xff"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self._note(offset, size, "write")

    def _note(self, offset: int, size: int, access: str) -> None:
        self._ctx.gap(GapRecord(kind=FIRMWARE_TABLE_READ, key=self.table_at(offset), access=access,
                                first_t=self._ctx.now(), detail={"first_offset": offset, "size": size}))
