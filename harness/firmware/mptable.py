"""The Intel MultiProcessor Specification 1.4 table, for guests that read it instead of ACPI
(OpenBSD's and NetBSD's mpbios, Linux with acpi=off, FreeBSD's mptable).

MP spec 1.4, chapter 4: a 16-byte floating pointer ("_MP_") in the first KiB of the EBDA, then
the configuration table ("PCMP"): processors (type 0), buses (1), the IOAPIC (2), I/O interrupt
assignments (3: every ISA IRQ and every PCI INTx pin to its IOAPIC pin) and local interrupt
assignments (4: ExtINT on LINT0, NMI on LINT1). Generated from the same MachineDescription as
the ACPI tables, so both describe one routing.
"""
from __future__ import annotations

import struct

from harness import layout
from harness.firmware.acpi import checksum
from harness.firmware.machine import EDGE, HIGH, LEVEL, MachineDescription

SPEC_REVISION = 4                  # MP spec 1.4
FLOATING_SIZE = 16
HEADER_SIZE = 44
OEM_ID = b"HARNESS "
PRODUCT_ID = b"BUILTIN VMM "
ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IO_INTERRUPT, ENTRY_LOCAL_INTERRUPT = 0, 1, 2, 3, 4
CPU_ENABLED, CPU_BOOTSTRAP = 1 << 0, 1 << 1
LAPIC_VERSION = 0x14               # integrated APIC, as KVM's LAPIC version register reads
IOAPIC_VERSION = 0x11              # KVM's IOAPIC version register
IOAPIC_ENABLED = 1
CPU_SIGNATURE = 0x600              # family 6: informational, OSes read CPUID themselves
CPU_FEATURES = (1 << 0) | (1 << 9) # FPU, APIC
INT_VECTORED, INT_NMI, INT_EXTINT = 0, 1, 3
POLARITY = {HIGH: 1, "low": 3}
TRIGGER = {EDGE: 1, LEVEL: 3}
ALL_LAPICS = 0xFF
BUS_PCI, BUS_ISA = b"PCI   ", b"ISA   "


def _flags(trigger: str, polarity: str) -> int:
    return POLARITY[polarity] | (TRIGGER[trigger] << 2)


def bus_ids(machine: MachineDescription) -> dict[bytes, int]:
    """PCI bus ids must equal PCI bus numbers (MP spec 4.3.2): PCI bus 0 is id 0, ISA comes after."""
    return {BUS_PCI: 0, BUS_ISA: 1} if machine.has_pci else {BUS_ISA: 0}


def entries(machine: MachineDescription) -> list[bytes]:
    out = []
    for i, cpu in enumerate(machine.cpus):
        flags = (CPU_ENABLED if cpu.enabled else 0) | (CPU_BOOTSTRAP if i == 0 else 0)
        out.append(struct.pack("<BBBBII8x", ENTRY_PROCESSOR, cpu.apic_id, LAPIC_VERSION, flags, CPU_SIGNATURE,
                               CPU_FEATURES))
    buses = bus_ids(machine)
    for name, bus_id in sorted(buses.items(), key=lambda kv: kv[1]):
        out.append(struct.pack("<BB6s", ENTRY_BUS, bus_id, name))
    io = machine.ioapic
    out.append(struct.pack("<BBBBI", ENTRY_IOAPIC, io.apic_id, IOAPIC_VERSION, IOAPIC_ENABLED, io.address))
    for route in machine.isa_routes():
        out.append(struct.pack("<BBHBBBB", ENTRY_IO_INTERRUPT, INT_VECTORED, _flags(route.trigger, route.polarity),
                               buses[BUS_ISA], route.isa_irq, io.apic_id, route.gsi - io.gsi_base))
    for dev in sorted({(d.slot, d.pin, d.gsi) for d in machine.pci if d.gsi is not None}):
        slot, pin, gsi = dev
        # Source bus IRQ for PCI: device number in bits 6:2, INTx pin (0 = INTA#) in bits 1:0.
        out.append(struct.pack("<BBHBBBB", ENTRY_IO_INTERRUPT, INT_VECTORED, _flags(LEVEL, HIGH), buses[BUS_PCI],
                               (slot << 2) | (pin - 1), io.apic_id, gsi - io.gsi_base))
    if machine.pic_present:
        out.append(struct.pack("<BBHBBBB", ENTRY_LOCAL_INTERRUPT, INT_EXTINT, 0, buses[BUS_ISA], 0, ALL_LAPICS, 0))
    out.append(struct.pack("<BBHBBBB", ENTRY_LOCAL_INTERRUPT, INT_NMI, 0, buses[BUS_ISA], 0, ALL_LAPICS, 1))
    return out


def config_table(machine: MachineDescription) -> bytes:
    body = b"".join(entries(machine))
    count = len(entries(machine))
    raw = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", HEADER_SIZE + len(body), SPEC_REVISION, 0, OEM_ID,
                                PRODUCT_ID, 0, 0, count, machine.lapic_address, 0, 0, 0) + body)
    raw[7] = checksum(raw)
    return bytes(raw)


def floating_pointer(config_address: int) -> bytes:
    raw = bytearray(struct.pack("<4sIBBB5s", b"_MP_", config_address, 1, SPEC_REVISION, 0, b"\0" * 5))
    raw[10] = checksum(raw)
    return bytes(raw)


def build(machine: MachineDescription, base: int = layout.MPTABLE_ADDR) -> dict[int, bytes]:
    """{address: bytes}: the floating pointer at `base`, the configuration table right after it."""
    table = config_table(machine)
    if FLOATING_SIZE + len(table) > layout.MPTABLE_MAX:
        raise ValueError(f"MP table of {len(table)} bytes does not fit the {layout.MPTABLE_MAX}-byte EBDA area")
    return {base: floating_pointer(base + FLOATING_SIZE), base + FLOATING_SIZE: table}
