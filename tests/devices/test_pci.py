from __future__ import annotations

import pytest

from harness.devices.bus import Bus
from harness.devices.pci import GAP_BATCH, Bdf, PciFunction, PciHost
from harness.model.events import RESET
from harness.model.gap import PCI_CONFIG

CF8, CFC = 0xCF8, 0xCFC


def addr(bus: int, dev: int, fn: int, reg: int) -> int:
    return 0x8000_0000 | bus << 16 | dev << 11 | fn << 8 | reg


@pytest.fixture
def host(rec) -> PciHost:
    return PciHost(rec.context())


@pytest.fixture
def bus(host) -> Bus:
    b = Bus("io")
    b.register(CF8, 8, host, "pci")
    return b


def cfg_read(bus: Bus, b: int, d: int, f: int, reg: int, size: int = 4) -> int:
    bus.write(CF8, 4, addr(b, d, f, reg & 0xFC))
    return bus.read(CFC + (reg & 3), size)


def test_address_register_round_trip(bus: Bus) -> None:
    bus.write(CF8, 4, 0x8000_0000)
    assert bus.read(CF8, 4) == 0x8000_0000          # Linux pci_check_type1
    bus.write(CF8, 4, 0xFFFF_FFFF)
    assert bus.read(CF8, 4) == 0x80FF_FFFC          # reserved bits read 0


def test_byte_access_to_address_ports_floats(bus: Bus) -> None:
    bus.write(CF8 + 3, 1, 0x00)                       # Linux's type-2 probe writes
    bus.write(CF8, 1, 0x00)
    assert bus.read(CF8, 1) == 0xFF and bus.read(CF8 + 2, 1) == 0xFF
    assert bus.read(CF8, 2) == 0xFFFF


def test_host_bridge_ids(bus: Bus) -> None:
    assert cfg_read(bus, 0, 0, 0, 0x00) == 0x1237_8086
    assert cfg_read(bus, 0, 0, 0, 0x08) == 0x0600_0002   # class 06/00/00, revision 2
    assert cfg_read(bus, 0, 0, 0, 0x0E, 1) == 0x00       # header type 0, single function
    assert cfg_read(bus, 0, 0, 0, 0x34, 1) == 0x00       # no capabilities


def test_byte_and_word_lanes(bus: Bus) -> None:
    bus.write(CF8, 4, addr(0, 0, 0, 0))
    assert bus.read(CFC, 1) == 0x86
    assert bus.read(CFC + 1, 1) == 0x80
    assert bus.read(CFC + 2, 2) == 0x1237
    assert bus.read(CFC + 3, 1) == 0x12
    assert bus.read(CFC + 2, 4) == 0x1237             # clipped to the dword


def test_read_only_registers_ignore_writes(bus: Bus) -> None:
    bus.write(CF8, 4, addr(0, 0, 0, 0x00))
    bus.write(CFC, 4, 0xDEAD_BEEF)
    assert bus.read(CFC, 4) == 0x1237_8086
    bus.write(CF8, 4, addr(0, 0, 0, 0x08))
    bus.write(CFC, 4, 0)
    assert bus.read(CFC, 4) == 0x0600_0002


def test_bars_absent(bus: Bus) -> None:
    for reg in range(0x10, 0x28, 4):
        bus.write(CF8, 4, addr(0, 0, 0, reg))
        bus.write(CFC, 4, 0xFFFF_FFFF)                # sizing probe
        assert bus.read(CFC, 4) == 0


def test_writable_registers(bus: Bus) -> None:
    bus.write(CF8, 4, addr(0, 0, 0, 0x3C))
    bus.write(CFC, 1, 0x0B)                           # interrupt line is a scratch byte
    assert bus.read(CFC, 1) == 0x0B
    bus.write(CF8, 4, addr(0, 0, 0, 0x04))
    bus.write(CFC, 2, 0xFFFF)
    assert bus.read(CFC, 2) == 0x0547
    bus.write(CFC + 2, 2, 0xFFFF)                     # status: RW1C bits, nothing set
    assert bus.read(CFC + 2, 2) == 0x0200


def test_absent_device_all_ones_and_gap(bus: Bus, rec) -> None:
    assert cfg_read(bus, 0, 3, 0, 0x00) == 0xFFFF_FFFF
    assert cfg_read(bus, 0, 3, 0, 0x00, 2) == 0xFFFF
    assert cfg_read(bus, 0, 3, 0, 0x0E, 1) == 0xFF
    bus.write(CF8, 4, addr(1, 0x1F, 7, 0x04))
    bus.write(CFC, 2, 0x0007)
    assert [(g.kind, g.key, g.access, g.count) for g in rec.gaps] == [
        (PCI_CONFIG, "00:03.0", "read", 1), (PCI_CONFIG, "01:1f.7", "write", 1)]
    assert rec.gaps[0].detail == {"offset": 0, "size": 4}


def test_absent_repeats_are_counted(host: PciHost, bus: Bus, rec) -> None:
    for _ in range(GAP_BATCH + 6):
        cfg_read(bus, 0, 5, 0, 0)
    host.flush_gaps()
    assert rec.gaps[0].key == "00:05.0"
    assert sum(g.count for g in rec.gaps) == GAP_BATCH + 6
    assert len(rec.gaps) == 3                          # first, one batch, the rest at flush


def test_disabled_address_reads_ones_and_records_nothing(bus: Bus, rec) -> None:
    bus.write(CF8, 4, 0x0000_0000)
    assert bus.read(CFC, 4) == 0xFFFF_FFFF
    bus.write(CFC, 4, 0)
    assert rec.gaps == []


def test_reset_control_cf9(bus: Bus, rec) -> None:
    bus.write(CF8 + 1, 1, 0x02)
    assert rec.events == [] and bus.read(CF8 + 1, 1) == 0x02
    bus.write(CF8 + 1, 1, 0x06)
    assert [e.type for e in rec.events] == [RESET]


def test_add_function_and_multifunction_bit(host: PciHost, bus: Bus) -> None:
    nic = PciFunction(vendor=0x1AF4, device=0x1041, class_code=0x020000)
    nic.set_bar(0, 0x1000)
    host.add_function("00:02.0", nic)
    host.add_function((0, 2, 1), PciFunction(0x1AF4, 0x1042, 0x010000))
    assert cfg_read(bus, 0, 2, 0, 0) == 0x1041_1AF4
    assert cfg_read(bus, 0, 2, 0, 0x0E, 1) == 0x80
    assert cfg_read(bus, 0, 2, 1, 0) == 0x1042_1AF4
    bus.write(CF8, 4, addr(0, 2, 0, 0x10))
    bus.write(CFC, 4, 0xFFFF_FFFF)
    assert bus.read(CFC, 4) == 0xFFFF_F000            # 4 KiB memory BAR
    with pytest.raises(ValueError, match="already taken"):
        host.add_function(Bdf(0, 2, 0), nic)


def test_bdf_parse() -> None:
    assert str(Bdf.parse("00:1f.7")) == "00:1f.7"
    with pytest.raises(ValueError, match="bb:dd.f"):
        Bdf.parse("nonsense")
    with pytest.raises(ValueError, match="out of range"):
        Bdf.parse("00:20.0")


def test_bdf_tuple_out_of_range(host: PciHost) -> None:
    with pytest.raises(ValueError, match="out of range"):
        host.add_function((0, 32, 0), PciFunction(1, 2, 3))
