"""On a hang, the cell result carries every vCPU's registers and the decoded instruction at RIP beside
the flight recorder. fixture-hang spins in `pause; jmp` with interrupts off; binutils' objdump of the
fixture's ELF is the reference for the instruction at the recorded RIP. About 5 s."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from debug_support import KVM_OK, Boot

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not KVM_OK, reason="/dev/kvm absent or not accessible: built-in backend cannot run")]


def objdump_at(elf: Path, addr: int) -> tuple[str, str]:
    """(mnemonic, hex bytes) of the instruction at `addr`, by objdump (32-bit code)."""
    out = subprocess.run(["objdump", "-d", "-M", "intel", f"--start-address={addr:#x}",
                          f"--stop-address={addr + 15:#x}", str(elf)], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^\s*{addr:x}:\s+((?:[0-9a-f]{{2}} )+)\s*(\S+)", out, re.M)
    assert m, out
    return m.group(2), m.group(1).replace(" ", "")


def test_a_hang_records_each_vcpu_registers_and_the_instruction_at_rip(tmp_path: Path):
    from harness.assets.fixtures import build_fixture
    kernel = build_fixture("fixture-hang")
    b = Boot(str(kernel), "--boot", "pvh", "--vcpus", "2", "--cmdline", "console=ttyS0", "--expect", "login: ",
             "--timeout", "30", "--hang-timeout", "2", "--quiet", "--report-dir", str(tmp_path / "run"), cwd=tmp_path)
    code, _, err = b.finish(timeout=60)
    assert code == 1, err
    (path,) = (tmp_path / "run" / "cells").glob("*.json")
    result = json.loads(path.read_text())
    assert result["outcome"] == "timeout" and result["failure"]["kind"] == "hang"
    assert result["flight_recorder"], "the flight recorder is kept beside the vCPU state"
    assert [v["vcpu"] for v in result["vcpus"]] == [0, 1]
    boot_cpu = result["vcpus"][0]
    rip = int(boot_cpu["registers"]["rip"], 16)
    assert set(boot_cpu["registers"]) >= {"rax", "rsp", "rflags", "cr0", "cs", "efer"}
    mnemonic, code_bytes = objdump_at(kernel, rip)
    assert boot_cpu["insn"]["text"].split()[0] == mnemonic
    assert boot_cpu["insn"]["bytes"] == code_bytes
    assert int(boot_cpu["registers"]["rflags"], 16) & 0x200 == 0      # it spins with interrupts off
    assert f"vCPU 0: rip {boot_cpu['registers']['rip']}" in err         # and harness boot says so
    # the application processor never got a SIPI: it waits, and says where
    assert result["vcpus"][1]["mp_state"] != 0
