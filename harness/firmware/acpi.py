"""ACPI tables generated from a MachineDescription: RSDP, XSDT, FADT, MADT, DSDT.

Layouts from the ACPI 6.5 specification: RSDP 5.2.5.3, table header 5.2.6, XSDT 5.2.8, FADT
5.2.9 (revision 6, 276 bytes), MADT 5.2.12 (types 0 local APIC, 1 IOAPIC, 2 interrupt source
override, 4 local APIC NMI), DSDT 5.2.11.1 written with harness.firmware.aml.

The FADT is hardware-reduced (no PM1/GPE blocks: the harness emulates none; Firecracker and QEMU's
microvm do the same) with the registers the harness does emulate: the reset register at port 0xCF9
and the sleep control/status registers (harness.devices.acpi_sleep: S5 powers the VM off). The DSDT names the ISA devices, the virtio-mmio slots, and a PCI host bridge only when
a PCI device exists (seed 000). Each table can be left out (`omit`), so that its absence is a
testable gap.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from harness import layout
from harness.firmware import aml
from harness.firmware.machine import EDGE, MachineDescription
from harness.model.builtin_options import ACPI_TABLES

OEM_ID = b"HARNES"
OEM_TABLE_ID = b"HARNESS "
OEM_REVISION = 1
CREATOR_ID = b"HRNS"
CREATOR_REVISION = 1
HEADER_SIZE = 36
RSDP_SIZE = 36
TABLES = ACPI_TABLES     # what `omit` may name (the guest file's acpi_omit)

# FADT (5.2.9)
FADT_REVISION, FADT_MINOR, FADT_SIZE = 6, 5, 276
FADT_DSDT, FADT_PM_PROFILE, FADT_CENTURY, FADT_IAPC_BOOT_ARCH, FADT_FLAGS = 40, 45, 108, 109, 112
FADT_RESET_REG, FADT_RESET_VALUE, FADT_MINOR_VERSION, FADT_X_DSDT, FADT_HYPERVISOR_ID = 116, 128, 131, 140, 268
FADT_SLEEP_CONTROL, FADT_SLEEP_STATUS = 244, 256
IAPC_LEGACY_DEVICES, IAPC_8042, IAPC_NO_VGA, IAPC_NO_MSI, IAPC_NO_ASPM = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
FADT_F_WBINVD, FADT_F_PWR_BUTTON, FADT_F_SLP_BUTTON, FADT_F_RESET_REG_SUP = 1 << 0, 1 << 4, 1 << 5, 1 << 10
FADT_F_HW_REDUCED_ACPI = 1 << 20
PM_PROFILE_ENTERPRISE_SERVER = 4
GAS_SYSTEM_IO = 1
RTC_CENTURY_INDEX = 0x32          # harness.devices.rtc keeps the century there

# MADT (5.2.12)
MADT_REVISION = 5
MADT_PCAT_COMPAT = 1
MADT_LOCAL_APIC, MADT_IOAPIC, MADT_OVERRIDE, MADT_LAPIC_NMI = 0, 1, 2, 4
LAPIC_ENABLED = 1
MPS_INTI_POLARITY = {"conforming": 0, "high": 1, "low": 3}
MPS_INTI_TRIGGER = {"conforming": 0, "edge": 1, "level": 3}
ALL_PROCESSORS = 0xFF
LINT1 = 1

S5_SLP_TYP = 5                    # \_S5's SLP_TYP; harness.devices.acpi_sleep powers off on it
STA_PRESENT_ENABLED = 0x0B       # present, enabled, functioning (not shown in UI)
DSDT_REVISION = 2                 # 64-bit integers
XSDT_REVISION = 1
RSDP_REVISION = 2


def checksum(data: bytes) -> int:
    """The byte that makes `data` sum to zero mod 256."""
    return (-sum(data)) & 0xFF


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """Header + body with the length and checksum filled in."""
    length = HEADER_SIZE + len(body)
    header = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE_ID,
                         OEM_REVISION, CREATOR_ID, CREATOR_REVISION)
    raw = bytearray(header + body)
    raw[9] = checksum(raw)
    return bytes(raw)


def rsdp(xsdt_address: int) -> bytes:
    """ACPI 2.0+ RSDP: the first 20 bytes carry their own checksum, all 36 the extended one."""
    raw = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, RSDP_REVISION, 0, RSDP_SIZE,
                                xsdt_address, 0, b"\0\0\0"))
    raw[8] = checksum(raw[:20])
    raw[32] = checksum(raw)
    return bytes(raw)


def xsdt(addresses: list[int]) -> bytes:
    return table(b"XSDT", XSDT_REVISION, b"".join(struct.pack("<Q", a) for a in addresses))


def gas_io(port: int, width_bits: int = 8) -> bytes:
    """Generic Address Structure for a system I/O register (5.2.3.2): byte access."""
    return struct.pack("<BBBBQ", GAS_SYSTEM_IO, width_bits, 0, 1, port)


def fadt(machine: MachineDescription, dsdt_address: int) -> bytes:
    body = bytearray(FADT_SIZE - HEADER_SIZE)

    def put(offset: int, fmt: str, *values: object) -> None:
        struct.pack_into(fmt, body, offset - HEADER_SIZE, *values)

    put(FADT_DSDT, "<I", dsdt_address)
    put(FADT_PM_PROFILE, "<B", PM_PROFILE_ENTERPRISE_SERVER)
    put(FADT_CENTURY, "<B", RTC_CENTURY_INDEX)
    boot_arch = IAPC_LEGACY_DEVICES | IAPC_NO_VGA | IAPC_NO_ASPM
    boot_arch |= IAPC_8042 if machine.i8042_present else 0
    boot_arch |= 0 if machine.msi_supported else IAPC_NO_MSI
    put(FADT_IAPC_BOOT_ARCH, "<H", boot_arch)
    put(FADT_FLAGS, "<I", FADT_F_WBINVD | FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON | FADT_F_RESET_REG_SUP
        | FADT_F_HW_REDUCED_ACPI)
    put(FADT_RESET_REG, "<12s", gas_io(machine.reset_port))
    put(FADT_RESET_VALUE, "<B", machine.reset_value)
    put(FADT_MINOR_VERSION, "<B", FADT_MINOR)
    put(FADT_X_DSDT, "<Q", dsdt_address)
    put(FADT_SLEEP_CONTROL, "<12s", gas_io(machine.sleep_port))
    put(FADT_SLEEP_STATUS, "<12s", gas_io(machine.sleep_port + 1))
    put(FADT_HYPERVISOR_ID, "<8s", b"HARNESS\0")
    return table(b"FACP", FADT_REVISION, bytes(body))


def _inti_flags(trigger: str, polarity: str) -> int:
    return MPS_INTI_POLARITY[polarity] | (MPS_INTI_TRIGGER[trigger] << 2)


def madt(machine: MachineDescription) -> bytes:
    body = bytearray(struct.pack("<II", machine.lapic_address, MADT_PCAT_COMPAT if machine.pic_present else 0))
    for uid, cpu in enumerate(machine.cpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, uid, cpu.apic_id, LAPIC_ENABLED if cpu.enabled else 0)
    io = machine.ioapic
    body += struct.pack("<BBBBII", MADT_IOAPIC, 12, io.apic_id, 0, io.address, io.gsi_base)
    for ovr in machine.overrides():
        body += struct.pack("<BBBBIH", MADT_OVERRIDE, 10, 0, ovr.isa_irq, ovr.gsi,
                            _inti_flags(ovr.trigger, ovr.polarity))
    body += struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, ALL_PROCESSORS, _inti_flags(EDGE, "high"), LINT1)
    return table(b"APIC", MADT_REVISION, bytes(body))


# --- DSDT --------------------------------------------------------------------------------------------
def _hid(hid: str) -> bytes:
    """PNP ids as compressed EISA ids (what ASL's EISAID() emits), ACPI ids as strings."""
    return aml.name("_HID", aml.eisa_id(hid) if hid.startswith("PNP") else aml.string(hid))


def _isa_device(dev) -> bytes:
    resources = [aml.io(base, length) for base, length in dev.ports]
    if dev.irq is not None:
        resources.append(aml.irq_no_flags(dev.irq))
    return aml.device(dev.name, _hid(dev.hid), aml.name("_UID", aml.integer(dev.uid)),
                      aml.name("_CRS", aml.resource_template(*resources)))


def _mmio_device(index: int, dev) -> bytes:
    # LNRO0005 is the virtio-mmio _HID Linux's virtio_mmio driver and NetBSD's virtio_acpi match.
    return aml.device(f"VR{index:02X}", aml.name("_HID", aml.string("LNRO0005")),
                      aml.name("_UID", aml.integer(index)),
                      aml.name("_CRS", aml.resource_template(aml.memory32_fixed(dev.base, dev.size),
                                                             aml.extended_irq(dev.gsi, level=True))))


def _pci_host(machine: MachineDescription) -> bytes:
    io_base, io_len = layout.PCI_IO_WINDOW
    crs = aml.resource_template(
        aml.word_bus_number(0, 0),
        aml.io(layout.PCI_CONFIG_ADDRESS, 8),
        aml.word_io_window(0x0000, layout.PCI_CONFIG_ADDRESS),      # ISA ports below 0xCF8
        aml.word_io_window(io_base, io_len),
        aml.dword_memory_window(layout.PCI_MMIO_START, layout.PCI_MMIO_SIZE))
    # _PRT entries name link devices rather than bare GSIs: a bare GSI means level/active-low to the
    # OS (ACPI 6.5 6.2.13), but KVM's IOAPIC does not invert polarity, so each line is declared
    # active-high through its link's Interrupt descriptor (as QEMU's q35 DSDT does).
    routes = sorted({(d.slot, d.pin, d.gsi) for d in machine.pci if d.gsi is not None})
    prt = [aml.package(aml.integer((slot << 16) | 0xFFFF), aml.integer(pin - 1), aml.name_string(_link_name(gsi)),
                       aml.integer(0)) for slot, pin, gsi in routes]
    return aml.device("PCI0", aml.name("_HID", aml.eisa_id("PNP0A03")), aml.name("_ADR", aml.integer(0)),
                      aml.name("_BBN", aml.integer(0)), aml.name("_UID", aml.integer(0)),
                      aml.name("_CRS", crs), aml.name("_PRT", aml.package(*prt)))


def _link_name(gsi: int) -> str:
    return f"LNK{'ABCDEFGH'[layout.PCI_INTX_GSIS.index(gsi)]}"


def _pci_links(machine: MachineDescription) -> list[bytes]:
    """One PNP0C0F interrupt link per IOAPIC pin PCI uses: fixed, level, active-high, shared."""
    links = []
    for gsi in sorted({d.gsi for d in machine.pci if d.gsi is not None}):
        crs = aml.resource_template(aml.extended_irq(gsi, level=True, active_low=False, shared=True))
        links.append(aml.device(_link_name(gsi), aml.name("_HID", aml.eisa_id("PNP0C0F")),
                                aml.name("_UID", aml.integer(gsi)), aml.name("_PRS", crs),
                                aml.method("_STA", 0, aml.return_(aml.integer(STA_PRESENT_ENABLED))),
                                aml.method("_CRS", 0, aml.return_(crs)),
                                aml.method("_SRS", 1), aml.method("_DIS", 0)))
    return links


def dsdt(machine: MachineDescription) -> bytes:
    terms = [_isa_device(d) for d in machine.isa]
    terms += [_mmio_device(i, d) for i, d in enumerate(machine.mmio)]
    if machine.has_pci:
        terms += _pci_links(machine)
        terms.append(_pci_host(machine))
    body = aml.scope("\\_SB", *terms)
    # \_S5: SLP_TYP for soft-off, written by OSPM to the FADT's sleep control register
    # (harness.devices.acpi_sleep powers the VM off on it).
    body += aml.name("\\_S5", aml.package(aml.integer(S5_SLP_TYP), aml.integer(S5_SLP_TYP), aml.integer(0),
                                           aml.integer(0)))
    return table(b"DSDT", DSDT_REVISION, body)


# --- the whole set -------------------------------------------------------------------------------------
@dataclass
class AcpiTables:
    """The tables and where each goes: blobs[address] = bytes."""
    rsdp_address: int
    blobs: dict[int, bytes] = field(default_factory=dict)
    names: dict[str, int] = field(default_factory=dict)   # signature -> address

    def regions(self) -> list[tuple[str, int, int]]:
        return [(f"acpi.{name}", addr, len(self.blobs[addr])) for name, addr in self.names.items()]


def build(machine: MachineDescription, omit: tuple[str, ...] = (), base: int = layout.ACPI_TABLES_ADDR,
          end: int = layout.ACPI_TABLES_END) -> AcpiTables | None:
    """Every table for `machine`, laid out from `base`; None when the XSDT (hence ACPI) is omitted."""
    unknown = set(omit) - set(TABLES)
    if unknown:
        raise ValueError(f"unknown ACPI tables to omit: {sorted(unknown)}")
    if "xsdt" in omit:
        return None
    out = AcpiTables(rsdp_address=layout.ACPI_RSDP_ADDR)
    cursor = base

    def place(name: str, blob: bytes) -> int:
        nonlocal cursor
        addr = cursor
        if addr + len(blob) > end:
            raise ValueError(f"ACPI tables do not fit below {end:#x}")
        out.blobs[addr] = blob
        out.names[name] = addr
        cursor = (addr + len(blob) + 15) // 16 * 16
        return addr

    pointed: list[int] = []
    dsdt_addr = place("DSDT", dsdt(machine)) if "dsdt" not in omit else 0
    if "fadt" not in omit:
        pointed.append(place("FACP", fadt(machine, dsdt_addr)))
    if "madt" not in omit:
        pointed.append(place("APIC", madt(machine)))
    xsdt_addr = place("XSDT", xsdt(pointed))
    out.blobs[out.rsdp_address] = rsdp(xsdt_addr)
    out.names["RSDP"] = out.rsdp_address
    return out
