"""Every ACPI table the built-in VMM writes, checked by ACPICA (iasl -d, acpiexec)."""
import struct

import pytest

from harness import layout
from harness.firmware import FirmwareOptions, acpi, install, machine
from harness.memory import GuestRam

from acpica import acpiexec_run, disassemble

MACHINES = {
    "1cpu-legacy": lambda: machine.describe(1),
    "2cpu-mmio": lambda: machine.describe(2, mmio=[machine.MmioDevice(0xD000_0000, 0x200, 20, "blk"),
                                                   machine.MmioDevice(0xD000_1000, 0x200, 21, "console")]),
    "2cpu-pci": lambda: machine.describe(2, pci=[machine.PciDevice(1, kind="blk"), machine.PciDevice(2, kind="rng"),
                                                 machine.PciDevice(6, kind="console")], second_uart=True),
}


@pytest.fixture(params=sorted(MACHINES))
def desc(request):
    return MACHINES[request.param]()


def test_every_table_disassembles_cleanly(iasl, tmp_path, desc):
    """(iasl 20200925 refuses a bare RSDP file: its signature "RSD " is not a name segment; the
    RSDP is checked by the consumer fixtures in test_consumers.py instead.)"""
    tables = acpi.build(desc)
    for name, addr in tables.names.items():
        if name == "RSDP":
            continue
        dsl = disassemble(iasl, tables.blobs[addr], tmp_path, name.lower())
        assert f'"{name}"' in dsl, dsl[:600]


def test_madt_lists_each_cpu_and_the_ioapic(iasl, tmp_path, desc):
    dsl = disassemble(iasl, acpi.madt(desc), tmp_path, "apic")
    assert dsl.count("[Processor Local APIC]") == len(desc.cpus)
    assert dsl.count("[I/O APIC]") == 1
    assert f"I/O Apic ID : {desc.ioapic.apic_id:02X}" in dsl
    for ovr in desc.overrides():
        assert f"Source : {ovr.isa_irq:02X}" in dsl


def test_fadt_is_hardware_reduced_with_the_reset_port(iasl, tmp_path, desc):
    dsl = disassemble(iasl, acpi.fadt(desc, 0xE1000), tmp_path, "facp")
    assert "Hardware Reduced (V5) : 1" in dsl
    assert "Reset Register Supported (V2) : 1" in dsl
    assert "Address : 0000000000000CF9" in dsl
    assert "DSDT Address : 000E1000" in dsl
    control = dsl.split("Sleep Control Register")[1][:600]
    assert "Space ID : 01 [SystemIO]" in control and f"Address : {layout.ACPI_SLEEP_CONTROL_PORT:016X}" in control


def test_dsdt_loads_in_acpiexec_and_resources_evaluate(acpiexec, tmp_path, desc):
    paths = ["\\_SB.COM1._CRS", "\\_SB.RTC._CRS", "\\_SB.KBD._CRS"]
    paths += [f"\\_SB.VR{i:02X}._CRS" for i in range(len(desc.mmio))]
    if desc.has_pci:
        paths += ["\\_SB.PCI0._CRS", "\\_SB.PCI0._PRT"]
    out = acpiexec_run(acpiexec, acpi.dsdt(desc), tmp_path, [f"evaluate {p}" for p in paths])
    for p in paths:
        assert f"Evaluation of {p} returned object" in out, out


def test_no_pci_host_bridge_without_a_pci_device(iasl, tmp_path):
    """Seed 000: NetBSD crashed on a DSDT announcing a PCI host bridge that was not there."""
    without = disassemble(iasl, acpi.dsdt(machine.describe(1)), tmp_path, "nopci")
    with_pci = disassemble(iasl, acpi.dsdt(machine.describe(1, pci=[machine.PciDevice(1)])), tmp_path, "pci")
    assert "PNP0A03" not in without and "PNP0C0F" not in without
    assert "PNP0A03" in with_pci


def test_xsdt_names_every_table(iasl, tmp_path):
    desc = MACHINES["2cpu-pci"]()
    tables = acpi.build(desc)
    xsdt_addr = struct.unpack_from("<Q", tables.blobs[tables.rsdp_address], 24)[0]
    assert xsdt_addr == tables.names["XSDT"]
    xsdt = disassemble(iasl, tables.blobs[xsdt_addr], tmp_path, "xsdt")
    for name in ("FACP", "APIC"):
        assert f"{tables.names[name]:016X}" in xsdt


@pytest.mark.parametrize("omit", [(), ("madt",), ("fadt",), ("dsdt",), ("fadt", "madt", "dsdt")])
def test_each_table_can_be_left_out(iasl, tmp_path, omit):
    ram = GuestRam(64 * layout.MiB)
    fw = install(ram, machine.describe(2), FirmwareOptions(acpi_omit=omit))
    present = set(fw.tables)
    for table, sig in (("madt", "APIC"), ("fadt", "FACP"), ("dsdt", "DSDT")):
        assert (sig in present) == (table not in omit)
    assert set(omit) <= set(fw.omitted)
    xsdt = ram.read(fw.tables["XSDT"], 36 + 8 * 4)
    length = struct.unpack_from("<I", xsdt, 4)[0]
    disassemble(iasl, ram.read(fw.tables["XSDT"], length), tmp_path, "xsdt")


def test_acpi_and_mptable_off(tmp_path):
    ram = GuestRam(64 * layout.MiB)
    fw = install(ram, machine.describe(1), FirmwareOptions(acpi=False, mptable=False))
    assert fw.rsdp_address is None and fw.tables == {}
    assert {"acpi", "mptable"} <= set(fw.omitted)
    assert ram.read(layout.ACPI_RSDP_ADDR, 8) == bytes(8)
    assert ram.read(layout.MPTABLE_ADDR, 4) == bytes(4)


def test_tables_stay_inside_the_reserved_bios_area():
    ram = GuestRam(64 * layout.MiB)
    fw = install(ram, MACHINES["2cpu-pci"](), FirmwareOptions())
    reserved = [(a, a + s) for a, s, t in layout.e820_map(ram.size) if t == layout.E820_RESERVED]
    for name, gpa, size in fw.regions:
        assert any(lo <= gpa and gpa + size <= hi for lo, hi in reserved), (name, hex(gpa))


def test_boot_cli_options_parse_as_yaml_and_refuse_unknown_keys():
    from harness.cli.boot_cmd import builtin_options
    from harness.errors import ConfigError
    assert builtin_options(["acpi=false", "virtio_devices=[blk, rng]", "acpi_omit=[madt]"]) == {
        "acpi": False, "virtio_devices": ["blk", "rng"], "acpi_omit": ["madt"]}
    with pytest.raises(ConfigError, match="bad --option"):
        builtin_options(["no_such_key=1"])
