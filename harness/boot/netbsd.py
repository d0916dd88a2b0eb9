"""NetBSD amd64 native entry, as the x86 boot loader does it (sys/arch/i386/stand/lib/exec.c,
sys/lib/libsa/loadfile_elf32.c, sys/arch/amd64/amd64/locore.S `start`).

The boot loader loads each PT_LOAD segment at (p_vaddr & 0x07ffffff) and jumps to
(e_entry & 0x07ffffff) in 32-bit protected mode, paging off, with a cdecl frame:
    4(%esp) boothowto, 8 bootdev, 12 bootinfo (phys), 16 esym, 20 biosextmem KiB, 24 biosbasemem KiB.
bootinfo is {u32 count; u32 phys pointers[count]} to records {int len; int type; ...}
(sys/arch/x86/include/bootinfo.h). Without a CONSOLE record the kernel talks to VGA.
"""
from __future__ import annotations

import struct

from harness import layout
from harness.boot import placement
from harness.boot.entry import protected32_entry
from harness.boot.image import EM_X86_64, ElfImage
from harness.boot.plan import BootPlan
from harness.errors import KernelImageError
from harness.memory import GuestRam

LOADADDR_MASK = 0x07FF_FFFF          # loadfile_machdep.h for x86 (BOOT_ELF64)

BTINFO_ROOTDEVICE = 1
BTINFO_CONSOLE = 6
BTINFO_MEMMAP = 9
BOOTINFO_MAXSIZE = 4096              # what older kernels copy; keep the whole thing below it

# boothowto (sys/sys/reboot.h) by boot-loader flag letter (sys/sys/boot_flag.h)
HOWTO_FLAGS = {"a": 0x001,   # RB_ASKNAME
               "s": 0x002,   # RB_SINGLE
               "d": 0x040,   # RB_KDB
               "m": 0x200,   # RB_MINIROOT
               "c": 0x1000,  # RB_USERCONF
               "q": 0x10000,  # AB_QUIET
               "v": 0x20000,  # AB_VERBOSE
               "z": 0x40000,  # AB_SILENT
               "x": 0x80000}  # AB_DEBUG

CONSOLE_SPEED = 115200


def parse_cmdline(cmdline: str) -> tuple[int, str | None, list[str]]:
    """boothowto from "-s -v" / "-sv" words, root device from root=NAME, and the rest (unused)."""
    howto, root, ignored = 0, None, []
    for word in cmdline.split():
        if word.startswith("-") and len(word) > 1 and all(c in HOWTO_FLAGS for c in word[1:]):
            for c in word[1:]:
                howto |= HOWTO_FLAGS[c]
        elif word.startswith("root="):
            root = word[len("root="):]
        else:
            ignored.append(word)
    if root is not None and not 0 < len(root.encode()) < 16:
        raise KernelImageError(f"NetBSD root device name {root!r} must be 1 to 15 characters",
                               "give root= a device name like wd0a or dk0")
    return howto, root, ignored


def record(rtype: int, body: bytes) -> bytes:
    data = struct.pack("<ii", 8 + len(body), rtype) + body
    return data + bytes(-len(data) % 4)


def console_record(port: int = layout.COM1_PORT, speed: int = CONSOLE_SPEED) -> bytes:
    return record(BTINFO_CONSOLE, b"com".ljust(16, b"\0") + struct.pack("<ii", port, speed))


def memmap_record(entries: list[tuple[int, int, int]]) -> bytes:
    return record(BTINFO_MEMMAP, struct.pack("<i", len(entries))
                  + b"".join(struct.pack("<QQI", a, s, t) for a, s, t in entries))


def rootdevice_record(name: str) -> bytes:
    return record(BTINFO_ROOTDEVICE, name.encode().ljust(16, b"\0"))


def write_bootinfo(mem: GuestRam, records: list[bytes]) -> tuple[int, int]:
    base = layout.BOOT_TABLES_ADDR
    pos = base + 4 + 4 * len(records)
    pointers = []
    blob = bytearray()
    for rec in records:
        pointers.append(pos + len(blob))
        blob += rec
    size = 4 + 4 * len(records) + len(blob)
    if size > BOOTINFO_MAXSIZE:
        raise KernelImageError("NetBSD bootinfo grew beyond 4 KiB", "report this harness bug")
    mem.write(base, struct.pack(f"<I{len(records)}I", len(records), *pointers) + bytes(blob))
    return base, size


def load_netbsd(mem: GuestRam, elf: ElfImage, initrd: bytes | None, cmdline: str, name: str = "kernel") -> BootPlan:
    if elf.machine != EM_X86_64:
        raise KernelImageError(f"{name} is a 32-bit ELF file; the NetBSD native entry here is for amd64",
                               "use a NetBSD/amd64 kernel")
    if initrd is not None:
        raise KernelImageError("the NetBSD native entry takes no separate initrd",
                               "use an INSTALL kernel with its embedded ramdisk, or boot through PVH")
    loaded = placement.load_segments(mem, elf, lambda seg: seg.vaddr & LOADADDR_MASK, name)
    entry = elf.entry & LOADADDR_MASK
    if not loaded.low <= entry < loaded.high:
        raise KernelImageError(f"{name}'s entry {entry:#x} is outside its image [{loaded.low:#x}, {loaded.high:#x})",
                               "the kernel file is corrupt")
    howto, root, ignored = parse_cmdline(cmdline)
    entries = placement.memory_map(mem)
    records = [console_record(), memmap_record(entries)]
    if root:
        records.append(rootdevice_record(root))
    bootinfo, bootinfo_size = write_bootinfo(mem, records)

    extmem_kib = max(0, placement.low_ram_top(mem) - layout.HIGH_RAM_START) // 1024
    basemem_kib = layout.LOW_RAM_END // 1024
    args = [howto, 0, bootinfo, 0, extmem_kib, basemem_kib]   # bootdev 0 and esym 0: no symbols
    esp = placement.write_cdecl_stack(mem, args)
    state = protected32_entry(mem, entry, rsp=esp)
    info = {"protocol": "netbsd", "entry_point": entry, "load_range": (loaded.low, loaded.high),
            "boothowto": howto, "root": root, "cmdline": cmdline, "ignored_cmdline": ignored,
            "memmap": entries, "biosextmem_kib": extmem_kib, "biosbasemem_kib": basemem_kib}
    regions = list(loaded.regions) + [("bootinfo", bootinfo, bootinfo_size),
                                      ("stack", esp, 4 * (len(args) + 1)),
                                      ("gdt", state.gdt_base, state.gdt_limit + 1)]
    return BootPlan(entry=state, info=info, regions=regions)
