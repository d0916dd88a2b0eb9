"""Linux x86-64 boot protocol, 64-bit entry (Documentation/arch/x86/boot.rst).

The protected-mode part of the bzImage is loaded at its preferred address, a zero page
(struct boot_params) is built from the file's own setup header, and the CPU starts in long
mode at load + 0x200 with RSI pointing at the zero page.
"""
from __future__ import annotations

import struct

from harness import layout
from harness.boot import placement
from harness.boot.entry import long64_entry
from harness.boot.image import CAN_USE_HEAP, LOADED_HIGH, SetupHeader, parse_setup_header, require_64bit_entry
from harness.boot.plan import BootPlan
from harness.errors import KernelImageError
from harness.memory import GuestRam

ZERO_PAGE_SIZE = 0x1000
SETUP_HEADER_START = 0x1F1
# boot_params offsets
BP_ACPI_RSDP_ADDR = 0x070       # u64, read by kernels of boot protocol >= 2.14
RSDP_PROTOCOL = 0x020E
BP_E820_ENTRIES = 0x1E8
BP_TYPE_OF_LOADER = 0x210
BP_LOADFLAGS = 0x211
BP_RAMDISK_IMAGE = 0x218
BP_RAMDISK_SIZE = 0x21C
BP_HEAP_END_PTR = 0x224
BP_CMD_LINE_PTR = 0x228
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES = 128
LOADER_UNDEFINED = 0xFF
ENTRY64_OFFSET = 0x200
# The setup heap would end at 0xe000 from the real-mode segment; heap_end_ptr is that minus 0x200.
HEAP_END_PTR = 0xE000 - 0x200


def load_address(hdr: SetupHeader) -> int:
    """pref_address when the kernel states one, else 1 MiB; relocatable kernels are aligned up
    to kernel_alignment (a non-relocatable kernel must run where it was linked)."""
    addr = hdr.pref_address or layout.KERNEL_LOAD_ADDR
    if hdr.relocatable and hdr.kernel_alignment:
        addr = placement.align_up(addr, hdr.kernel_alignment)
    return addr


def zero_page(data: bytes, hdr: SetupHeader, cmdline_ptr: int, initrd: tuple[int, int] | None,
              e820: list[tuple[int, int, int]], rsdp: int = 0) -> bytes:
    page = bytearray(ZERO_PAGE_SIZE)
    if rsdp and hdr.version >= RSDP_PROTOCOL:
        struct.pack_into("<Q", page, BP_ACPI_RSDP_ADDR, rsdp)  # older kernels scan 0xE0000-0xFFFFF
    # The setup header is copied as the kernel wrote it, as far as the header says it goes.
    page[SETUP_HEADER_START:hdr.header_end] = data[SETUP_HEADER_START:hdr.header_end]
    page[BP_TYPE_OF_LOADER] = LOADER_UNDEFINED
    page[BP_LOADFLAGS] = (hdr.loadflags | LOADED_HIGH | CAN_USE_HEAP) & 0xFF
    struct.pack_into("<H", page, BP_HEAP_END_PTR, HEAP_END_PTR)
    struct.pack_into("<I", page, BP_CMD_LINE_PTR, cmdline_ptr)
    if initrd:
        struct.pack_into("<II", page, BP_RAMDISK_IMAGE, initrd[0], initrd[1])
    if len(e820) > E820_MAX_ENTRIES:
        raise KernelImageError("the memory map has too many entries for boot_params", "report this harness bug")
    page[BP_E820_ENTRIES] = len(e820)
    for i, (addr, size, kind) in enumerate(e820):
        struct.pack_into("<QQI", page, BP_E820_TABLE + 20 * i, addr, size, kind)
    return bytes(page)


def load_bzimage(mem: GuestRam, data: bytes, initrd: bytes | None, cmdline: str, name: str = "kernel",
                 rsdp: int = 0) -> BootPlan:
    hdr = parse_setup_header(data, name)
    require_64bit_entry(hdr, name)
    kernel = data[hdr.pm_offset:]
    load = load_address(hdr)
    # The kernel decompresses itself in place and needs init_size bytes from its load address.
    footprint = max(len(kernel), hdr.init_size)
    placement.check_range(mem, f"{name} ({placement.mib(footprint)} incl. its decompression room)",
                          load, footprint)
    mem.write(load, kernel)
    regions = [("kernel", load, len(kernel))]
    info: dict = {"protocol": "bzimage", "boot_protocol": hdr.version_str(), "entry_point": load + ENTRY64_OFFSET,
                  "load_range": (load, load + footprint), "kernel_version": hdr.kernel_version}

    cmd_gpa, cmd_len = placement.write_cmdline(mem, cmdline, limit=hdr.cmdline_size + 1)
    regions.append(("cmdline", cmd_gpa, cmd_len + 1))
    info["cmdline"] = cmdline

    initrd_range = None
    if initrd is not None:
        # initrd_addr_max is the highest address the initrd may occupy (inclusive).
        gpa = placement.place_high(mem, "initrd", len(initrd), floor=load + footprint,
                                   ceiling=hdr.initrd_addr_max + 1)
        mem.write(gpa, initrd)
        initrd_range = (gpa, len(initrd))
        regions.append(("initrd", gpa, len(initrd)))
        info["initrd"] = initrd_range

    e820 = placement.memory_map(mem)
    mem.write(layout.ZERO_PAGE_ADDR, zero_page(data, hdr, cmd_gpa, initrd_range, e820, rsdp))
    info["rsdp"] = rsdp
    regions.append(("zero_page", layout.ZERO_PAGE_ADDR, ZERO_PAGE_SIZE))
    info["memmap"] = e820

    state = long64_entry(mem, load + ENTRY64_OFFSET, rsi=layout.ZERO_PAGE_ADDR, rsp=layout.BOOT_STACK_TOP)
    regions += [("gdt", state.gdt_base, state.gdt_limit + 1), ("pml4", layout.PML4_ADDR, 0x1000),
                ("pdpt", layout.PDPT_ADDR, 0x1000), ("pd", layout.PD_ADDR, layout.PD_COUNT * 0x1000)]
    return BootPlan(entry=state, info=info, regions=regions)
