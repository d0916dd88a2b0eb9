"""Linux on the built-in hypervisor finds its CPUs and IOAPIC in our ACPI tables and brings up
the second vCPU by INIT/SIPI (the boot log is the evidence). Slow: on a hardware KVM host seconds;
on kvm_pvm (software emulation) 10-20 minutes wall on a loaded 2-core machine (measured: ~17 min
at load 8), so it is marked slow; the cell ends as soon as the last milestone matches.""" 
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from runner_repo import REPO

from harness.runner.execute import RunOptions, run_cell
from harness.runner.guestfile import Milestone, load_guest
from harness.runner.matrix import Cell

pytestmark = [pytest.mark.slow, pytest.mark.kvm,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                 reason="/dev/kvm absent or not accessible: built-in backend cannot run")]

ACPI_MILESTONES = [
    Milestone("kernel", r"Linux version \d", 1800),
    Milestone("rsdp", r"ACPI: RSDP 0x00000000000E0000 .*HARNES", 60),
    Milestone("madt", r"ACPI: APIC 0x[0-9A-F]+ .*HARNES", 60),
    Milestone("ioapic", r"IOAPIC\[0\]: apic_id 0, version 17, address 0xfec00000, GSI 0-23", 120),
    Milestone("madt-smp", r"Using ACPI \(MADT\) for SMP configuration information", 60),
    Milestone("cpus", r"smpboot: Allowing 2 CPUs", 60),
    Milestone("ap-online", r"smp: Brought up 1 node, 2 CPUs", 1800),
]


def test_linux_reads_our_acpi_tables_and_brings_up_two_cpus(tmp_path: Path):
    guest = load_guest(REPO / "guests" / "linux-amd64-bzimage.yaml")
    # The milestones end at the second CPU: no login or after-the-prompt commands (minutes more here).
    guest = dataclasses.replace(guest, milestones=ACPI_MILESTONES, cmdline=guest.cmdline + " nosmap",
                                hang_timeout=1800, auto_login=None, commands=[])
    cell = Cell(guest, "builtin", "pvm-safe", "emulate", 2, 256, "nightly", timeout_scale=1, retries=0)
    result = run_cell(cell, RunOptions(run_dir=tmp_path, offline=False))
    assert result.outcome == "pass", f"{result.outcome}: {result.reason}"
