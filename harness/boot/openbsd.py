"""OpenBSD amd64 native entry, the way vmd(8) does it (usr.sbin/vmd/loadfile_elf.c).

Segments load at p_paddr, PT_OPENBSD_RANDOMIZE segments are filled with random bytes, the
entry is e_entry & 0x0fffffff in 32-bit protected mode, and a cdecl frame carries
    4(%esp) howto, 8 bootdev, 12 bootapiver 0x0e, 16 end (esym), 20 extmem, 24 cnvmem,
    28 bootargc (byte size of the bootargs), 32 bootargv (their physical address).
Bootargs are records {u32 type; u32 size; u32 next; data} ended by a 0xFFFFFFFF word:
BOOTARG_MEMMAP (0) with packed 20-byte {addr, size, type} entries ended by a zero entry, and
BOOTARG_CONSDEV (5) naming com0 at 0x3f8. With cnvmem 0 the kernel uses the BIOS map only.
"""
from __future__ import annotations

import os
import struct

from harness import layout
from harness.boot import placement
from harness.boot.entry import protected32_entry
from harness.boot.image import EM_X86_64, ElfImage
from harness.boot.plan import BootPlan
from harness.errors import KernelImageError
from harness.memory import GuestRam

PT_OPENBSD_RANDOMIZE = 0x65A3DBE6
ENTRY_MASK = 0x0FFF_FFFF
BOOTARG_MEMMAP = 0
BOOTARG_CONSDEV = 5
BOOTARG_END = 0xFFFF_FFFF
BOOTARG_APIVER = 0x0E
BIOS_MAP_END, BIOS_MAP_FREE, BIOS_MAP_RES = 0, 1, 2
B_MAGICBOOTDEV = 0xA000_0000
BOOTDEV_SD0A = B_MAGICBOOTDEV | 4    # MAKEBOOTDEV(4, 0, 0, 0, 0): sd0a
COM_MAJOR = 8                        # amd64 cdevsw major of com(4)
CONSOLE_SPEED = 115200
BOOTARGS_MAX = 0x1000

# boot flags (sys/sys/reboot.h) by letter, as boot(8) passes them
HOWTO_FLAGS = {"a": 0x001,   # RB_ASKNAME
               "s": 0x002,   # RB_SINGLE
               "d": 0x040,   # RB_KDB
               "c": 0x400}   # RB_CONFIG


def makedev(major: int, minor: int) -> int:
    return ((major & 0xFF) << 8) | (minor & 0xFF) | ((minor & 0xFFFF00) << 8)


def parse_cmdline(cmdline: str) -> tuple[int, list[str]]:
    howto, ignored = 0, []
    for word in cmdline.split():
        if word.startswith("-") and len(word) > 1 and all(c in HOWTO_FLAGS for c in word[1:]):
            for c in word[1:]:
                howto |= HOWTO_FLAGS[c]
        else:
            ignored.append(word)
    return howto, ignored


def bootarg(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    size = 12 + len(body)
    return struct.pack("<III", btype, size, size) + body


def memmap_bootarg(entries: list[tuple[int, int, int]]) -> bytes:
    rows = [(a, s, BIOS_MAP_FREE if t == layout.E820_RAM else BIOS_MAP_RES) for a, s, t in entries]
    rows.append((0, 0, BIOS_MAP_END))
    return bootarg(BOOTARG_MEMMAP, b"".join(struct.pack("<QQI", a, s, t) for a, s, t in rows))


def consdev_bootarg(port: int = layout.COM1_PORT, speed: int = CONSOLE_SPEED) -> bytes:
    # bios_consdev_t in current releases: {dev_t consdev; int conspeed; u_int64_t consaddr;
    # int consfreq; u_int32_t flags; int reg_width; int reg_shift}. Older kernels read the first
    # 16 bytes with an int consaddr at offset 8: the low half of the u64 is the same value.
    return bootarg(BOOTARG_CONSDEV, struct.pack("<iiQiIii", makedev(COM_MAJOR, 0), speed, port, 0, 0, 0, 0))


def load_openbsd(mem: GuestRam, elf: ElfImage, initrd: bytes | None, cmdline: str, name: str = "kernel") -> BootPlan:
    if elf.machine != EM_X86_64:
        raise KernelImageError(f"{name} is a 32-bit ELF file; the OpenBSD native entry here is for amd64",
                               "use an OpenBSD/amd64 kernel (bsd, bsd.rd, bsd.sp)")
    if initrd is not None:
        raise KernelImageError("OpenBSD takes no separate initrd", "use bsd.rd, which embeds its ramdisk")
    # vmd skips PT_LOAD segments without any R/W/X permission
    loadable = ElfImage(data=elf.data, elfclass=elf.elfclass, machine=elf.machine, osabi=elf.osabi,
                        entry=elf.entry, notes=elf.notes,
                        segments=[s for s in elf.segments if s.type != 1 or s.flags & 0x7])
    loaded = placement.load_segments(mem, loadable, lambda seg: seg.paddr, name)
    regions = list(loaded.regions)
    # Random data goes in after the PT_LOADs, which may cover the same range with zeros.
    for seg in (s for s in elf.segments if s.type == PT_OPENBSD_RANDOMIZE and s.filesz):
        placement.check_range(mem, f"{name} random-data segment", seg.paddr, seg.filesz)
        mem.write(seg.paddr, os.urandom(seg.filesz))
        regions.append(("openbsd_random", seg.paddr, seg.filesz))
    entry = elf.entry & ENTRY_MASK
    if not loaded.low <= entry < loaded.high:
        raise KernelImageError(f"{name}'s entry {entry:#x} is outside its image [{loaded.low:#x}, {loaded.high:#x})",
                               "the kernel file is corrupt")

    howto, ignored = parse_cmdline(cmdline)
    entries = placement.memory_map(mem)
    # vmd ends the list with a bare 0xFFFFFFFF word; a whole 12-byte header (counted in bootargc)
    # reads the same to the kernel, which stops at the type, and suits walkers that read a
    # full header before looking at the type.
    blob = memmap_bootarg(entries) + consdev_bootarg() + struct.pack("<III", BOOTARG_END, 12, 12)
    if len(blob) > BOOTARGS_MAX:
        raise KernelImageError("OpenBSD bootargs grew beyond one page", "report this harness bug")
    mem.write(layout.BOOT_INFO_ADDR, blob)
    regions.append(("bootargs", layout.BOOT_INFO_ADDR, len(blob)))

    # end = 0: no symbol table loaded, locore0 then starts allocating after the kernel's `end`.
    args = [howto, BOOTDEV_SD0A, BOOTARG_APIVER, 0, 0, 0, len(blob), layout.BOOT_INFO_ADDR]
    esp = placement.write_cdecl_stack(mem, args)
    state = protected32_entry(mem, entry, rsp=esp)
    regions += [("stack", esp, 4 * (len(args) + 1)), ("gdt", state.gdt_base, state.gdt_limit + 1)]
    info = {"protocol": "openbsd", "entry_point": entry, "load_range": (loaded.low, loaded.high),
            "howto": howto, "cmdline": cmdline, "ignored_cmdline": ignored, "memmap": entries,
            "bootdev": BOOTDEV_SD0A}
    return BootPlan(entry=state, info=info, regions=regions)
