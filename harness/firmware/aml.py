"""A small AML (ACPI Machine Language) builder: the encodings the harness's DSDT needs, no more.

Encodings from the ACPI 6.5 specification, chapter 20 (AML grammar) and section 6.4 (resource
data types). Every function returns bytes; composite objects (Scope, Device, Method, Package,
Buffer) take already-encoded children. tests/firmware checks the output with ACPICA's own
disassembler and interpreter (iasl -d, acpiexec), not with a decoder of our own.
"""
from __future__ import annotations

import struct

# --- opcodes (ACPI 6.5, 20.3) ------------------------------------------------------------------
ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
NAME_OP, BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x08, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
SCOPE_OP, BUFFER_OP, PACKAGE_OP, METHOD_OP = 0x10, 0x11, 0x12, 0x14
DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x2E, 0x2F
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR, PARENT_CHAR = 0x5C, 0x5E
RETURN_OP = 0xA4
NAME_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")

# --- resource descriptors (ACPI 6.5, 6.4) --------------------------------------------------------
RES_IRQ_NO_FLAGS = 0x22          # small, 2 data bytes
RES_IO = 0x47                    # small, 7 data bytes
RES_END_TAG = 0x79
RES_MEMORY32_FIXED = 0x86
RES_DWORD_ADDRESS = 0x87
RES_WORD_ADDRESS = 0x88
RES_EXTENDED_IRQ = 0x89
ADDRESS_MEMORY, ADDRESS_IO, ADDRESS_BUS = 0, 1, 2
# general flags of address-space descriptors: MIF|MAF (fixed window), consumer/producer
ADDR_PRODUCER_FIXED = 0x0C
EXT_IRQ_CONSUMER, EXT_IRQ_EDGE, EXT_IRQ_LOW, EXT_IRQ_SHARED = 0x01, 0x02, 0x04, 0x08


class AmlError(ValueError):
    """An object the builder cannot encode (bad name, value out of range)."""


# --- names and lengths ---------------------------------------------------------------------------
def name_seg(seg: str) -> bytes:
    seg = seg.upper()
    if not 1 <= len(seg) <= 4 or not set(seg) <= NAME_CHARS or seg[0].isdigit():
        raise AmlError(f"bad ACPI name segment {seg!r}")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """'\\_SB.PCI0', '^FOO', '_HID' -> NameString."""
    prefix = b""
    while path.startswith(("\\", "^")):
        prefix += bytes([ROOT_CHAR if path[0] == "\\" else PARENT_CHAR])
        path = path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    if not segs:
        return prefix + b"\x00"
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
    if len(segs) > 255:
        raise AmlError("name path too long")
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of `body_len` bytes; the encoded length counts its own bytes."""
    for extra in range(4):
        total = body_len + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < (1 << (4 + 8 * extra)):
            first = (extra << 6) | (total & 0x0F)
            rest = [(total >> (4 + 8 * i)) & 0xFF for i in range(extra)]
            return bytes([first] + rest)
    raise AmlError(f"package of {body_len} bytes is too long for a PkgLength")


def _package(opcode: bytes, body: bytes) -> bytes:
    return opcode + pkg_length(len(body)) + body


# --- data objects ----------------------------------------------------------------------------------
def integer(value: int) -> bytes:
    if value < 0 or value >= 1 << 64:
        raise AmlError(f"integer {value} out of range")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == (1 << 64) - 1:
        return bytes([ONES_OP])
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 1 << 8), (WORD_PREFIX, "<H", 1 << 16),
                               (DWORD_PREFIX, "<I", 1 << 32), (QWORD_PREFIX, "<Q", 1 << 64)):
        if value < limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    raise AmlError("unreachable")


def string(text: str) -> bytes:
    raw = text.encode("ascii")
    if b"\0" in raw:
        raise AmlError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + raw + b"\0"


def eisa_id(text: str) -> bytes:
    """'PNP0501' -> the compressed 32-bit EISA id as a DWord constant (what ASL EISAID() emits)."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise AmlError(f"bad EISA id {text!r}")
    try:
        product = int(text[3:], 16)
    except ValueError:
        raise AmlError(f"bad EISA id {text!r}") from None
    c = [ord(ch) - 0x40 for ch in text[:3]]
    vendor = (c[0] << 10) | (c[1] << 5) | c[2]
    raw = struct.pack(">HH", vendor, product)           # big-endian nibbles, then stored as-is
    return bytes([DWORD_PREFIX]) + raw


def buffer(data: bytes) -> bytes:
    return _package(bytes([BUFFER_OP]), integer(len(data)) + data)


def package(*elements: bytes) -> bytes:
    if len(elements) > 255:
        raise AmlError("package with more than 255 elements")
    return _package(bytes([PACKAGE_OP]), bytes([len(elements)]) + b"".join(elements))


# --- named objects ---------------------------------------------------------------------------------
def name(path: str, value: bytes) -> bytes:
    return bytes([NAME_OP]) + name_string(path) + value


def scope(path: str, *terms: bytes) -> bytes:
    return _package(bytes([SCOPE_OP]), name_string(path) + b"".join(terms))


def device(path: str, *terms: bytes) -> bytes:
    return _package(bytes([EXT_OP_PREFIX, DEVICE_OP]), name_string(path) + b"".join(terms))


def method(path: str, args: int, *terms: bytes, serialized: bool = False) -> bytes:
    if not 0 <= args <= 7:
        raise AmlError("a method takes 0..7 arguments")
    flags = args | (0x08 if serialized else 0)
    return _package(bytes([METHOD_OP]), name_string(path) + bytes([flags]) + b"".join(terms))


def return_(value: bytes) -> bytes:
    return bytes([RETURN_OP]) + value


# --- resource templates ------------------------------------------------------------------------------
def io(base: int, length: int) -> bytes:
    """IO (Decode16, base, base, 1, length): a fixed port range."""
    return struct.pack("<BBHHBB", RES_IO, 0x01, base, base, 1, length)


def irq_no_flags(irq: int) -> bytes:
    """IRQNoFlags () {irq}: an ISA edge-triggered, active-high line."""
    if not 0 <= irq < 16:
        raise AmlError(f"ISA IRQ {irq} out of range")
    return struct.pack("<BH", RES_IRQ_NO_FLAGS, 1 << irq)


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    return struct.pack("<BHBII", RES_MEMORY32_FIXED, 9, 1 if writable else 0, base, length)


def extended_irq(gsi: int, level: bool = True, active_low: bool = False, shared: bool = False) -> bytes:
    """Interrupt (ResourceConsumer, Level|Edge, ActiveHigh|Low, Exclusive|Shared) {gsi}."""
    flags = EXT_IRQ_CONSUMER | (0 if level else EXT_IRQ_EDGE) | (EXT_IRQ_LOW if active_low else 0)
    flags |= EXT_IRQ_SHARED if shared else 0
    return struct.pack("<BHBBI", RES_EXTENDED_IRQ, 6, flags, 1, gsi)


def word_bus_number(first: int, last: int) -> bytes:
    """WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, first, last, 0, count)."""
    return struct.pack("<BHBBBHHHHH", RES_WORD_ADDRESS, 13, ADDRESS_BUS, ADDR_PRODUCER_FIXED, 0,
                       0, first, last, 0, last - first + 1)


def word_io_window(base: int, length: int) -> bytes:
    """WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...)."""
    return struct.pack("<BHBBBHHHHH", RES_WORD_ADDRESS, 13, ADDRESS_IO, ADDR_PRODUCER_FIXED, 0x03,
                       0, base, base + length - 1, 0, length)


def dword_memory_window(base: int, length: int) -> bytes:
    """DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...)."""
    return struct.pack("<BHBBBIIIII", RES_DWORD_ADDRESS, 23, ADDRESS_MEMORY, ADDR_PRODUCER_FIXED, 0x01,
                       0, base, base + length - 1, 0, length)


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate () {...}: a Buffer ending in an end tag whose checksum 0 means "none"."""
    return buffer(b"".join(descriptors) + bytes([RES_END_TAG, 0]))
