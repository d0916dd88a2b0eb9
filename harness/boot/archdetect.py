"""Which architecture a kernel file is for, read from the file itself (for `harness boot`, every
backend): an ELF's e_machine, the arm64 Image magic, the bzImage setup header, a multiboot header.
A gzip/xz/zstd-compressed file is looked at after decompression."""
from __future__ import annotations

from pathlib import Path

from harness.boot.image import (ARM64_IMAGE_MAGIC, ELF_MAGIC, EM_386, EM_AARCH64, EM_X86_64, MACHINE_NAMES,
                                elf_machine, is_bzimage, read_kernel_any_arch)
from harness.errors import KernelImageError

DETECT_CAP = 512 * 1024 * 1024
ELF_ARCHES = {EM_X86_64: "x86_64", EM_386: "x86_64", EM_AARCH64: "aarch64"}


def detect_arch(kernel: Path) -> str:
    """"x86_64" or "aarch64", or a one-line KernelImageError naming what the file is instead."""
    kernel = Path(kernel)
    data = read_kernel_any_arch(kernel, DETECT_CAP)
    if data.startswith(ELF_MAGIC):
        machine = elf_machine(data)
        if machine in ELF_ARCHES:
            return ELF_ARCHES[machine]
        raise KernelImageError(f"{kernel.name} is an ELF file for {MACHINE_NAMES.get(machine, f'machine {machine}')}",
                               "give an x86-64 or aarch64 kernel")
    if data[0x38:0x3C] == ARM64_IMAGE_MAGIC:
        return "aarch64"
    if is_bzimage(data):
        return "x86_64"
    from harness.boot.multiboot import find_header
    if find_header(data) is not None:
        return "x86_64"
    raise KernelImageError(f"cannot tell the architecture of {kernel.name}: not ELF, not an arm64 Image, "
                           "not a bzImage, no multiboot header", "give a kernel image (or its .gz)")
