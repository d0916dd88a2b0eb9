"""Firmware tables for the built-in VMM: ACPI and the MP table, from one MachineDescription.

    machine = describe(vcpus=2, mmio=[...], pci=[...])
    fw = install(ram, machine, FirmwareOptions.from_guest(options))
    fw.rsdp_address   -> for the boot handoffs that carry it (bzImage boot_params, PVH start_info)
    fw.regions        -> (name, gpa, size) of every table written

Lives on the devices/boot floor: imports only layout, memory and errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness import layout
from harness.errors import ConfigError
from harness.firmware import acpi, mptable
from harness.firmware.machine import MachineDescription, describe

__all__ = ["FirmwareOptions", "InstalledFirmware", "MachineDescription", "describe", "install"]


@dataclass(frozen=True)
class FirmwareOptions:
    """Which tables the guest gets (guest file `builtin:` keys acpi, mptable, acpi_omit)."""
    acpi: bool = True
    mptable: bool = True
    acpi_omit: tuple[str, ...] = ()
    watch: bool = False               # tables in an MMIO window, so every read the guest makes is seen

    @classmethod
    def from_guest(cls, options: dict[str, Any] | None) -> "FirmwareOptions":
        opts = options or {}
        omit = opts.get("acpi_omit", []) or []
        if isinstance(omit, str):
            omit = [omit]
        bad = sorted(set(omit) - set(acpi.TABLES))
        if bad:
            raise ConfigError(f"builtin option acpi_omit names unknown tables {bad}",
                              f"use some of: {', '.join(acpi.TABLES)}")
        return cls(acpi=bool(opts.get("acpi", True)), mptable=bool(opts.get("mptable", True)),
                   acpi_omit=tuple(omit), watch=bool(opts.get("acpi_watch", False)))


@dataclass
class InstalledFirmware:
    rsdp_address: int | None
    tables: dict[str, int] = field(default_factory=dict)      # "RSDP", "XSDT", "APIC", ..., "MP" -> gpa
    regions: list[tuple[str, int, int]] = field(default_factory=list)
    omitted: list[str] = field(default_factory=list)           # tables a guest may look for and not find
    watched: dict[int, bytes] = field(default_factory=dict)    # blobs for an MMIO table window (watch)

    def info(self) -> dict[str, Any]:
        return {"rsdp": self.rsdp_address, "tables": {k: hex(v) for k, v in self.tables.items()},
                "omitted": list(self.omitted)}


def install(ram: Any, machine: MachineDescription, options: FirmwareOptions = FirmwareOptions()) -> InstalledFirmware:
    """Write the tables `options` ask for into guest RAM (the reserved BIOS area and the EBDA)."""
    out = InstalledFirmware(rsdp_address=None)
    where = {"base": layout.ACPI_WATCH_ADDR, "end": layout.ACPI_WATCH_ADDR + layout.ACPI_WATCH_SIZE} \
        if options.watch else {}
    tables = acpi.build(machine, omit=options.acpi_omit, **where) if options.acpi else None
    if tables is None:
        out.omitted.append("acpi")
    else:
        for addr, blob in tables.blobs.items():
            if options.watch and addr != tables.rsdp_address:
                out.watched[addr] = blob          # the RSDP stays in RAM: guests find it by scanning
            else:
                ram.write(addr, blob)
        out.rsdp_address = tables.rsdp_address
        out.tables.update(tables.names)
        out.regions += tables.regions()
        out.omitted += [t for t in options.acpi_omit]
    if options.mptable:
        blobs = mptable.build(machine)
        for addr, blob in blobs.items():
            ram.write(addr, blob)
        base = min(blobs)
        out.tables["MP"] = base
        out.regions.append(("mptable", base, sum(len(b) for b in blobs.values())))
    else:
        out.omitted.append("mptable")
    return out
