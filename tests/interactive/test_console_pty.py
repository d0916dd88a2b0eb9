"""The interactive console and `harness attach`, through a pty (pexpect), as a user at a terminal.

- typed input reaches a busybox shell on QEMU TCG (Debian cloud kernel + busybox initramfs) and its
  answer comes back; Ctrl-] detaches; the terminal's settings (stty -g) are as before. ~25 s here.
- on the built-in backend, Ctrl-] before the last milestone stops the guest: the milestones reached
  and the reason are recorded, the terminal is restored. ~5 s.
- `harness attach` follows a running cell's console until the cell ends. ~8 s.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

REPO = Path(__file__).resolve().parents[2]
KVM_OK = os.access("/dev/kvm", os.R_OK | os.W_OK)
HARNESS = [sys.executable, "-m", "harness"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def in_terminal(tmp_path: Path, argv: list[str]) -> pexpect.spawn:
    """bash in a pty: save the terminal settings, run harness, say its exit code, save them again."""
    script = (f"stty -g > {tmp_path}/before; {shlex.join(HARNESS + argv)}; echo HARNESS-RC=$?; "
              f"stty -g > {tmp_path}/after")
    return pexpect.spawn("bash", ["--norc", "-c", script], cwd=str(tmp_path), env=ENV, encoding="utf-8",
                         timeout=120, dimensions=(40, 200))


def finish(p: pexpect.spawn, tmp_path: Path) -> int:
    p.expect(r"HARNESS-RC=(\d+)")
    code = int(p.match.group(1))
    p.expect(pexpect.EOF)
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text(), "terminal not restored"
    return code


def result_of(run_dir: Path) -> dict:
    (path,) = (run_dir / "cells").glob("*.json")
    return json.loads(path.read_text())


def cached(name: str) -> Path | None:
    from harness.assets.cache import AssetCache
    entry = AssetCache().verify(name, full=False)
    return entry.path if entry else None


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")
def test_typed_input_reaches_the_guest_shell_and_its_answer_comes_back(tmp_path: Path):
    kernel, initrd = cached("debian-cloud-kernel-amd64-vmlinux"), cached("busybox-initramfs-amd64")
    if kernel is None or initrd is None:
        pytest.skip("assets not built: harness assets build debian-cloud-kernel-amd64-vmlinux busybox-initramfs-amd64")
    p = in_terminal(tmp_path, ["boot", str(kernel), "--initrd", str(initrd), "--backend", "qemu-tcg", "--boot", "pvh",
                               "--cmdline", "console=ttyS0", "--family", "linux", "--expect", "login:",
                               "--timeout", "90", "--interactive", "--report-dir", str(tmp_path / "run")])
    p.expect(r"Ctrl-\] detaches")
    p.expect("login:")
    time.sleep(0.5)
    p.send("root\r")
    p.expect("# ")
    p.send("echo $((6*7)) answer\r")
    p.expect(r"\r\n42 answer")           # the shell's answer, not the echo of what was typed
    p.send("\x1d")
    p.expect(r"\[detached\]")
    assert finish(p, tmp_path) == 0      # login was reached before the detach: pass
    result = result_of(tmp_path / "run")
    assert result["outcome"] == "pass" and [m["name"] for m in result["milestones"]] == ["expect1"]
    log = (tmp_path / "run" / result["console_log"]).read_bytes()
    assert b"42 answer" in log           # the whole session is in the console log


@pytest.mark.kvm
@pytest.mark.skipif(not KVM_OK, reason="/dev/kvm absent or not accessible: built-in backend cannot run")
def test_the_escape_stops_the_guest_records_what_was_reached_and_restores_the_terminal(tmp_path: Path):
    from harness.assets.fixtures import build_fixture
    kernel = build_fixture("fixture-pvh")
    p = in_terminal(tmp_path, ["boot", str(kernel), "--boot", "pvh", "--family", "fixture",
                               "--cmdline", "console=ttyS0 fixture.sleep=probes:20000",
                               "--expect", "fixture: entry", "--expect", "fixture: handoff ok",
                               "--expect", "fixture login: ", "--timeout", "60", "--interactive",
                               "--report-dir", str(tmp_path / "run")])
    p.expect("fixture: handoff ok")
    p.send("\x1d")
    p.expect(r"\[detached\]")
    started = time.monotonic()
    code = finish(p, tmp_path)
    assert time.monotonic() - started < 15, "the guest was stopped, not waited for"
    assert code == 1
    result = result_of(tmp_path / "run")
    assert [m["name"] for m in result["milestones"]] == ["expect1", "expect2"]
    assert "detached from the interactive console while waiting for milestone 'expect3'" in result["reason"]
    assert result["gaps"], "gaps seen before the detach are recorded"


@pytest.mark.kvm
@pytest.mark.skipif(not KVM_OK, reason="/dev/kvm absent or not accessible: built-in backend cannot run")
def test_attach_follows_a_running_cell_until_it_ends(tmp_path: Path):
    from harness.assets.fixtures import build_fixture
    kernel = build_fixture("fixture-pvh")
    run_dir = tmp_path / "run"
    boot = subprocess.Popen(HARNESS + ["boot", str(kernel), "--boot", "pvh", "--cmdline",
                                       "console=ttyS0 fixture.sleep=probes:3000", "--expect", "fixture login: ",
                                       "--timeout", "30", "--quiet", "--report-dir", str(run_dir)],
                            env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not list(run_dir.glob("cells/*/console.log")) and time.monotonic() < deadline:
            time.sleep(0.05)
        p = pexpect.spawn(HARNESS[0], HARNESS[1:] + ["attach", str(run_dir), "fixture-pvh"], env=ENV,
                          encoding="utf-8", timeout=60)
        p.expect(r"\[attached to fixture-pvh")
        p.expect("fixture: slept 3000 ms")    # printed while attach is already following
        assert boot.poll() is None, "attach was following a cell that still ran"
        p.expect("fixture login: ")
        p.expect(r"\[fixture-pvh\S+: pass\]")
        p.expect(pexpect.EOF)
        p.close()
        assert p.exitstatus == 0
    finally:
        boot.wait(60)
