"""The Debian cloud kernel (PVH) on the built-in hypervisor, through a runner cell.

On a hardware KVM host it reaches `login:`. On a host whose KVM emulates guest ring 0 in software
(kvm_pvm) the run must end, within its timeout, in a structured host-emulation-failure gap: the
decoded instruction, registers, the last milestone and the flight recorder - never a hang. Rescues
are off here so the run stops at the first instruction the host cannot emulate (a minute, not ten).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runner_repo import REPO

from harness.runner.execute import RunOptions, run_cell
from harness.runner.guestfile import load_guest
from harness.runner.matrix import Cell

pytestmark = [pytest.mark.slow, pytest.mark.kvm,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                 reason="/dev/kvm absent or not accessible: built-in backend cannot run")]


def test_debian_pvh_kernel_reaches_login_or_ends_in_a_structured_gap(tmp_path: Path):
    guest = load_guest(REPO / "guests" / "linux-amd64-pvh.yaml")
    guest.builtin = {"rescue": False}
    cell = Cell(guest, "builtin", "pvm-safe", "emulate", 1, 256, "nightly", timeout_scale=4, retries=0)
    start = time.monotonic()
    result = run_cell(cell, RunOptions(run_dir=tmp_path, offline=False))   # builds the assets if absent
    elapsed = time.monotonic() - start
    budget = sum(m.timeout for m in guest.milestones) * cell.timeout_scale
    assert elapsed < budget + 30
    if result.host.get("hardware_backed"):
        assert result.outcome == "pass", result.reason
        return
    assert result.outcome == "gap", f"{result.outcome}: {result.reason}"
    assert "host emulation failure" in result.reason and "last milestone" in result.reason
    (failure,) = [g for g in result.gaps if g["kind"] == "host-emulation-failure"]
    assert failure["fate"] == "stopped" and failure["first_rip"]
    assert failure["detail"]["insn"].split()[0] == failure["key"]           # decoded by capstone
    assert "rip" in str(failure["detail"]).lower()                           # registers are kept
    assert 0 < len(result.flight_recorder) <= 256
    assert result.host.get("kvm_module")
