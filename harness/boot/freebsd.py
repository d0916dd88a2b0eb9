"""FreeBSD amd64 native entry, bhyveload / userboot style (stand/i386/libi386/bootinfo64.c,
sys/amd64/amd64/locore.S `btext`, sys/sys/linker.h).

The kernel (linked at KERNBASE 0xffffffff80000000 + 2 MiB) is loaded at vaddr - KERNBASE and
entered in 64-bit mode at its virtual e_entry, so the page tables map the first 2 GiB both
1:1 and at KERNBASE. locore reads two 32-bit words above the return address: modulep and
kernend (physical). modulep points at the preload metadata: records {u32 type; u32 size; data
padded to 8 bytes}: the kernel's NAME, TYPE "elf kernel", ADDR, SIZE, then METADATA records
HOWTO, ENVP (kenv: NUL-separated name=value strings), KERNEND, SMAP (the BIOS memory map;
amd64 panics without it), and END.
"""
from __future__ import annotations

import struct

from harness import layout
from harness.boot import placement
from harness.boot.entry import long64_entry
from harness.boot.image import EM_X86_64, ElfImage
from harness.boot.plan import BootPlan
from harness.errors import KernelImageError
from harness.memory import GuestRam

KERNBASE = 0xFFFF_FFFF_8000_0000
MODINFO_END, MODINFO_NAME, MODINFO_TYPE, MODINFO_ADDR, MODINFO_SIZE = 0, 1, 2, 3, 4
MODINFO_METADATA = 0x8000
MODINFOMD_ENVP, MODINFOMD_HOWTO, MODINFOMD_KERNEND = 6, 7, 8
MODINFOMD_SMAP = 0x1001
KERNEL_NAME = b"/boot/kernel/kernel\0"
KERNEL_TYPE = b"elf kernel\0"

# boot flags (sys/sys/reboot.h) by loader letter (stand/common/boot.c)
HOWTO_FLAGS = {"a": 0x1,        # RB_ASKNAME
               "s": 0x2,        # RB_SINGLE
               "d": 0x40,       # RB_KDB
               "v": 0x800,      # RB_VERBOSE
               "h": 0x1000,     # RB_SERIAL
               "C": 0x2000,     # RB_CDROM
               "m": 0x10000,    # RB_MUTE
               "p": 0x100000,   # RB_PAUSE
               "D": 0x20000000}  # RB_MULTIPLE


def parse_cmdline(cmdline: str) -> tuple[int, list[str], list[str]]:
    """boot flags ("-s", "-hv"), kenv entries (name=value), and ignored words."""
    howto, env, ignored = 0, [], []
    for word in cmdline.split():
        if word.startswith("-") and len(word) > 1 and all(c in HOWTO_FLAGS for c in word[1:]):
            for c in word[1:]:
                howto |= HOWTO_FLAGS[c]
        elif "=" in word and not word.startswith("="):
            env.append(word)
        else:
            ignored.append(word)
    return howto, env, ignored


def env_bytes(env: list[str]) -> bytes:
    """kenv block: each "name=value" NUL-terminated, the block ended by an empty string."""
    return b"".join(e.encode("utf-8") + b"\0" for e in env) + b"\0"


def md_record(rtype: int, data: bytes) -> bytes:
    return struct.pack("<II", rtype, len(data)) + data + bytes(-len(data) % 8)


def smap_bytes(entries: list[tuple[int, int, int]]) -> bytes:
    return b"".join(struct.pack("<QQI", a, s, t) for a, s, t in entries)


def metadata(kernel_addr: int, kernel_size: int, howto: int, envp: int, kernend: int,
             entries: list[tuple[int, int, int]]) -> bytes:
    return b"".join([
        md_record(MODINFO_NAME, KERNEL_NAME),
        md_record(MODINFO_TYPE, KERNEL_TYPE),
        md_record(MODINFO_ADDR, struct.pack("<Q", kernel_addr)),
        md_record(MODINFO_SIZE, struct.pack("<Q", kernel_size)),
        md_record(MODINFO_METADATA | MODINFOMD_HOWTO, struct.pack("<i", howto)),
        md_record(MODINFO_METADATA | MODINFOMD_ENVP, struct.pack("<Q", envp)),
        md_record(MODINFO_METADATA | MODINFOMD_KERNEND, struct.pack("<Q", kernend)),
        md_record(MODINFO_METADATA | MODINFOMD_SMAP, smap_bytes(entries)),
        md_record(MODINFO_END, b""),
    ])


def physical(seg_vaddr: int, seg_paddr: int) -> int:
    return seg_vaddr - KERNBASE if seg_vaddr >= KERNBASE else seg_paddr


def map_kernbase(mem: GuestRam) -> None:
    """Add KERNBASE -> physical 0 for 2 GiB: PML4[511] -> the same PDPT, PDPT[510..511] ->
    the first two page directories the identity map already uses."""
    flags = 0x3
    mem.write_u64(layout.PML4_ADDR + 511 * 8, layout.PDPT_ADDR | flags)
    mem.write_u64(layout.PDPT_ADDR + 510 * 8, layout.PD_ADDR | flags)
    mem.write_u64(layout.PDPT_ADDR + 511 * 8, (layout.PD_ADDR + 0x1000) | flags)


def load_freebsd(mem: GuestRam, elf: ElfImage, initrd: bytes | None, cmdline: str, name: str = "kernel") -> BootPlan:
    if elf.machine != EM_X86_64 or elf.elfclass != 64:
        raise KernelImageError(f"{name} is not a 64-bit kernel; the FreeBSD native entry here is for amd64",
                               "use a FreeBSD/amd64 kernel")
    if initrd is not None:
        raise KernelImageError("the FreeBSD native entry takes no initrd (md_root images are not supported)",
                               "boot from a disk, or embed the root file system in the kernel")
    if elf.entry < KERNBASE:
        raise KernelImageError(f"{name}'s entry {elf.entry:#x} is below KERNBASE", "use a FreeBSD/amd64 kernel")
    loaded = placement.load_segments(mem, elf, lambda seg: physical(seg.vaddr, seg.paddr), name)
    entry_phys = elf.entry - KERNBASE
    if not loaded.low <= entry_phys < loaded.high:
        raise KernelImageError(f"{name}'s entry {elf.entry:#x} is outside its image", "the kernel file is corrupt")

    howto, env, ignored = parse_cmdline(cmdline)
    entries = placement.memory_map(mem)
    envp = placement.align_up(loaded.high, placement.PAGE)
    env_blob = env_bytes(env)
    modulep = placement.align_up(envp + len(env_blob), placement.PAGE)
    size = len(metadata(0, 0, 0, 0, 0, entries))
    kernend = placement.align_up(modulep + size, placement.PAGE)
    md = metadata(loaded.low, loaded.high - loaded.low, howto, envp, kernend, entries)
    placement.check_range(mem, "FreeBSD environment and metadata", envp, kernend - envp)
    mem.write(envp, env_blob)
    mem.write(modulep, md)

    esp = placement.write_cdecl_stack(mem, [modulep, kernend])
    state = long64_entry(mem, elf.entry, rsp=esp)
    map_kernbase(mem)
    regions = list(loaded.regions) + [
        ("freebsd_env", envp, len(env_blob)), ("freebsd_metadata", modulep, len(md)),
        ("stack", esp, 12), ("gdt", state.gdt_base, state.gdt_limit + 1),
        ("pml4", layout.PML4_ADDR, 0x1000), ("pdpt", layout.PDPT_ADDR, 0x1000),
        ("pd", layout.PD_ADDR, layout.PD_COUNT * 0x1000)]
    info = {"protocol": "freebsd", "entry_point": elf.entry, "load_range": (loaded.low, loaded.high),
            "howto": howto, "kenv": env, "cmdline": cmdline, "ignored_cmdline": ignored,
            "modulep": modulep, "kernend": kernend, "memmap": entries}
    return BootPlan(entry=state, info=info, regions=regions)
