"""The aarch64 lab: qemu-system-aarch64 TCG with EL2, Debian's arm64 KVM inside, our VMM child on it.

Slow: the matrix's own cells, run through the runner. fixture-arm64 takes ~35-60 s (lab start
included), linux-arm64 ~3 min (every PL011 byte is an MMIO exit to the Python VMM under nested
TCG; 88 s lightly loaded, 176 s during the whole suite; virtio ~2.5 min). One lab at a time (the pool is closed after each test).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.model.rundir import RunDir
from harness.runner.execute import RunOptions, run_cell
from harness.runner.guestfile import load_guests
from harness.runner.matrix import find_cell, load_matrix

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.qemu,
              pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="qemu-system-aarch64 absent")]


def _matrix_cell(cell_id: str):
    guests = load_guests(REPO / "guests")
    return find_cell(load_matrix(REPO / "matrix.yaml", guests).cells(guests, "nightly"), cell_id)


def test_fixture_arm64_proves_handoff_psci_timer_and_pl011_on_builtin_in_the_lab(tmp_path: Path):
    result = run_cell(_matrix_cell("fixture-arm64@builtin+lab/"), RunOptions(run_dir=tmp_path, offline=False))
    assert result.outcome == "pass", result.reason
    assert [m.name for m in result.milestones] == ["entry", "handoff", "timer-irq", "pl011-modes", "probes", "login"]
    assert result.host["host"] == "lab" and result.host["lab"]["lab_kernel"].endswith("-arm64")
    summary = json.loads((RunDir(tmp_path).workdir(result.cell_id) / "summary.json").read_text())
    assert summary["extra"]["imports_in_child"] == [], "the agent forks its children warm (harness.backends.vmm_warm)"
    # coalesce_serial: polled follows the TX interrupt's mask: its interrupt-driven probe unmasks
    # TXIM (every DR write exits, one interrupt per byte) and masks it again
    assert summary["extra"]["serial_mode"] == "polled" and summary["extra"]["serial_batch_toggles"] == 2
    assert b"PROBE pl011-tx-irq: 27 interrupts for 27 bytes" in (tmp_path / result.console_log).read_bytes()


def test_linux_arm64_reaches_login_on_builtin_in_the_lab(tmp_path: Path):
    result = run_cell(_matrix_cell("linux-arm64@builtin+lab/"), RunOptions(run_dir=tmp_path, offline=False))
    assert result.outcome == "pass", result.reason
    assert [m.name for m in result.milestones] == ["kernel", "userspace", "login"]
    console = (tmp_path / result.console_log).read_bytes()
    assert b"Machine model: harness aarch64 VM" in console        # our generated DTB
    assert console.index(b"Linux version") < console.index(b"Run /init") < console.rindex(b"login:")
    assert b"nosoftlockup" in console                # the matrix's override reached the kernel


def test_virtio_mmio_devices_from_the_dtb_serve_debian_arm64_in_the_lab(tmp_path: Path):
    """blk, console, rng behind virtio-mmio: the kernel probes them from the generated DTB, the guest
    reads its disk, its hwrng and writes hvc0 (its commands check each); ~2.5 min."""
    result = run_cell(_matrix_cell("linux-arm64-virtio@builtin+lab/"), RunOptions(run_dir=tmp_path, offline=False))
    assert result.outcome == "pass", result.reason
    assert [m.name for m in result.milestones] == ["kernel", "userspace", "virtio-blk", "login"]
    assert len(result.commands) == 6 and not [g for g in result.gaps if g["kind"].startswith("virtio")]
    hvc = (tmp_path / result.console_log).parent / "console-hvc0.log"
    assert b"harness-hvc0" in hvc.read_bytes()
