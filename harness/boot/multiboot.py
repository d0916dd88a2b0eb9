"""Multiboot version 1 (Multiboot Specification 0.6.96).

The header sits 4-byte aligned in the first 8192 bytes: magic 0x1BADB002, flags, checksum
(the three sum to zero). The image is an ELF file loaded by its program headers or, with flag
bit 16, a raw image described by the header's address fields (the "a.out kludge"). The kernel
starts in 32-bit protected mode with EAX = 0x2BADB002 and EBX = the multiboot information.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from harness import layout
from harness.boot import placement
from harness.boot.entry import protected32_entry
from harness.boot.image import ELF_MAGIC, parse_elf
from harness.boot.plan import BootPlan
from harness.errors import KernelImageError
from harness.memory import GuestRam

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH_LIMIT = 8192

# header flags
MBH_PAGE_ALIGN = 1 << 0      # modules page aligned
MBH_MEMORY_INFO = 1 << 1     # mem_* (and mmap) must be provided
MBH_VIDEO_MODE = 1 << 2      # video mode table must be provided
MBH_AOUT_KLUDGE = 1 << 16    # header_addr .. entry_addr are valid
HONOURED_REQUIRED = MBH_PAGE_ALIGN | MBH_MEMORY_INFO

# info flags
MBI_MEMORY = 1 << 0
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9

INFO_SIZE = 88               # up to and including the VBE fields, all zero
LOADER_NAME = b"harness\0"
# layout inside layout.BOOT_TABLES_ADDR: info, modules, mmap, strings
MODS_OFFSET = 0x100
MMAP_OFFSET = 0x200
STRINGS_OFFSET = 0x800


@dataclass
class MultibootHeader:
    offset: int              # file offset of the magic
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_header(data: bytes) -> MultibootHeader | None:
    """The first valid Multiboot v1 header in the first 8 KiB (magic + checksum both right)."""
    limit = min(len(data), SEARCH_LIMIT) - 12
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFF_FFFF == 0:
            hdr = MultibootHeader(offset=off, flags=flags)
            if flags & MBH_AOUT_KLUDGE:
                if off + 32 > len(data):
                    raise KernelImageError("multiboot header is truncated (address fields missing)",
                                           "download the kernel again")
                (hdr.header_addr, hdr.load_addr, hdr.load_end_addr, hdr.bss_end_addr,
                 hdr.entry_addr) = struct.unpack_from("<IIIII", data, off + 12)
            return hdr
    return None


def check_required_flags(hdr: MultibootHeader, name: str) -> None:
    """Bits 0-15 are requirements: refuse the ones this loader cannot meet."""
    required = hdr.flags & 0xFFFF
    if required & MBH_VIDEO_MODE:
        raise KernelImageError(f"{name} requires a graphics video mode (multiboot flag bit 2); the harness "
                               "has only a serial console", "use a build of the kernel without a framebuffer request")
    unknown = required & ~(HONOURED_REQUIRED | MBH_VIDEO_MODE)
    if unknown:
        raise KernelImageError(f"{name} requires multiboot features {unknown:#x} this loader does not know",
                               "use a Multiboot v1 kernel that only asks for memory info and aligned modules")


def _load_aout(mem: GuestRam, data: bytes, hdr: MultibootHeader, name: str) -> tuple[int, int, int, list]:
    if hdr.load_addr > hdr.header_addr:
        raise KernelImageError(f"{name}: multiboot load_addr {hdr.load_addr:#x} is above header_addr "
                               f"{hdr.header_addr:#x}", "the kernel's multiboot header is corrupt")
    file_start = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if file_start < 0:
        raise KernelImageError(f"{name}: multiboot header places the image before the file start",
                               "the kernel's multiboot header is corrupt")
    if hdr.load_end_addr:
        if hdr.load_end_addr < hdr.load_addr:
            raise KernelImageError(f"{name}: multiboot load_end_addr is below load_addr", "the header is corrupt")
        length = hdr.load_end_addr - hdr.load_addr
    else:
        length = len(data) - file_start
    if file_start + length > len(data):
        raise KernelImageError(f"{name} is truncated: its multiboot header wants {length} bytes from "
                               f"offset {file_start:#x}, the file has {len(data)}", "download it again")
    end = max(hdr.bss_end_addr, hdr.load_addr + length)
    placement.check_range(mem, f"{name} image", hdr.load_addr, end - hdr.load_addr)
    mem.write(hdr.load_addr, data[file_start:file_start + length])
    if end > hdr.load_addr + length:
        mem.fill(hdr.load_addr + length, end - hdr.load_addr - length)
    return hdr.entry_addr, hdr.load_addr, end, [("kernel", hdr.load_addr, end - hdr.load_addr)]


def _load_elf(mem: GuestRam, data: bytes, name: str) -> tuple[int, int, int, list]:
    elf = parse_elf(data, name)
    loaded = placement.load_segments(mem, elf, lambda seg: seg.paddr, name)
    entry = elf.entry
    if entry >= 1 << 32:
        # ELF64 multiboot kernels (e.g. linked high) give a virtual entry; the physical one
        # is the same offset inside the segment that contains it.
        seg = next((s for s in elf.loads() if s.vaddr <= entry < s.vaddr + s.memsz), None)
        if seg is None:
            raise KernelImageError(f"{name}'s entry point {entry:#x} is outside its segments", "the file is corrupt")
        entry = seg.paddr + (entry - seg.vaddr)
    return entry, loaded.low, loaded.high, loaded.regions


def info_bytes(flags: int, mem_lower: int, mem_upper: int, cmdline: int, mods_count: int, mods_addr: int,
               mmap_length: int, mmap_addr: int, loader_name: int) -> bytes:
    info = bytearray(INFO_SIZE)
    struct.pack_into("<III", info, 0, flags, mem_lower, mem_upper)
    struct.pack_into("<III", info, 16, cmdline, mods_count, mods_addr)
    struct.pack_into("<II", info, 44, mmap_length, mmap_addr)
    struct.pack_into("<I", info, 64, loader_name)
    return bytes(info)


def mmap_bytes(entries: list[tuple[int, int, int]]) -> bytes:
    """size-prefixed entries: size (20, not counting itself), base u64, length u64, type u32."""
    return b"".join(struct.pack("<IQQI", 20, addr, size, kind) for addr, size, kind in entries)


def load_multiboot(mem: GuestRam, data: bytes, initrd: bytes | None, cmdline: str, name: str = "kernel",
                   initrd_name: str = "initrd") -> BootPlan:
    hdr = find_header(data)
    if hdr is None:
        raise KernelImageError(f"{name} has no Multiboot v1 header in its first 8 KiB",
                               "choose the boot method that matches this kernel")
    check_required_flags(hdr, name)
    if hdr.flags & MBH_AOUT_KLUDGE:
        entry, low, high, regions = _load_aout(mem, data, hdr, name)
    elif data.startswith(ELF_MAGIC):
        entry, low, high, regions = _load_elf(mem, data, name)
    else:
        raise KernelImageError(f"{name} is not ELF and its multiboot header has no address fields (bit 16)",
                               "the kernel image is not a loadable multiboot kernel")
    if not low <= entry < high:
        raise KernelImageError(f"{name}'s entry point {entry:#x} is outside its image [{low:#x}, {high:#x})",
                               "the kernel file is corrupt")
    info: dict = {"protocol": "multiboot", "entry_point": entry, "load_range": (low, high),
                  "header_flags": hdr.flags}

    base = layout.BOOT_TABLES_ADDR
    strings = base + STRINGS_OFFSET
    # GRUB (and NetBSD's boot) put the image name first; Xen drops the first word as that name.
    full_cmdline = f"{name} {cmdline}".strip()
    cmd_gpa, cmd_len = placement.write_cmdline(mem, full_cmdline)
    regions.append(("cmdline", cmd_gpa, cmd_len + 1))
    info["cmdline"] = full_cmdline
    mem.write(strings, LOADER_NAME)
    loader_name = strings
    strings += len(LOADER_NAME)
    flags = MBI_MEMORY | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME

    mods_count, mods_addr = 0, 0
    if initrd is not None:
        gpa = placement.place_high(mem, "initrd", len(initrd), floor=placement.align_up(high, placement.PAGE))
        mem.write(gpa, initrd)
        mod_string = initrd_name.encode("utf-8") + b"\0"
        if len(mod_string) > 256:
            raise KernelImageError("initrd file name is too long for the module string", "rename it")
        mem.write(strings, mod_string)
        mods_addr = base + MODS_OFFSET
        mem.write(mods_addr, struct.pack("<IIII", gpa, gpa + len(initrd), strings, 0))
        strings += len(mod_string)
        mods_count = 1
        flags |= MBI_MODS
        regions += [("initrd", gpa, len(initrd)), ("multiboot_mods", mods_addr, 16)]
        info["initrd"] = (gpa, len(initrd))

    entries = placement.memory_map(mem)
    table = mmap_bytes(entries)
    mem.write(base + MMAP_OFFSET, table)
    low_top = placement.low_ram_top(mem)
    mem_lower = layout.LOW_RAM_END // 1024
    mem_upper = max(0, low_top - layout.HIGH_RAM_START) // 1024
    mem.write(base, info_bytes(flags, mem_lower, mem_upper, cmd_gpa, mods_count, mods_addr, len(table),
                               base + MMAP_OFFSET, loader_name))
    regions += [("multiboot_info", base, INFO_SIZE), ("multiboot_mmap", base + MMAP_OFFSET, len(table)),
                ("multiboot_strings", base + STRINGS_OFFSET, strings - base - STRINGS_OFFSET)]
    info["memmap"] = entries

    state = protected32_entry(mem, entry, rax=BOOTLOADER_MAGIC, rbx=base, rsp=layout.BOOT_STACK_TOP)
    regions.append(("gdt", state.gdt_base, state.gdt_limit + 1))
    return BootPlan(entry=state, info=info, regions=regions)
