"""Synthetic aarch64 kernels for loader tests: arm64 Images with chosen headers, NetBSD-style ELFs
from the cross toolchain."""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

CROSS_AS = shutil.which("aarch64-linux-gnu-as")
CROSS_LD = shutil.which("aarch64-linux-gnu-ld")
needs_cross = pytest.mark.skipif(CROSS_AS is None or CROSS_LD is None,
                                 reason="aarch64 cross binutils (binutils-aarch64-linux-gnu) not installed")


def arm64_image(body: bytes = b"\x1f\x20\x03\xd5" * 64, text_offset: int = 0, image_size: int | None = None,
                flags: int = 0xA, pe: bytes | None = None) -> bytes:
    """An Image: the 64-byte header, an optional PE header right after it, then `body`."""
    pe_offset = 64 if pe is not None else 0
    rest = (pe or b"") + body
    size = 64 + len(rest) if image_size is None else image_size
    header = struct.pack("<IIQQQQQQ4sI", 0x91005A4D if pe else 0x14000010, 0, text_offset, size, flags,
                         0, 0, 0, b"ARM\x64", pe_offset)
    return header + rest


def pe_header(sections: list[tuple[int, int]]) -> bytes:
    """'PE\\0\\0', a COFF header for arm64 and one section per (raw pointer, raw size)."""
    coff = struct.pack("<HHIIIHH", 0xAA64, len(sections), 0, 0, 0, 0, 0x206)
    table = b"".join(struct.pack("<8sIIIIIIHHI", b".text", size, ptr, size, ptr, 0, 0, 0, 0, 0x60000020)
                     for ptr, size in sections)
    return b"PE\0\0" + coff + table


def netbsd_elf(tmp_path: Path, link_base: int = 0xFFFF_C000_0000_0000) -> Path:
    """A tiny aarch64 ELF with a NetBSD ident note: text, data and BSS linked at `link_base`."""
    src = tmp_path / "nb.S"
    src.write_text(f"""
        .section .note.netbsd.ident, "a"
        .p2align 2
        .long 7, 4, 1
        .asciz "NetBSD"
        .p2align 2
        .long 1000000000
        .text
        .globl _start
        .quad 0
    _start:
        wfi
        b _start
        .data
        .quad 0x1122334455667788
        .bss
        .space 8192
    """)
    obj, out = tmp_path / "nb.o", tmp_path / "netbsd"
    subprocess.run([CROSS_AS, "-o", str(obj), str(src)], check=True)
    subprocess.run([CROSS_LD, "-static", "-nostdlib", f"-Ttext-segment={link_base:#x}", "-z", "max-page-size=4096", "-e", "_start",
                    "-o", str(out), str(obj)], check=True)
    return out
