"""A real consumer of the generated device tree: Debian's arm64 cloud kernel + the busybox
initramfs boot to `login:` on QEMU TCG with `-dtb` = harness.boot.fdt's blob, finding the PL011
(AMBA probe through its ID registers and apb_pclk), the PL031, the GICv3, the timer and PSCI
(CPU1 started by CPU_ON) where the blob says. ~12 s on this machine (slow)."""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import time

import pytest

from harness import layout
from harness.assets.cache import AssetCache
from harness.boot.fdt import Aarch64Machine, build_fdt

QEMU_A64 = shutil.which("qemu-system-aarch64")
pytestmark = [pytest.mark.slow, pytest.mark.qemu,
              pytest.mark.skipif(QEMU_A64 is None, reason="qemu-system-aarch64 not installed (qemu-system-arm)")]
WANT = ("psci: PSCIv", "GICv3: CPU0: found redistributor", "arch_timer:", "CPU1: Booted secondary processor",
        "ttyAMA0 at MMIO 0x9000000", "rtc-pl031 9010000.pl031: registered", "login:")


def _asset(name: str):
    entry = AssetCache().lookup(name)
    if entry is None or not entry.path.is_file():
        pytest.skip(f"asset {name} not built (harness assets build {name})")
    return entry.path


def test_debian_arm64_kernel_boots_with_the_generated_dtb(tmp_path):
    kernel, initrd = _asset("debian-cloud-kernel-arm64"), _asset("busybox-initramfs-arm64")
    dtb = tmp_path / "harness.dtb"
    dtb.write_bytes(build_fdt(Aarch64Machine(256 * layout.MiB, vcpus=2, cmdline="console=ttyAMA0")))
    argv = [QEMU_A64, "-M", "virt,gic-version=3", "-cpu", "cortex-a57", "-smp", "2", "-m", "256", "-nographic",
            "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyAMA0", "-dtb", str(dtb)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    console = b""
    try:
        deadline = time.monotonic() + 120
        while b"login:" not in console and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                console += os.read(proc.stdout.fileno(), 65536)
    finally:
        proc.kill()
        proc.wait(10)
    text = console.decode(errors="replace")
    missing = [w for w in WANT if w not in text]
    assert not missing, (missing, text[-3000:])
