from __future__ import annotations

import pytest

from harness.devices.bus import Bus


class Regs:
    """A device that remembers accesses and answers offset-derived values."""

    def __init__(self, width: int = 0) -> None:
        self.access_width = width
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0x10 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def test_offsets_are_relative_to_base() -> None:
    bus, dev = Bus("io"), Regs()
    bus.register(0x3F8, 8, dev, "com1")
    assert bus.read(0x3FA, 1) == 0x12
    assert bus.write(0x3FF, 1, 0xAB) is True
    assert dev.writes == [(7, 1, 0xAB)]


def test_unclaimed_read_and_write() -> None:
    bus = Bus("io")
    bus.register(0x60, 1, Regs(), "kbd")
    assert bus.read(0x61, 1) is None
    assert bus.write(0x5F, 1, 0) is False
    assert bus.find(0x61) is None


def test_find_returns_device_in_dense_and_sparse_ranges() -> None:
    bus, small, big = Bus("mmio"), Regs(), Regs()
    bus.register(0xFEC0_0000, 0x20, small, "small")
    bus.register(0xD000_0000, 0x1000, big, "virtio")
    assert bus.find(0xFEC0_001F) is small
    assert bus.find(0xD000_0FFF) is big
    assert bus.find(0xD000_1000) is None
    assert bus.find(0xCFFF_FFFF) is None
    assert bus.read(0xD000_0100, 4) == 0x110


@pytest.mark.parametrize("base,length", [(0x3FC, 4), (0x3F0, 9), (0x3F8, 1), (0x3F0, 0x20)])
def test_overlap_names_both_devices(base: int, length: int) -> None:
    bus = Bus("io")
    bus.register(0x3F8, 8, Regs(), "com1")
    with pytest.raises(ValueError, match="newdev.*overlaps com1"):
        bus.register(base, length, Regs(), "newdev")


def test_adjacent_ranges_do_not_overlap() -> None:
    bus = Bus("io")
    bus.register(0x70, 2, Regs(), "rtc")
    bus.register(0x72, 2, Regs(), "next")
    bus.register(0x6E, 2, Regs(), "prev")
    assert [r.name for r in bus.ranges()] == ["prev", "rtc", "next"]
    assert bus.ranges()[1].describe() == {"base": "0x70", "length": 2, "name": "rtc"}


def test_wide_access_to_byte_device_is_split() -> None:
    bus, dev = Bus("io"), Regs(width=1)
    bus.register(0x3F8, 8, dev, "com1")
    assert bus.write(0x3F8, 2, 0xBBAA)
    assert dev.writes == [(0, 1, 0xAA), (1, 1, 0xBB)]
    assert bus.read(0x3F8, 4) == 0x13121110
    # The byte past the device's end floats high.
    assert bus.read(0x3FE, 4) == 0xFFFF1716


def test_bad_range_rejected() -> None:
    with pytest.raises(ValueError):
        Bus().register(0x10, 0, Regs(), "empty")
