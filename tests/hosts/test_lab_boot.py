"""The real lab: QEMU TCG with emulated SVM, kvm_amd inside, our VMM child on it.

Slow: each test boots a lab (about 10 s on an idle 2-core machine of this project's kind, up to a
minute under load) and the Linux test boots Debian's kernel to `login:` on the built-in VMM in
it (about 60 s idle). One lab runs at a time (the module fixture closes each).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from harness.assets.lab import lab_params
from harness.hosts import pool
from harness.hosts.lab import Lab, LabError
from harness.kvm.machine import XSETBV_NOT_SEEN
from harness.runner.execute import RunOptions, run_cell
from harness.runner.guestfile import load_guest
from harness.runner.matrix import Cell

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.qemu,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 absent")]


def _lab_cell(guest_name: str, *, retries: int = 0, scale: float = 5.0) -> Cell:
    guest = load_guest(REPO / "guests" / f"{guest_name}.yaml")
    return Cell(guest, "builtin", "default", "emulate", guest.vcpus, guest.memory, "quick", timeout_scale=scale,
                retries=retries, host="lab")


def test_a_qemu_cpu_without_svm_is_one_error_naming_the_fix():
    params = dataclasses.replace(lab_params("x86_64"), cpu="max,-svm")
    with pytest.raises(LabError) as exc:
        Lab(params).start()
    assert "no svm flag" in exc.value.problem and "-cpu max" in exc.value.fix


def test_a_lab_that_is_not_up_in_time_is_one_error_and_leaves_no_qemu():
    lab = Lab(lab_params("x86_64"))
    with pytest.raises(LabError) as exc:
        lab.start(timeout_s=0.5)
    assert "in time" in exc.value.problem and "HARNESS_TIMEOUT_SCALE" in exc.value.fix
    assert lab.proc is not None and lab.proc.poll() is not None


def test_a_missing_share_is_one_error(monkeypatch, tmp_path: Path):
    import harness.hosts.lab as lab_mod
    real = lab_mod.lab_shares
    monkeypatch.setattr(lab_mod, "lab_shares",
                        lambda inbox, params=None: real(inbox, params) + [lab_mod.Share("gone", tmp_path / "absent", "/lab/gone")])
    with pytest.raises(LabError) as exc:
        Lab(lab_params("x86_64")).start()
    assert "'gone' share" in exc.value.problem and "missing" in exc.value.problem


def test_real_linux_reaches_login_on_the_builtin_vmm_in_the_lab(tmp_path: Path):
    cell = _lab_cell("linux-amd64-pvh")
    result = run_cell(cell, RunOptions(run_dir=tmp_path, offline=False))
    assert result.outcome == "pass", result.reason
    assert [m.name for m in result.milestones] == ["kernel", "userspace", "login"]
    times = [m.t for m in result.milestones]
    assert times == sorted(times) and times[0] > 0
    assert result.host["host"] == "lab" and result.host["kvm_module"] == "kvm_amd"
    lab = result.host["lab"]
    assert lab["kind"] == "kvm_amd nested in QEMU TCG" and lab["lab_kernel"].endswith("-amd64")
    assert result.host["clock_rtt_s"] < 1.0
    console = (tmp_path / result.console_log).read_bytes()
    assert console.index(b"Linux version") < console.index(b"Run /init") < console.rindex(b"login:")
    assert "@builtin+lab/" in result.cell_id
    # The lab's KVM never sees a guest's XSETBV (QEMU TCG's SVM): the agent's probe finds it, the
    # VMM presets XCR0, and Linux's XSAVE sizes agree (before: "size 2696 != kernel_size 576").
    assert lab["quirk_probe"] == "ok" and lab["quirks"] == [XSETBV_NOT_SEEN], lab
    assert XSETBV_NOT_SEEN in result.host["workarounds"]
    assert b"XSAVE consistency problem" not in console


def _child_summary(run_dir: Path, result) -> dict:
    import json
    from harness.model.rundir import RunDir
    return json.loads((RunDir(run_dir).workdir(result.cell_id) / "summary.json").read_text())


def test_warm_lab_serves_cells_in_turn_and_a_wedged_lab_is_replaced(tmp_path: Path, monkeypatch):
    import harness.hosts.lab as lab_mod
    first = run_cell(_lab_cell("fixture-pvh"), RunOptions(run_dir=tmp_path / "a"))
    assert first.outcome == "pass", first.reason
    lab = pool.running()["x86_64"]
    second = run_cell(_lab_cell("fixture-pvh"), RunOptions(run_dir=tmp_path / "b"))
    assert second.outcome == "pass", second.reason
    assert pool.running()["x86_64"] is lab and second.host["lab"]["cells_served"] == 2
    assert _child_summary(tmp_path / "b", second)["extra"]["imports_in_child"] == [], \
        "the agent forks its children warm (harness.backends.vmm_warm)"

    # Wedge the lab (freeze its QEMU) while the fixture that never ends runs in it.
    monkeypatch.setattr(lab_mod, "WEDGE_S", 3.0)
    hang = _lab_cell("fixture-hang", retries=0, scale=20.0)
    frozen = []

    def freeze_when_started(info: dict) -> None:
        if info.get("elapsed", 0) > 0.5 and not frozen:
            os.killpg(lab.proc.pid, signal.SIGSTOP)
            frozen.append(time.monotonic())

    t = time.monotonic()
    wedged = run_cell(hang, RunOptions(run_dir=tmp_path / "c", progress=freeze_when_started))
    assert frozen, "the cell never reported progress"
    assert wedged.outcome == "error" and "wedged" in wedged.reason, wedged.reason
    assert time.monotonic() - t < 120                      # never a hang
    assert lab.proc.poll() is not None                     # the wedged lab was killed
    third = run_cell(_lab_cell("fixture-pvh"), RunOptions(run_dir=tmp_path / "d"))
    assert third.outcome == "pass", third.reason
    assert pool.running()["x86_64"] is not lab
