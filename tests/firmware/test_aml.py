"""The AML builder against iasl: the same object written in ASL compiles to the same bytes."""
import pytest

from harness.firmware import aml
from harness.firmware.acpi import HEADER_SIZE

from acpica import compile_asl


def _asl_body(iasl, tmp_path, asl_terms: str) -> bytes:
    aml_bytes = compile_asl(iasl, 'DefinitionBlock ("", "DSDT", 2, "HARNES", "HARNESS ", 1)\n{\n'
                            + asl_terms + "\n}\n", tmp_path)
    return aml_bytes[HEADER_SIZE:]


CASES = [
    ('Name (ABCD, 0x12)', aml.name("ABCD", aml.integer(0x12))),
    ('Name (WRD_, 0x1234)', aml.name("WRD", aml.integer(0x1234))),
    ('Name (DWD_, 0x12345678)', aml.name("DWD", aml.integer(0x12345678))),
    ('Name (QWD_, 0x123456789A)', aml.name("QWD", aml.integer(0x123456789A))),
    ('Name (ZER_, Zero)', aml.name("ZER", aml.integer(0))),
    ('Name (STR_, "LNRO0005")', aml.name("STR", aml.string("LNRO0005"))),
    ('Name (_HID, EisaId ("PNP0501"))', aml.name("_HID", aml.eisa_id("PNP0501"))),
    ('Name (_HID, EisaId ("PNP0A03"))', aml.name("_HID", aml.eisa_id("PNP0A03"))),
    ('Name (PKG_, Package () {1, 2, "x"})', aml.name("PKG", aml.package(aml.integer(1), aml.integer(2),
                                                                      aml.string("x")))),
    ('Scope (_SB) { Device (DEV0) { Name (_UID, 7) } }',
     aml.scope("_SB", aml.device("DEV0", aml.name("_UID", aml.integer(7))))),
    ('Method (_STA, 0, NotSerialized) { Return (0x0B) }', aml.method("_STA", 0, aml.return_(aml.integer(0x0B)))),
    ('Name (_CRS, ResourceTemplate () { IO (Decode16, 0x3F8, 0x3F8, 1, 8) IRQNoFlags () {4} })',
     aml.name("_CRS", aml.resource_template(aml.io(0x3F8, 8), aml.irq_no_flags(4)))),
    ('Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, 0xD0000000, 0x200) '
     'Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) {20} })',
     aml.name("_CRS", aml.resource_template(aml.memory32_fixed(0xD0000000, 0x200), aml.extended_irq(20)))),
    ('Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveLow, Shared) {17} })',
     aml.name("_CRS", aml.resource_template(aml.extended_irq(17, level=False, active_low=True, shared=True)))),
    ('Name (_CRS, ResourceTemplate () { WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, '
     '0, 0, 0, 0, 1) WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0xC000, 0xFFFF, 0, '
     '0x4000) DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, 0, '
     '0xC0000000, 0xCFFFFFFF, 0, 0x10000000) })',
     aml.name("_CRS", aml.resource_template(aml.word_bus_number(0, 0), aml.word_io_window(0xC000, 0x4000),
                                            aml.dword_memory_window(0xC0000000, 0x10000000)))),
]


@pytest.mark.parametrize("asl,ours", CASES, ids=[c[0][:40] for c in CASES])
def test_builder_matches_iasl(iasl, tmp_path, asl, ours):
    assert _asl_body(iasl, tmp_path, asl) == ours


@pytest.mark.parametrize("size", [0, 1, 0x3C, 0x3D, 0x3E, 0xFFB, 0xFFC, 0xFFD, 0x1100])
def test_large_packages_match_iasl(iasl, tmp_path, size):
    """PkgLength switches from 1 to 2 to 3 bytes near 63 and 4095 bytes: iasl must agree at every edge."""
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    asl_bytes = ", ".join(f"0x{b:02X}" for b in data)
    ours = aml.name("BUF", aml.buffer(data))
    assert _asl_body(iasl, tmp_path, f"Name (BUF_, Buffer () {{{asl_bytes}}})") == ours


@pytest.mark.parametrize("bad", ["", "TOOLONG", "1ABC", "a-b"])
def test_bad_names_refused(bad):
    with pytest.raises(aml.AmlError):
        aml.name_seg(bad)


def test_integer_range_refused():
    with pytest.raises(aml.AmlError):
        aml.integer(-1)
    with pytest.raises(aml.AmlError):
        aml.integer(1 << 64)
