"""Conformance fixtures: the tables as NetBSD's, OpenBSD's and FreeBSD's consumers read them
(bsd_consumers.py says which code each reader follows), and the seed's NetBSD PCI-bridge case."""
import re

import pytest

from harness import layout
from harness.boot.bda import write_bda
from harness.devices.pci import PciHost
from harness.firmware import FirmwareOptions, acpi, install, machine
from harness.memory import GuestRam

from acpica import acpiexec_run
from bsd_consumers import (Refused, acpica_root_tables, freebsd_madt, openbsd_acpi_attach,
                           openbsd_mpbios)


def guest_ram(desc, options=FirmwareOptions()):
    ram = GuestRam(64 * layout.MiB)
    write_bda(ram)
    return ram, install(ram, desc, options)


@pytest.mark.parametrize("vcpus", [1, 2])
def test_netbsd_acpica_finds_rsdp_and_every_table(vcpus):
    ram, fw = guest_ram(machine.describe(vcpus))
    view = acpica_root_tables(ram)
    assert view.rsdp == fw.rsdp_address and view.root == "XSDT"
    assert set(view.tables) == {"FACP", "APIC", "DSDT"}


def test_openbsd_acpi_attach_accepts_the_tables_and_wants_fadt_and_dsdt():
    openbsd_acpi_attach(guest_ram(machine.describe(2))[0])
    with pytest.raises(Refused, match="no FADT"):
        openbsd_acpi_attach(guest_ram(machine.describe(2), FirmwareOptions(acpi_omit=("fadt",)))[0])


@pytest.mark.parametrize("pci", [False, True])
def test_openbsd_mpbios_sees_cpus_ioapic_and_every_line(pci):
    desc = machine.describe(2, pci=[machine.PciDevice(1), machine.PciDevice(2)] if pci else [])
    ram, _ = guest_ram(desc, FirmwareOptions(acpi=False))
    mp = openbsd_mpbios(ram)
    assert [p["apic_id"] for p in mp.processors] == [0, 1] and mp.processors[0]["bsp"]
    assert mp.ioapics == {desc.ioapic.apic_id: layout.IOAPIC_ADDR}
    isa = {b for b, name in mp.buses.items() if name == "ISA"}
    assert {i["bus_irq"] for i in mp.interrupts if i["bus"] in isa} == set(range(16)) - {2}
    pci_lines = [i for i in mp.interrupts if mp.buses[i["bus"]] == "PCI"]
    assert [(i["bus_irq"] >> 2, i["pin"]) for i in pci_lines] == ([(1, 17), (2, 18)] if pci else [])
    assert all(i["trigger"] == 3 and i["polarity"] == 1 for i in pci_lines)    # level, active high (KVM)
    assert {(i["type"], i["pin"]) for i in mp.local_interrupts} == {(3, 0), (1, 1)}   # ExtINT LINT0, NMI LINT1


def test_freebsd_madt_cpus_ioapic_and_overrides_agree_with_the_mp_table():
    desc = machine.describe(2)
    ram, _ = guest_ram(desc)
    madt = freebsd_madt(ram)
    mp = openbsd_mpbios(ram)
    assert madt.lapics == [p["apic_id"] for p in mp.processors]
    assert set(madt.ioapics) == set(mp.ioapics)
    for src, (gsi, _) in madt.overrides.items():       # one routing, two tables
        (line,) = [i for i in mp.interrupts if i["bus_irq"] == src]
        assert line["pin"] == gsi
    assert madt.nmi_all_cpus


def test_corrupt_madt_entry_is_what_freebsd_panics_on():
    """The reader really checks: a zero-length subtable is refused as madt.c would panic."""
    ram, fw = guest_ram(machine.describe(1))
    addr = fw.tables["APIC"]
    ram.write(addr + 45, b"\x00")                       # first subtable's length
    raw = bytearray(ram.read(addr, 36))
    ram.write(addr + 9, bytes([(raw[9] + 8) & 0xFF]))   # keep the checksum right: 8 -> 0 in the length byte
    with pytest.raises(Refused, match="corrupt"):
        freebsd_madt(ram)


def test_netbsd_pci_bridge_only_with_a_device_behind_it(acpiexec, tmp_path):
    """Seed 000: NetBSD crashed probing a PCI host bridge the DSDT announced but the VM lacked.
    ACPICA evaluates our DSDT; every PCI device its _PRT routes must answer config reads."""
    assert not machine.describe(1).has_pci
    out = acpiexec_run(acpiexec, acpi.dsdt(machine.describe(1)), tmp_path, ["namespace"])
    assert "PCI0" not in out
    from harness.devices.virtio import VirtioSetup, attach
    from harness.devices import build_x86_devices
    from harness.devices.context import DeviceContext
    ctx = DeviceContext(set_irq=lambda gsi, level: None, emit=lambda event: None)
    ram = GuestRam(16 * layout.MiB)
    devs = build_x86_devices(ctx, lambda b: None)
    attach(devs, ctx, ram, VirtioSetup(devices=["rng", "console"], transport="pci"))
    desc = machine.describe(1, pci=devs.pci_descriptions())
    out = acpiexec_run(acpiexec, acpi.dsdt(desc), tmp_path, ["evaluate \\_SB.PCI0._PRT", "evaluate \\_SB.PCI0._BBN"])
    slots = [int(m, 16) >> 16 for m in re.findall(r"\[Integer\] = ([0-9A-F]{16})\n\s+\[Integer\] = 0{16}\n\s+"
                                                   r"\[Object Reference\]", out)]
    assert slots == [1, 2]
    host: PciHost = devs.pci
    for slot in [0] + slots:
        host.write(0, 4, 0x8000_0000 | slot << 11)
        assert host.read(4, 2) == (0x8086 if slot == 0 else 0x1AF4)
