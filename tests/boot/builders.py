"""Tiny kernels for the loader tests, built with `as` + `ld` (or assembled as bytes).

Each builder returns the path of an ELF (or raw) image whose layout the tests know exactly,
so loaded guest memory can be compared field by field.
"""
from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

HAVE_BINUTILS = shutil.which("as") is not None and shutil.which("ld") is not None
needs_binutils = pytest.mark.skipif(not HAVE_BINUTILS, reason="GNU as/ld (binutils) not installed")


def build_elf(tmp: Path, name: str, asm: str, script: str, bits: int = 64) -> Path:
    src, obj, out, lds = (tmp / f"{name}.S", tmp / f"{name}.o", tmp / name, tmp / f"{name}.ld")
    src.write_text(asm)
    lds.write_text(script)
    as_flags = ["--64"] if bits == 64 else ["--32"]
    ld_flags = ["-m", "elf_x86_64"] if bits == 64 else ["-m", "elf_i386"]
    subprocess.run(["as", *as_flags, "-o", str(obj), str(src)], check=True, capture_output=True)
    subprocess.run(["ld", *ld_flags, "-nostdlib", "-z", "max-page-size=0x1000", "-T", str(lds),
                    "-o", str(out), str(obj)], check=True, capture_output=True)
    return out


XEN_NOTE = """
.section .note.Xen, "a", @note
.balign 4
.long 4, {descsz}, 18
.asciz "Xen"
.balign 4
.long pvh_start
{pad}
.balign 4
"""

PVH_ASM = """
.text
.code32
.globl _start, pvh_start
_start:
pvh_start:
    cli
    hlt
    .fill 0x200, 1, 0x90
.data
msg: .ascii "Linux version 6.9.0-test (builder) #1\\0"
.bss
.fill 0x3000, 1, 0
"""

PVH_LDS = """
ENTRY(_start)
PHDRS { text PT_LOAD; data PT_LOAD; note PT_NOTE; }
SECTIONS {
  . = 0x400000;
  .text : { *(.text) } :text
  .note : { *(.note*) } :text :note
  . = ALIGN(0x1000);
  .data : { *(.data) } :data
  .bss : { *(.bss) } :data
}
"""


def pvh_kernel(tmp: Path, wide_note: bool = True) -> Path:
    """ELF64 with a Xen PVH note (8 bytes wide like Linux's when wide_note) at 0x400000."""
    note = XEN_NOTE.format(descsz=8 if wide_note else 4, pad=".long 0" if wide_note else "")
    return build_elf(tmp, "pvh.elf", PVH_ASM + note, PVH_LDS)


MB_ASM = """
.text
.code32
.globl _start
mb_header:
.long 0x1BADB002, {flags}, -(0x1BADB002 + {flags})
_start:
    cli
    hlt
.data
.long 0x11223344
.bss
.fill 0x2000, 1, 0
"""

MB_LDS = """
ENTRY(_start)
SECTIONS {
  . = 0x200000;
  .text : { *(.text) }
  . = ALIGN(0x1000);
  .data : { *(.data) }
  .bss : { *(.bss) }
}
"""


def multiboot_elf(tmp: Path, flags: int = 0x3) -> Path:
    return build_elf(tmp, f"mb{flags:x}.elf", MB_ASM.format(flags=flags), MB_LDS, bits=32)


def multiboot_aout(tmp: Path, load_addr: int = 0x300000) -> Path:
    """A raw (non-ELF) multiboot image with the address fields: header at file offset 0x40."""
    flags = 0x10003
    header_off = 0x40
    body = bytearray(0x1000)
    header_addr = load_addr + header_off
    entry = load_addr + 0x100
    struct.pack_into("<III", body, header_off, 0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xFFFFFFFF)
    struct.pack_into("<IIIII", body, header_off + 12, header_addr, load_addr, load_addr + len(body),
                     load_addr + len(body) + 0x2000, entry)
    body[0x100:0x102] = b"\xfa\xf4"       # cli; hlt
    body[0x800:0x804] = b"DATA"
    path = tmp / "mb.aout"
    path.write_bytes(bytes(body))
    return path


BSD_ASM = """
.text
.code32
.globl _start
_start:
    cli
    hlt
    .fill 0x100, 1, 0x90
.data
.ascii "{banner}\\0"
.section .openbsd.randomdata, "aw"
.fill 64, 1, 0
.bss
.fill 0x4000, 1, 0
"""

NETBSD_LDS = """
ENTRY(_start)
PHDRS { text PT_LOAD; data PT_LOAD; }
SECTIONS {
  . = 0xffffffff80200000;
  .text : AT(0x200000) { *(.text) } :text
  . = ALIGN(0x1000);
  .data : AT(0x200000 + (ADDR(.data) - 0xffffffff80200000)) { *(.data) *(.openbsd.randomdata) } :data
  .bss : { *(.bss) } :data
}
"""

OPENBSD_LDS = """
ENTRY(_start)
PHDRS { text PT_LOAD; data PT_LOAD; rand 0x65a3dbe6; }
SECTIONS {
  . = 0xffffffff81001000;
  .text : AT(0x1001000) { *(.text) } :text
  . = ALIGN(0x1000);
  .data : AT(0x1001000 + (ADDR(.data) - 0xffffffff81001000)) { *(.data) } :data
  .openbsd.randomdata : AT(0x1001000 + (ADDR(.openbsd.randomdata) - 0xffffffff81001000)) { *(.openbsd.randomdata) } :data :rand
  .bss : { *(.bss) } :data
}
"""

OSABI_OFFSET = 7


def bsd_kernel(tmp: Path, flavour: str) -> Path:
    """ELF64 'BSD kernels': netbsd / freebsd linked at KERNBASE+2 MiB, openbsd at 0xffffffff81001000."""
    banner = {"netbsd": "NetBSD 10.0 (GENERIC) #0: test", "openbsd": "OpenBSD 7.5 (GENERIC) #1: test",
              "freebsd": "FreeBSD 14.1-RELEASE (GENERIC) #0: test"}[flavour]
    script = OPENBSD_LDS if flavour == "openbsd" else NETBSD_LDS
    path = build_elf(tmp, f"{flavour}.elf", BSD_ASM.format(banner=banner), script)
    data = bytearray(path.read_bytes())
    data[OSABI_OFFSET] = {"netbsd": 2, "openbsd": 12, "freebsd": 9}[flavour]   # EI_OSABI
    path.write_bytes(bytes(data))
    return path


def elf_header_only(machine: int, elfclass: int = 2) -> bytes:
    """A bare ELF header (no segments) for a given e_machine: enough for the wrong-arch check."""
    ident = b"\x7fELF" + bytes([elfclass, 1, 1, 0]) + bytes(8)
    if elfclass == 2:
        return ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0x400000, 64, 0, 0, 64, 56, 0, 64, 0, 0)
    return ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, 0x400000, 52, 0, 0, 52, 32, 0, 40, 0, 0)


# --- fake bzImages ----------------------------------------------------------------------------
SETUP_SECTS = 2
PM_OFFSET = (SETUP_SECTS + 1) * 512
VERSION_STRING = b"6.9.0-fake (tester) #1 SMP"
PAYLOAD_OFFSET = 0x400


def lz4_legacy(data: bytes, block: int = 8 * 1024 * 1024) -> bytes:
    import lz4.block
    out = bytearray(b"\x02\x21\x4c\x18")
    for pos in range(0, len(data), block):
        comp = lz4.block.compress(data[pos:pos + block], store_size=False)
        out += struct.pack("<I", len(comp)) + comp
    return bytes(out)


def compress(data: bytes, fmt: str) -> bytes:
    if fmt == "gzip":
        return gzip.compress(data)
    if fmt == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if fmt == "lz4":
        return lz4_legacy(data)
    if fmt == "zstd":
        import zstandard
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(fmt)


def fake_bzimage(payload_elf: bytes = b"", fmt: str = "gzip", version: int = 0x020F, xloadflags: int = 0x3,
                 pref_address: int = 0x1000000, init_size: int = 0x200000, cmdline_size: int = 2047,
                 initrd_addr_max: int = 0x7FFFFFFF, kernel_alignment: int = 0x200000, relocatable: int = 1,
                 pm_size: int = 0x4000) -> bytes:
    """Setup sectors with a real-looking header, then a protected-mode part holding the
    (optionally compressed, size-trailed) payload, padded to pm_size."""
    payload = compress(payload_elf, fmt) + struct.pack("<I", len(payload_elf)) if payload_elf else b""
    setup = bytearray(PM_OFFSET)
    setup[0x1F1] = SETUP_SECTS
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x200] = 0xEB                      # jmp short: header ends at 0x202 + setup[0x201]
    setup[0x201] = 0x6A                      # -> 0x26c, like 2.15
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<H", setup, 0x20E, 0x300)   # kernel_version pointer (+0x200 -> 0x500)
    setup[0x500:0x500 + len(VERSION_STRING) + 1] = VERSION_STRING + b"\0"
    setup[0x211] = 0x01                      # LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    setup[0x234] = relocatable
    setup[0x235] = 21
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<I", setup, 0x248, PAYLOAD_OFFSET if payload else 0)
    struct.pack_into("<I", setup, 0x24C, len(payload))
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    struct.pack_into("<I", setup, 0x268, 0)   # kernel_info_offset
    # The byte past the header: must NOT be copied into the zero page.
    setup[0x26C] = 0xAB
    pm = bytearray(max(pm_size, PAYLOAD_OFFSET + len(payload)))
    pm[0:4] = b"\x0f\x0b\x0f\x0b"             # ud2 ud2 at the 32-bit entry
    pm[0x200:0x202] = b"\xfa\xf4"            # cli; hlt at the 64-bit entry (+0x200)
    pm[PAYLOAD_OFFSET:PAYLOAD_OFFSET + len(payload)] = payload
    return bytes(setup) + bytes(pm)


NETBSD_NOTE = """
.section .note.netbsd.ident, "a", @note
.balign 4
.long 7, 4, 1
.asciz "NetBSD"
.balign 4
.long 1000000000
"""


def netbsd_pvh_kernel(tmp: Path) -> Path:
    """A GENPVH-like kernel: Xen PVH note plus a NetBSD ident note."""
    note = XEN_NOTE.format(descsz=4, pad="") + NETBSD_NOTE
    return build_elf(tmp, "netbsd-pvh.elf", PVH_ASM + note, PVH_LDS)
