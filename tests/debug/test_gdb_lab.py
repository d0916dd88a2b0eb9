"""gdb on this machine breaks in real Linux running on the built-in VMM inside the lab.

The lab (QEMU TCG with emulated SVM, Debian's kvm_amd inside: docs/hosts.md) is where Debian's
kernel boots to `login:` on the built-in VMM; this machine's kvm_pvm stops it soon after
start_kernel. `harness boot --host lab --gdb 127.0.0.1:0 --gdb-wait` listens on this machine's
loopback; each debugger connection crosses into the lab over the harness.gdb virtio-serial port
to the VMM child's stub there (harness.hosts.gdbbridge, harness.hosts.gdbmux).

The guest is linux-amd64-pvh's: the vmlinux inside Debian's cloud bzImage (asset
debian-cloud-kernel-amd64-vmlinux), entered through its PVH note, and the busybox initramfs;
symbols are that vmlinux's own kallsyms, recovered by vmlinux-to-elf as in test_gdb_linux.
In the lab DR0-DR3 never fire and an INT3 never leaves the nested guest (measured by the stub at
start: TCG's SVM arms no nested DR7 and delivers INT3 to the guest itself), so a breakpoint is a
2-byte port read the run loop traps (harness.kvm.debugregs.TRAP_INSN), which needs the code's
memory: at the first instruction
the kernel has not mapped itself yet, so the breakpoint goes on start_kernel's physical address
(from the vmlinux's program headers) in the stub's physical-memory mode. The kernel executes it
through its virtual mapping: gdb sees the trap at start_kernel's virtual address.

Slow: the lab's start (12 s idle, up to a minute under load), the VMM's setup and early boot to
start_kernel in the lab, then Linux on to `login:` (measured times in docs/hosts.md,
"Debugging in the lab").
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from debug_support import GDB, LAB_REMOTE_TIMEOUT_S, Boot, gdb_batch, kernel_with_symbols, symbol

pytestmark = [pytest.mark.slow, pytest.mark.qemu,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 absent"),
              pytest.mark.skipif(GDB is None, reason="gdb is not installed (apt-get install gdb)")]

LAB_TIMEOUT_S = 900            # a TCG lab on a loaded 2-core machine: every step is slow


def pvh_guest() -> tuple[Path, Path, Path]:
    """linux-amd64-pvh's kernel and initrd, and the kernel's symbols."""
    from harness.assets.cache import AssetCache
    initrd = AssetCache().verify("busybox-initramfs-amd64", full=False)
    if initrd is None:
        pytest.skip("asset not built: harness assets build busybox-initramfs-amd64")
    vmlinux, symbols = kernel_with_symbols("debian-cloud-kernel-amd64-vmlinux")
    return vmlinux, initrd.path, symbols


def physical_address(elf: Path, virtual: int) -> int:
    """Where the loader puts the byte linked at `virtual`: its program header's p_paddr."""
    from elftools.elf.elffile import ELFFile
    with open(elf, "rb") as f:
        for seg in ELFFile(f).iter_segments(type="PT_LOAD"):
            if seg["p_vaddr"] <= virtual < seg["p_vaddr"] + seg["p_memsz"]:
                return int(seg["p_paddr"] + virtual - seg["p_vaddr"])
    raise AssertionError(f"{virtual:#x} is in no PT_LOAD segment of {elf}")


def result_of(run_dir: Path) -> dict:
    (path,) = (run_dir / "cells").glob("*.json")
    return json.loads(path.read_text())


def test_gdb_breaks_in_debian_linux_at_start_kernel_in_the_lab_and_the_guest_reaches_login(tmp_path: Path):
    vmlinux, initrd, symbols = pvh_guest()
    start_kernel = symbol(symbols, "start_kernel")
    start_kernel_phys = physical_address(vmlinux, start_kernel)
    t0 = time.monotonic()
    b = Boot(str(vmlinux), "--initrd", str(initrd), "--boot", "pvh", "--host", "lab", "--family", "linux",
             "--cmdline", "console=ttyS0", "--expect", r"Linux version \d", "--expect", "login:",
             "--timeout", str(LAB_TIMEOUT_S), "--gdb", "127.0.0.1:0", "--gdb-wait", "--quiet",
             "--report-dir", str(tmp_path / "run"), cwd=tmp_path)
    where = b.wait_for(r"gdb stub on (\S+):", timeout=LAB_TIMEOUT_S).group(1)
    t_listen = time.monotonic()
    assert where.startswith("127.0.0.1:")                     # this machine's loopback, not the lab's
    out = gdb_batch(f"file {symbols}", f"target remote {where}", "monitor info",
                    "maint packet Qqemu.PhyMemMode:1", f"break *{start_kernel_phys:#x}", "continue",
                    "maint packet Qqemu.PhyMemMode:0", "printf \"PC=%lx\\n\", $pc", "info symbol $pc",
                    "printf \"BANNER=%s\\n\", (char *)&linux_banner", "delete", "detach",
                    timeout=LAB_TIMEOUT_S, remote_timeout=LAB_REMOTE_TIMEOUT_S)
    t_break = time.monotonic()
    code, _, err = b.finish(timeout=LAB_TIMEOUT_S)
    t_login = time.monotonic()
    print(f"lab gdb timings: stub announced {t_listen - t0:.1f} s after harness boot started, gdb at "
          f"start_kernel and detached {t_break - t_listen:.1f} s later, login: {t_login - t_break:.1f} s after that")
    # what the stub measured in the lab: no debug-register breakpoints, INT3 never exits
    assert "execute breakpoints: software" in out and "as: in al, TRAP_PORT" in out, out
    assert "SIGTRAP" in out, out
    assert int(re.search(r"PC=([0-9a-f]+)", out).group(1), 16) == start_kernel, out
    assert "start_kernel in section .init.text" in out, out
    # memory through the guest's page tables: the banner the kernel is about to print
    banner = re.search(r"BANNER=(Linux version [^\n]+)", out)
    assert banner, out
    assert code == 0, err + out                               # both milestones: detached, Linux went on to login:
    result = result_of(tmp_path / "run")
    assert result["outcome"] == "pass" and result["host"]["host"] == "lab"
    assert result["host"]["kvm_module"] == "kvm_amd"
    console = (tmp_path / "run" / result["console_log"]).read_text(errors="replace")
    assert banner.group(1).strip() in console                 # what gdb read is what the console then printed
    assert console.index("Linux version") < console.rindex("login:")


def test_qemu_kvm_in_the_lab_puts_qemus_own_stub_behind_the_same_bridge(tmp_path: Path):
    """qemu-kvm in the lab with --gdb-wait: QEMU's `-gdb`/`-S` inside, gdb here; gdb reads the
    held vCPU, then detaches and the fixture reaches its last milestone. QEMU's QMP stays in the
    lab, so its stops and resumes come from the packets: the cell's events show the stop gdb's
    attach made and the resume its detach made (the watcher's clocks stop in between)."""
    from harness.assets.fixtures import build_fixture
    kernel = build_fixture("fixture-pvh")
    b = Boot(str(kernel), "--backend", "qemu-kvm", "--boot", "pvh", "--host", "lab", "--family", "fixture",
             "--cmdline", "console=ttyS0", "--expect", "fixture login: ", "--timeout", str(LAB_TIMEOUT_S),
             "--gdb", "127.0.0.1:0", "--gdb-wait", "--quiet", "--report-dir", str(tmp_path / "run"), cwd=tmp_path)
    where = b.wait_for(r"gdb stub on (\S+):", timeout=LAB_TIMEOUT_S).group(1)
    assert where.startswith("127.0.0.1:") and not where.endswith(":1234")   # the bridge's port, not QEMU's
    out = gdb_batch(f"target remote {where}", "printf \"CR0=%lx\\n\", $cr0", "info registers rip", "detach",
                    timeout=LAB_TIMEOUT_S, remote_timeout=LAB_REMOTE_TIMEOUT_S)
    code, _, err = b.finish(timeout=LAB_TIMEOUT_S)
    assert re.search(r"rip\s+0x[0-9a-f]+", out), out
    assert code == 0, err + out
    events = [json.loads(line) for line in
              next((tmp_path / "run" / "cells").glob("*/events.jsonl")).read_text().splitlines()]
    kinds = [e["type"] for e in events if e["type"].startswith("debug-")]
    assert kinds[:2] == ["debug-listen", "debug-stop"] and "debug-resume" in kinds, kinds
    assert next(e for e in events if e["type"] == "debug-listen")["data"]["lab_stub"] == "127.0.0.1:1234"
