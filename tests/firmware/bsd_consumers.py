"""How the BSDs' table consumers read firmware tables, restated as small readers over guest RAM.

Each function follows the order of checks of the code it names, so that a table that would make
that code give up (or panic) makes the reader raise `Refused` with the reason the kernel would
log. They are paraphrases (no code copied), written from the public sources:

- ACPICA's AcpiFindRootPointer (NetBSD's acpi_probe and FreeBSD's ACPI both use ACPICA,
  sys/external/bsd/acpica, sys/contrib/dev/acpica: components/tables/tbxfroot.c): EBDA's first KiB
  (segment from BDA 0x40E), then 0xE0000-0xFFFFF, on 16-byte boundaries; "RSD PTR ", checksum over
  20 bytes, and over the full length for revision >= 2. AcpiTbParseRootTable prefers the XSDT.
- OpenBSD acpi_attach (sys/dev/acpi/acpi.c: acpi_probe scans 0xE0000-0xFFFFF only, then
  acpi_loadtables/acpi_maptable check every table's checksum and length, then FACP and DSDT are
  required: "acpi0: no FADT" / X_DSDT preferred over DSDT).
- OpenBSD mpbios (sys/arch/amd64/amd64/mpbios.c: mpbios_probe searches the EBDA's first KiB, the
  last KiB of base memory from BDA 0x413, then 0xF0000-0xFFFFF; checks the "_MP_" checksum, then
  the "PCMP" checksum; mpbios_scan walks entries by type: 20 bytes for processors, 8 for others,
  and an unknown type stops the scan).
- FreeBSD madt (sys/x86/acpica/madt.c: madt_walk_table panics on an entry shorter than its header
  "MADT has a corrupt table"; madt_setup_local creates a LAPIC per enabled entry;
  madt_parse_ioapic, madt_parse_interrupt_override: bus must be 0 ("bad bus"), the GSI must
  belong to an IOAPIC; NMI entries with ProcessorId 0xFF apply to all CPUs).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field


class Refused(Exception):
    """What the kernel would print before giving up on the table."""


def _sum(data: bytes) -> int:
    return sum(data) & 0xFF


def _scan(ram, start: int, length: int, signature: bytes, step: int = 16):
    for addr in range(start, start + length, step):
        if ram.read(addr, len(signature)) == signature:
            yield addr


# --- ACPICA (NetBSD acpi_probe, FreeBSD) ------------------------------------------------------------
def acpica_find_rsdp(ram) -> int:
    ebda = struct.unpack("<H", ram.read(0x40E, 2))[0] << 4
    areas = ([(ebda, 1024)] if ebda > 0x400 else []) + [(0xE0000, 0x20000)]
    for start, length in areas:
        for addr in _scan(ram, start, length, b"RSD PTR "):
            raw = ram.read(addr, 36)
            if _sum(raw[:20]):
                continue
            if raw[15] >= 2 and _sum(ram.read(addr, struct.unpack_from("<I", raw, 20)[0])):
                continue
            return addr
    raise Refused("ACPI: A valid RSDP was not found")


@dataclass
class AcpiView:
    rsdp: int
    root: str                                     # "XSDT" or "RSDT"
    tables: dict[str, int] = field(default_factory=dict)


def read_table(ram, addr: int, who: str) -> bytes:
    length = struct.unpack("<I", ram.read(addr + 4, 4))[0]
    if length < 36:
        raise Refused(f"{who}: table at {addr:#x} has length {length}")
    raw = ram.read(addr, length)
    if _sum(raw):
        raise Refused(f"{who}: {raw[:4].decode(errors='replace')} checksum error")
    return raw


def acpica_root_tables(ram) -> AcpiView:
    rsdp_addr = acpica_find_rsdp(ram)
    rsdp = ram.read(rsdp_addr, 36)
    xsdt = struct.unpack_from("<Q", rsdp, 24)[0] if rsdp[15] >= 2 else 0
    if xsdt:
        root, entry, addr = "XSDT", 8, xsdt
    else:
        root, entry, addr = "RSDT", 4, struct.unpack_from("<I", rsdp, 16)[0]
    raw = read_table(ram, addr, "ACPI")
    if raw[:4].decode() != root:
        raise Refused(f"ACPI: root table signature {raw[:4]!r}, expected {root}")
    view = AcpiView(rsdp_addr, root)
    fmt = "<Q" if entry == 8 else "<I"
    for off in range(36, len(raw), entry):
        ptr = struct.unpack_from(fmt, raw, off)[0]
        view.tables[read_table(ram, ptr, "ACPI")[:4].decode()] = ptr
    if "FACP" in view.tables:
        fadt = read_table(ram, view.tables["FACP"], "ACPI")
        dsdt = struct.unpack_from("<Q", fadt, 140)[0] if len(fadt) >= 148 else 0
        dsdt = dsdt or struct.unpack_from("<I", fadt, 40)[0]
        if dsdt:
            view.tables["DSDT"] = dsdt
            read_table(ram, dsdt, "ACPI")
    return view


# --- OpenBSD acpi_attach ----------------------------------------------------------------------------------
def openbsd_acpi_attach(ram) -> AcpiView:
    for addr in _scan(ram, 0xE0000, 0x20000, b"RSD PTR "):
        raw = ram.read(addr, 36)
        if _sum(raw[:20]) == 0 and (raw[15] < 2 or _sum(raw) == 0):
            break
    else:
        raise Refused("acpi0: could not find RSDP")
    view = acpica_root_tables(ram)                 # same walk; OpenBSD's own checks follow
    if "FACP" not in view.tables:
        raise Refused("acpi0: no FADT")
    if "DSDT" not in view.tables:
        raise Refused("acpi0: no DSDT")
    return view


# --- OpenBSD mpbios -----------------------------------------------------------------------------------------
@dataclass
class MpView:
    processors: list[dict] = field(default_factory=list)
    buses: dict[int, str] = field(default_factory=dict)
    ioapics: dict[int, int] = field(default_factory=dict)          # id -> address
    interrupts: list[dict] = field(default_factory=list)
    local_interrupts: list[dict] = field(default_factory=list)


def openbsd_mpbios(ram) -> MpView:
    ebda = struct.unpack("<H", ram.read(0x40E, 2))[0] << 4
    basemem = struct.unpack("<H", ram.read(0x413, 2))[0] * 1024
    fp = None
    for start, length in ((ebda, 1024), (basemem - 1024, 1024), (0xF0000, 0x10000)):
        for addr in _scan(ram, start, length, b"_MP_"):
            raw = ram.read(addr, 16)
            if _sum(ram.read(addr, raw[8] * 16)) == 0:
                fp = raw
                break
        if fp:
            break
    if fp is None:
        raise Refused("mpbios: no MP floating pointer")
    if fp[11]:
        raise Refused("mpbios: default configuration, no table")
    cth = struct.unpack_from("<I", fp, 4)[0]
    head = ram.read(cth, 44)
    if head[:4] != b"PCMP":
        raise Refused("mpbios: bad config table signature")
    length, count = struct.unpack_from("<H", head, 4)[0], struct.unpack_from("<H", head, 34)[0]
    table = ram.read(cth, length)
    if _sum(table):
        raise Refused("mpbios: config table checksum failure")
    view, pos = MpView(), 44
    sizes = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}
    for _ in range(count):
        kind = table[pos]
        if kind not in sizes or pos + sizes[kind] > length:
            raise Refused(f"mpbios: unknown entry type {kind} at offset {pos}")
        e = table[pos:pos + sizes[kind]]
        if kind == 0 and e[3] & 1:
            view.processors.append({"apic_id": e[1], "bsp": bool(e[3] & 2)})
        elif kind == 1:
            view.buses[e[1]] = e[2:8].decode().strip()
        elif kind == 2 and e[3] & 1:
            view.ioapics[e[1]] = struct.unpack_from("<I", e, 4)[0]
        elif kind in (3, 4):
            flags = struct.unpack_from("<H", e, 2)[0]
            rec = {"type": e[1], "polarity": flags & 3, "trigger": flags >> 2 & 3, "bus": e[4], "bus_irq": e[5],
                   "dest": e[6], "pin": e[7]}
            (view.interrupts if kind == 3 else view.local_interrupts).append(rec)
        pos += sizes[kind]
    for irq in view.interrupts:                     # mpbios_int: unknown bus or ioapic -> "bad"
        if irq["bus"] not in view.buses:
            raise Refused(f"mpbios: interrupt on unknown bus {irq['bus']}")
        if irq["dest"] not in view.ioapics:
            raise Refused(f"mpbios: interrupt to unknown ioapic {irq['dest']}")
    return view


# --- FreeBSD madt -----------------------------------------------------------------------------------------
@dataclass
class MadtView:
    lapics: list[int] = field(default_factory=list)
    ioapics: dict[int, tuple[int, int]] = field(default_factory=dict)   # id -> (address, gsi base)
    overrides: dict[int, tuple[int, int]] = field(default_factory=dict)  # source irq -> (gsi, flags)
    nmi_all_cpus: bool = False


def freebsd_madt(ram, ioapic_pins: int = 24) -> MadtView:
    view = acpica_root_tables(ram)
    if "APIC" not in view.tables:
        raise Refused("MADT: table not found, no APIC enumerator")
    raw = read_table(ram, view.tables["APIC"], "MADT")
    out, pos = MadtView(), 44
    entries = []
    while pos < len(raw):
        if pos + 2 > len(raw) or raw[pos + 1] < 2 or pos + raw[pos + 1] > len(raw):
            raise Refused("MADT has a corrupt table")
        entries.append(raw[pos:pos + raw[pos + 1]])
        pos += raw[pos + 1]
    for e in entries:
        if e[0] == 0 and struct.unpack_from("<I", e, 4)[0] & 1:
            out.lapics.append(e[3])
        elif e[0] == 1:
            out.ioapics[e[2]] = struct.unpack_from("<II", e, 4)
    for e in entries:
        if e[0] == 2:
            bus, src, gsi, flags = e[2], e[3], struct.unpack_from("<I", e, 4)[0], struct.unpack_from("<H", e, 8)[0]
            if bus != 0:
                raise Refused(f"MADT: Ignoring interrupt override with bad bus {bus}")
            if not any(base <= gsi < base + ioapic_pins for _, base in out.ioapics.values()):
                raise Refused(f"MADT: interrupt override for GSI {gsi} on no IOAPIC")
            out.overrides[src] = (gsi, flags)
        elif e[0] == 4 and e[2] == 0xFF:
            out.nmi_all_cpus = True
    if not out.lapics:
        raise Refused("MADT: no local APICs")
    return out
