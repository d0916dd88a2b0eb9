"""Run `harness boot` in the background as a user would, and read what it announces on stderr."""
from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KVM_OK = os.access("/dev/kvm", os.R_OK | os.W_OK)
GDB = shutil.which("gdb")
QEMU_X86 = shutil.which("qemu-system-x86_64")


class Boot:
    """`harness boot ARGS` running; stderr lines collected by a thread."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "harness", "boot", *args], cwd=cwd, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=lambda: self.stdout.extend(self.proc.stdout), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            m = re.search(pattern, line)
            if m:
                return m
        raise AssertionError(f"no line matching {pattern!r}; stderr so far:\n{''.join(self.stderr)}")

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:           # every line, up to EOF
            reader.join(10)
        return self.proc.returncode, "".join(self.stdout), "".join(self.stderr)


# gdb waits 2 s for a reply by default: short for a stub answering from Python under TCG in the lab,
# two virtualization levels down, on a loaded machine.
LAB_REMOTE_TIMEOUT_S = 60


def gdb_batch(*commands: str, symbols: Path | None = None, timeout: float = 60,
              remote_timeout: float | None = None) -> str:
    argv = [GDB, "-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off"]
    if remote_timeout is not None:
        argv += ["-ex", f"set remotetimeout {remote_timeout:g}"]
    if symbols is not None:
        argv += ["-ex", f"file {symbols}"]
    for c in commands:
        argv += ["-ex", c]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.stdout + proc.stderr


VMLINUX_TO_ELF = Path(sys.executable).parent / "vmlinux-to-elf"


def kernel_with_symbols(asset: str = "debian-cloud-kernel-amd64-vmlinux") -> tuple[Path, Path]:
    """A Debian kernel asset (stripped; Debian's System.map is a stub pointing at the -dbg package)
    and an ELF of its symbols recovered from its own kallsyms table by vmlinux-to-elf, cached in the
    asset cache (about 60 s the first time)."""
    import pytest

    from harness.assets.cache import AssetCache
    cache = AssetCache()
    kernel = cache.verify(asset, full=False)
    if kernel is None:
        pytest.skip(f"asset not built: harness assets build {asset}")
    if not VMLINUX_TO_ELF.exists():
        pytest.skip("vmlinux-to-elf is not installed (pip install -e '.[test]')")

    def build(work: Path) -> tuple[Path, dict]:
        out = work / "vmlinux.kallsyms.elf"
        subprocess.run([str(VMLINUX_TO_ELF), str(kernel.path), str(out)], check=True, capture_output=True,
                       timeout=900)
        return out, {"from": kernel.sha256, "tool": "vmlinux-to-elf"}

    symbols = cache.get_or_build(f"kallsyms-elf.{kernel.sha256[:16]}", build)
    return kernel.path, symbols.path


def symbol(elf: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile
    with open(elf, "rb") as f:
        (sym,) = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        return int(sym["st_value"])
