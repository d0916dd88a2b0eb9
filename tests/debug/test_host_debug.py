"""What KVM guest debugging does on this host, measured on a scratch VM with a real-mode guest, and
the stub's protocol pieces. The host-dependent expectations name the host they hold for:

  kvm_pvm (this project's machines, measured 2026-12-01): single-step and DR0-DR3 execute
  breakpoints exit with KVM_EXIT_DEBUG as on hardware; an INT3 under KVM_GUESTDBG_USE_SW_BP ends
  KVM_RUN with an emulation failure instead; DR0-DR3 data (write) breakpoints never fire.
  VT-x / SVM: all four exit with KVM_EXIT_DEBUG (#BP for INT3, #DB for the rest).
"""
from __future__ import annotations

import pytest

from debug_support import KVM_OK
from harness.backends.debugopts import DebugOptions, parse_listen
from harness.errors import ConfigError
from harness.kvm.debugger import StopEvent
from harness.kvm.gdbstub import checksum, escape_binary, stop_reply, unescape_binary

# Real mode at 0x1000: mov ax, 0x1234 (3 bytes); nop; mov [0x800], ax (3 bytes); hlt
CODE = bytes.fromhex("b83412" "90" "a30008" "f4")
LOAD = 0x1000
# Long mode (rawboot long64, at rawboot.GUEST_LOAD): mov rax, 1 (7 bytes); nop; hlt. The INT3 goes on the nop,
# in 64-bit ring 0 as in a kernel: real-mode INT3 is a different path (delivered through the IVT).
CODE64 = bytes.fromhex("48c7c001000000" "90" "f4")

needs_kvm = pytest.mark.skipif(not KVM_OK, reason="/dev/kvm absent or not accessible")


def run_once(control: str, bp_offset: int | None = None, long_mode: bool = False):
    from harness import layout
    from harness.kvm import debugregs as dr
    from harness.kvm import ffi as k
    from harness.boot.raw import real_mode_entry
    from harness.kvm.system import ioctl
    from harness.kvm.vm import Vm
    from harness.memory import GuestRam
    from harness.boot.raw import load_raw
    ram = GuestRam(64 * layout.MiB)
    vm = Vm(ram, irqchip=False)
    try:
        vcpu = vm.create_vcpu()
        code = bytearray(CODE64 if long_mode else CODE)
        if control == "sw":
            code[bp_offset] = 0xCC
        if long_mode:
            entry, _ = load_raw(ram, bytes(code), mode="long64")
            vcpu.set_entry(entry)
        else:
            ram.write(LOAD, bytes(code))
            vcpu.set_entry(real_mode_entry(LOAD))
        if control == "step":
            dr.set_guest_debug(vcpu.fd, single_step=True)
        elif control == "sw":
            dr.set_guest_debug(vcpu.fd, sw_breakpoints=True)
        elif control == "hw-exec":
            dr.set_guest_debug(vcpu.fd, hw_slots=[dr.HwSlot(LOAD + bp_offset, dr.RW_EXEC, 1), None, None, None])
        ioctl(vcpu.fd, k.KVM_RUN, 0, what="KVM_RUN")
        run = vcpu.run
        return int(run.exit_reason), int(run.debug.arch.exception), vcpu.get_regs()["rip"], int(run.debug.arch.dr6)
    finally:
        vm.close()


def host():
    from harness.kvm.system import host_info
    return host_info()


@needs_kvm
def test_single_step_exits_after_one_instruction():
    reason, exception, rip, dr6 = run_once("step")
    assert (reason, exception) == (4, 1)                  # KVM_EXIT_DEBUG, #DB
    assert rip == LOAD + 3 and dr6 & (1 << 14)            # after `mov ax, imm16`, DR6.BS


@needs_kvm
def test_hardware_execute_breakpoint_exits_at_its_address():
    reason, exception, rip, dr6 = run_once("hw-exec", 4)
    assert (reason, exception, rip) == (4, 1, LOAD + 4) and dr6 & 1   # DR6.B0


@needs_kvm
def test_software_breakpoint_as_this_host_reports_it():
    from harness.boot.raw import GUEST_LOAD
    reason, exception, rip, _ = run_once("sw", 7, long_mode=True)
    info = host()
    if info["kvm_module"] == "kvm_pvm":
        assert (reason, rip) == (17, GUEST_LOAD + 7)  # KVM_EXIT_INTERNAL_ERROR on the INT3: the stub's cue
    elif info["hardware_backed"]:
        assert (reason, exception, rip) == (4, 3, GUEST_LOAD + 7)
    else:
        pytest.skip(f"no recorded expectation for {info['kvm_module']}")


@needs_kvm
def test_data_breakpoints_as_this_host_reports_them():
    from harness.kvm.debugregs import data_breakpoints_work
    info = host()
    if info["kvm_module"] == "kvm_pvm":
        assert data_breakpoints_work() is False        # the stub then steps and compares (write watchpoints)
    elif info["hardware_backed"]:
        assert data_breakpoints_work() is True
    else:
        pytest.skip(f"no recorded expectation for {info['kvm_module']}")


def test_packet_framing_and_binary_escapes():
    assert checksum(b"OK") == b"9a"
    data = bytes(range(256))
    assert unescape_binary(escape_binary(data)) == data
    assert b"$" not in escape_binary(b"$#}*")


def test_stop_replies_name_thread_and_reason():
    assert stop_reply(StopEvent(5, 1, "swbreak")) == "T05thread:2;swbreak:;"
    assert stop_reply(StopEvent(5, 0, "watch", 0x106BD0)) == "T05thread:1;watch:106bd0;"
    assert stop_reply(StopEvent(11, 0, "failure: triple-fault", final=True)) == "T0bthread:1;"


def test_listen_addresses_default_to_loopback_and_bad_ones_are_one_line_errors():
    assert parse_listen("1234") == ("127.0.0.1", 1234)
    assert parse_listen("0.0.0.0:2000") == ("0.0.0.0", 2000)
    for bad in ("x", "host:99999"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_qemu_backends_map_the_same_flags_to_qemus_own_stub(tmp_path):
    from harness.model.session import BootRequest
    from harness.backends.qemu import QemuBackend
    opts = DebugOptions(listen="127.0.0.1:4321", wait=True, on_failure=True).to_options()
    req = BootRequest(cell_id="c", guest="g", family="linux", arch="x86_64", boot="pvh", kernel=tmp_path / "k",
                      workdir=tmp_path, options=opts)
    argv = QemuBackend("tcg").build_argv(req)
    assert argv[argv.index("-gdb") + 1] == "tcp:127.0.0.1:4321" and "-S" in argv
    assert argv[argv.index("-action") + 1] == "shutdown=pause,panic=pause"
    plain = QemuBackend("tcg").build_argv(BootRequest(cell_id="c", guest="g", family="linux", arch="x86_64",
                                                      boot="pvh", kernel=tmp_path / "k", workdir=tmp_path))
    assert "-gdb" not in plain and "-S" not in plain


def test_a_gdb_port_in_use_fails_a_lab_boot_in_one_line_before_any_lab_starts(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    from debug_support import REPO
    from harness.assets.fixtures import build_fixture
    kernel = build_fixture("fixture-pvh")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "harness", "boot", str(kernel), "--boot", "pvh", "--host", "lab",
                               "--gdb", str(port), "--expect", "x", "--report-dir", str(tmp_path / "run")],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "ERROR: the gdb stub" in proc.stderr
    import json
    (path,) = (tmp_path / "run" / "cells").glob("*.json")
    result = json.loads(path.read_text())
    assert result["outcome"] == "error" and result["reason"] == (
        f"the gdb stub cannot listen on 127.0.0.1:{port}: Address already in use — "
        "pick another port (--gdb PORT; --gdb 0 takes any free one)")
    assert result["duration_s"] < 10             # refused before a lab was started


def test_the_builtin_stub_refuses_aarch64_guests_in_one_line(tmp_path):
    from harness.model.session import BootRequest
    from harness.backends.builtin import BuiltinBackend
    from harness.errors import BackendUnavailable
    request = BootRequest(cell_id="c", guest="g", family="linux", arch="aarch64", boot="image", kernel=tmp_path / "k",
                          workdir=tmp_path, options=DebugOptions(listen="0").to_options())
    with pytest.raises(BackendUnavailable) as err:
        BuiltinBackend().check_guest(request, "aarch64")
    assert "x86-64 guests only" in err.value.problem and "qemu-tcg" in err.value.fix
