"""The built-in VMM child assembles firmware, virtio devices and the loader consistently:
the RSDP the bzImage handoff carries is the one in RAM, the DSDT (read back from guest RAM and
loaded by acpiexec) names the PCI functions actually on the bus, and a table turned off is a gap."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from builders import fake_bzimage
from harness import layout
from harness.backends.builtin_vm import ChildVm
from harness.boot.bzimage import BP_ACPI_RSDP_ADDR
from harness.model import events as ev
from harness.model.session import BootRequest

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                                  reason="needs a usable /dev/kvm")]


def child(tmp_path, **options):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(fake_bzimage())
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    req = BootRequest(cell_id="t", guest="t", family="linux", arch="x86_64", boot="bzimage", kernel=kernel,
                      disk=disk, cmdline="console=ttyS0", memory_mib=64, vcpus=2, workdir=tmp_path,
                      options={"virtio_devices": ["blk", "rng"], **options})
    vm = ChildVm(req, ev.EventWriter(tmp_path / "events.jsonl"))
    vm.build()
    return vm


def table_at(ram, addr):
    return ram.read(addr, struct.unpack("<I", ram.read(addr + 4, 4))[0])


def test_handoff_rsdp_tables_and_devices_agree(tmp_path):
    vm = child(tmp_path)
    try:
        ram = vm.ram
        rsdp = ram.read_u64(layout.ZERO_PAGE_ADDR + BP_ACPI_RSDP_ADDR)
        assert rsdp == layout.ACPI_RSDP_ADDR and ram.read(rsdp, 8) == b"RSD PTR "
        tables = vm.boot_info["firmware"]["tables"]
        assert set(tables) == {"RSDP", "XSDT", "FACP", "APIC", "DSDT", "MP"}
        dsdt = table_at(ram, int(tables["DSDT"], 16))
        acpiexec = shutil.which("acpiexec")
        if acpiexec:
            (tmp_path / "dsdt.aml").write_bytes(dsdt)
            out = subprocess.run([acpiexec, "-b", "evaluate \\_SB.PCI0._PRT", str(tmp_path / "dsdt.aml")],
                                 capture_output=True, text=True, timeout=60).stdout
            assert out.count("Name LNK") == 2                       # slots 1 and 2: blk, rng
        assert [p.slot for p in vm.devices.pci_descriptions()] == [1, 2]
        madt, pos, lapics = table_at(ram, int(tables["APIC"], 16)), 44, []
        while pos < len(madt):
            if madt[pos] == 0:
                lapics.append(madt[pos + 3])
            pos += madt[pos + 1]
        assert lapics == [0, 1]                                     # one per vCPU
    finally:
        vm.close()


def test_a_table_turned_off_is_a_gap(tmp_path):
    vm = child(tmp_path, acpi_omit=["madt"], mptable=False)
    try:
        missing = {g.key for g in vm.machine.gaps.records() if g.kind == "firmware-table-missing"}
        assert missing == {"madt", "mptable"}
        assert "APIC" not in vm.boot_info["firmware"]["tables"]
    finally:
        vm.close()
