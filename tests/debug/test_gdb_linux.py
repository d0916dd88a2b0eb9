"""gdb breaks in real Linux at start_kernel on the built-in hypervisor.

The Debian 12 cloud kernel's PVH vmlinux (asset debian-cloud-kernel-amd64-vmlinux) is stripped and
Debian's System.map is a stub ("The real System.map is in the linux-image-<version>-dbg package"),
so the symbols come from the kernel's own kallsyms table, recovered by vmlinux-to-elf (PyPI) into an
ELF cached in the asset cache. On this host (kvm_pvm) the kernel reaches start_kernel about 10 s
after gdb continues; the symbol recovery takes about 60 s the first time, nothing after.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from debug_support import GDB, KVM_OK, Boot, gdb_batch

pytestmark = [pytest.mark.slow, pytest.mark.kvm,
              pytest.mark.skipif(not KVM_OK, reason="/dev/kvm absent or not accessible: built-in backend cannot run"),
              pytest.mark.skipif(GDB is None, reason="gdb is not installed (apt-get install gdb)")]

TOOL = Path(sys.executable).parent / "vmlinux-to-elf"


def kernel_with_symbols() -> tuple[Path, Path]:
    from harness.assets.cache import AssetCache
    cache = AssetCache()
    kernel = cache.verify("debian-cloud-kernel-amd64-vmlinux", full=False)
    if kernel is None:
        pytest.skip("asset not built: harness assets build debian-cloud-kernel-amd64-vmlinux")
    if not TOOL.exists():
        pytest.skip("vmlinux-to-elf is not installed (pip install -e '.[test]')")

    def build(work: Path) -> tuple[Path, dict]:
        out = work / "vmlinux.kallsyms.elf"
        subprocess.run([str(TOOL), str(kernel.path), str(out)], check=True, capture_output=True, timeout=900)
        return out, {"from": kernel.sha256, "tool": "vmlinux-to-elf"}

    symbols = cache.get_or_build(f"kallsyms-elf.{kernel.sha256[:16]}", build)
    return kernel.path, symbols.path


def symbol(elf: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile
    with open(elf, "rb") as f:
        (sym,) = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        return int(sym["st_value"])


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
