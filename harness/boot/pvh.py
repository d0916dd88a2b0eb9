"""Xen PVH direct boot (docs/misc/pvh.pandoc, xen/include/public/arch-x86/hvm/start_info.h).

Any ELF kernel with a XEN_ELFNOTE_PHYS32_ENTRY note: Linux (CONFIG_PVH), FreeBSD, NetBSD
GENPVH. Segments load at p_paddr; the guest starts in 32-bit protected mode with EBX pointing
at hvm_start_info, which carries the command line, a memory map and the module list.
"""
from __future__ import annotations

import struct

from harness import layout
from harness.boot import placement
from harness.boot.entry import protected32_entry
from harness.boot.image import ElfImage
from harness.boot.plan import BootPlan
from harness.errors import KernelImageError
from harness.memory import GuestRam

XEN_ELFNOTE_PHYS32_ENTRY = 18
START_INFO_MAGIC = 0x336EC578
START_INFO_VERSION = 1
START_INFO_SIZE = 56
MODLIST_ENTRY_SIZE = 32
MEMMAP_ENTRY_SIZE = 24
# layout inside the PVH info page: start_info, then room for 4 modules, then the memmap
NETBSD_CMDLINE_MAX = 128
MODLIST_OFFSET = 0x40
MEMMAP_OFFSET = MODLIST_OFFSET + 4 * MODLIST_ENTRY_SIZE


def pvh_entry(elf: ElfImage) -> int | None:
    """The 32-bit physical entry from the Xen PVH note (Linux emits it 8 bytes wide)."""
    note = elf.note("Xen", XEN_ELFNOTE_PHYS32_ENTRY)
    if note is None or len(note.desc) < 4:
        return None
    return int.from_bytes(note.desc[:4], "little")


def start_info_bytes(nr_modules: int, modlist: int, cmdline: int, memmap: int, memmap_entries: int,
                     rsdp: int = 0) -> bytes:
    return struct.pack("<IIIIQQQQII", START_INFO_MAGIC, START_INFO_VERSION, 0, nr_modules, modlist,
                       cmdline, rsdp, memmap, memmap_entries, 0)


def memmap_bytes(entries: list[tuple[int, int, int]]) -> bytes:
    return b"".join(struct.pack("<QQII", addr, size, kind, 0) for addr, size, kind in entries)


def load_pvh(mem: GuestRam, elf: ElfImage, initrd: bytes | None, cmdline: str, name: str = "kernel",
             rsdp: int = 0) -> BootPlan:
    entry = pvh_entry(elf)
    if entry is None:
        raise KernelImageError(f"{name} has no Xen PVH entry note (owner 'Xen', type 18)",
                               "build the kernel with PVH support (Linux CONFIG_PVH) or choose another boot method")
    loaded = placement.load_segments(mem, elf, lambda seg: seg.paddr, name)
    if not loaded.low <= entry < loaded.high:
        raise KernelImageError(f"{name}'s PVH entry {entry:#x} is outside its loaded image "
                               f"[{loaded.low:#x}, {loaded.high:#x})", "the kernel file is corrupt")
    regions = list(loaded.regions)
    info: dict = {"protocol": "pvh", "entry_point": entry, "load_range": (loaded.low, loaded.high),
                  "elf_class": elf.elfclass}

    if elf.note("NetBSD", 1) is not None or any(n.owner == "NetBSD" for n in elf.notes):
        # NetBSD's PVH entry copies the command line into a 128-byte buffer.
        if len(cmdline.encode()) >= NETBSD_CMDLINE_MAX:
            raise KernelImageError(f"NetBSD takes at most {NETBSD_CMDLINE_MAX - 1} bytes of PVH command line, "
                                   f"this one is {len(cmdline.encode())}", "shorten the command line")
    base = layout.PVH_START_INFO_ADDR
    cmd_gpa, cmd_len = placement.write_cmdline(mem, cmdline)
    regions.append(("cmdline", cmd_gpa, cmd_len + 1))
    info["cmdline"] = cmdline

    nr_modules, modlist = 0, 0
    if initrd is not None:
        # Linux takes modlist[0] as the initrd. FreeBSD would read module 0 as loader metadata,
        # so a bare FreeBSD kernel is booted without an initrd (and without a modlist).
        gpa = placement.place_high(mem, "initrd", len(initrd), floor=placement.align_up(loaded.high, 0x1000))
        mem.write(gpa, initrd)
        modlist = base + MODLIST_OFFSET
        mem.write(modlist, struct.pack("<QQQQ", gpa, len(initrd), 0, 0))
        nr_modules = 1
        regions += [("initrd", gpa, len(initrd)), ("pvh_modlist", modlist, MODLIST_ENTRY_SIZE)]
        info["initrd"] = (gpa, len(initrd))

    entries = placement.memory_map(mem)
    table = memmap_bytes(entries)
    if MEMMAP_OFFSET + len(table) > layout.PVH_INFO_MAX:
        raise KernelImageError("the PVH memory map does not fit its page", "report this harness bug")
    mem.write(base + MEMMAP_OFFSET, table)
    mem.write(base, start_info_bytes(nr_modules, modlist, cmd_gpa, base + MEMMAP_OFFSET, len(entries), rsdp))
    info["rsdp"] = rsdp
    regions += [("pvh_start_info", base, START_INFO_SIZE), ("pvh_memmap", base + MEMMAP_OFFSET, len(table))]
    info["memmap"] = entries

    state = protected32_entry(mem, entry, rbx=base, rsp=layout.BOOT_STACK_TOP)
    regions.append(("gdt", state.gdt_base, state.gdt_limit + 1))
    return BootPlan(entry=state, info=info, regions=regions)
