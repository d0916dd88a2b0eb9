"""gdb breaks in real Linux at start_kernel on the built-in hypervisor.

The Debian 12 cloud kernel's PVH vmlinux (asset debian-cloud-kernel-amd64-vmlinux) is stripped and
Debian's System.map is a stub ("The real System.map is in the linux-image-<version>-dbg package"),
so the symbols come from the kernel's own kallsyms table, recovered by vmlinux-to-elf (PyPI) into an
ELF cached in the asset cache. On this host (kvm_pvm) the kernel reaches start_kernel about 10 s
after gdb continues; the symbol recovery takes about 60 s the first time, nothing after.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from debug_support import GDB, KVM_OK, Boot, gdb_batch, kernel_with_symbols, symbol

pytestmark = [pytest.mark.slow, pytest.mark.kvm,
              pytest.mark.skipif(not KVM_OK, reason="/dev/kvm absent or not accessible: built-in backend cannot run"),
              pytest.mark.skipif(GDB is None, reason="gdb is not installed (apt-get install gdb)")]

def test_gdb_breaks_in_debian_linux_at_start_kernel(tmp_path: Path):
    kernel, symbols = kernel_with_symbols()
    b = Boot(str(kernel), "--boot", "pvh", "--cmdline", "console=ttyS0", "--family", "linux",
             "--expect", "Linux version", "--timeout", "300", "--gdb", "127.0.0.1:0", "--gdb-wait",
             "--quiet", "--report-dir", str(tmp_path / "run"), cwd=tmp_path)
    where = b.wait_for(r"gdb stub on (\S+):", timeout=60).group(1)
    out = gdb_batch(f"file {symbols}", f"target remote {where}", "hbreak start_kernel", "continue",
                    "printf \"PC=%lx\\n\", $pc", "info symbol $pc", "bt 2", "kill", timeout=300)
    b.finish(timeout=60)
    assert re.search(r"Breakpoint 1, 0x[0-9a-f]+ in start_kernel \(\)", out), out
    assert int(re.search(r"PC=([0-9a-f]+)", out).group(1), 16) == symbol(symbols, "start_kernel")
    assert "start_kernel in section .init.text" in out
    assert "secondary_startup_64" in out        # who called it: the 64-bit startup code
