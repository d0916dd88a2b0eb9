"""`harness boot` reads the architecture from the kernel file, for every backend."""
from __future__ import annotations

import gzip
import struct

import pytest
from arm64_builders import arm64_image, needs_cross, netbsd_elf

from harness.boot.archdetect import detect_arch
from harness.errors import KernelImageError


def _elf(machine: int) -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    return ident + struct.pack("<HHI", 2, machine, 1) + bytes(200)


@pytest.mark.parametrize("name,data,arch", [
    ("Image", arm64_image(), "aarch64"),
    ("Image.gz", gzip.compress(arm64_image(), mtime=0), "aarch64"),
    ("vmlinux", _elf(62), "x86_64"),
    ("kernel32", _elf(3), "x86_64"),
    ("netbsd", _elf(183), "aarch64"),
    ("bzImage", bytes(0x202) + b"HdrS" + bytes(0x200), "x86_64"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "data")
def test_architecture_from_the_file(tmp_path, name, data, arch):
    path = tmp_path / name
    path.write_bytes(data)
    assert detect_arch(path) == arch


def test_foreign_elf_and_unknown_files_are_one_line_errors(tmp_path):
    riscv = tmp_path / "riscv"
    riscv.write_bytes(_elf(243))
    with pytest.raises(KernelImageError, match="RISC-V"):
        detect_arch(riscv)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world" * 20)
    with pytest.raises(KernelImageError, match="cannot tell the architecture"):
        detect_arch(junk)


@needs_cross
def test_cross_built_aarch64_elf(tmp_path):
    assert detect_arch(netbsd_elf(tmp_path)) == "aarch64"
