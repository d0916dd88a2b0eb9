"""Where things go in guest memory, checked: kernel segments, initrds, command lines.

Shared by every loader so that all of them refuse the same things the same way: a segment
outside RAM or inside the boot tables, an initrd that does not fit, a command line that is too
long. Errors name the sizes and say "give the guest more memory" when that is the fix.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness import layout
from harness.boot.image import ElfImage
from harness.errors import KernelImageError
from harness.memory import GuestRam

PAGE = 0x1000
# Everything below this is the loaders' own: GDT, boot info page, PVH start info, zero page,
# stack, page tables, protocol tables and the command line.
BOOT_AREA_END = layout.CMDLINE_ADDR + layout.CMDLINE_MAX


def mib(n: int) -> str:
    return f"{n / layout.MiB:.1f} MiB"


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def align_down(value: int, align: int) -> int:
    return value // align * align


def low_ram_top(mem: GuestRam) -> int:
    """End of the RAM below the MMIO hole (every loader places things below 4 GiB)."""
    first = mem.regions()[0]
    return first.guest_addr + first.size


def check_range(mem: GuestRam, name: str, gpa: int, size: int) -> None:
    """A loader-computed range must be RAM, clear of the boot tables and of the BIOS area."""
    if size <= 0:
        return
    end = gpa + size
    if gpa < BOOT_AREA_END:
        raise KernelImageError(f"{name} at [{gpa:#x}, {end:#x}) overlaps the boot tables below "
                               f"{BOOT_AREA_END:#x}", "this kernel wants to load too low for the harness "
                               "layout; use a kernel linked at 1 MiB or above")
    if gpa < layout.HIGH_RAM_START and end > layout.LOW_RAM_END:
        raise KernelImageError(f"{name} at [{gpa:#x}, {end:#x}) overlaps the BIOS area "
                               f"[{layout.LOW_RAM_END:#x}, {layout.HIGH_RAM_START:#x})",
                               "use a kernel that loads at 1 MiB or above")
    if not mem.contains(gpa, size):
        raise KernelImageError(f"{name} needs guest memory [{gpa:#x}, {end:#x}) ({mib(size)}) but the guest "
                               f"has {mem.size // layout.MiB} MiB of RAM", "give the guest more memory")


@dataclass
class Loaded:
    low: int                      # lowest guest-physical address written
    high: int                     # end of the highest segment (incl. bss)
    regions: list[tuple[str, int, int]]


def load_segments(mem: GuestRam, elf: ElfImage, address_of, name: str = "kernel") -> Loaded:
    """Copy every PT_LOAD segment to address_of(segment), zero its bss, check everything first."""
    segments = elf.loads()
    if not segments:
        raise KernelImageError(f"{name} has no loadable segments", "check that the file is a kernel")
    placed = [(address_of(seg), seg) for seg in segments]
    for gpa, seg in placed:
        check_range(mem, f"{name} segment (paddr {seg.paddr:#x}, {mib(seg.memsz)})", gpa, seg.memsz)
    placed.sort(key=lambda p: p[0])
    for (a, sa), (b, _) in zip(placed, placed[1:]):
        if a + sa.memsz > b:
            raise KernelImageError(f"{name} has overlapping segments at {a:#x} and {b:#x}",
                                   "the ELF file is corrupt; download it again")
    regions = []
    for i, (gpa, seg) in enumerate(placed):
        mem.write(gpa, elf.segment_bytes(seg))
        if seg.memsz > seg.filesz:
            mem.fill(gpa + seg.filesz, seg.memsz - seg.filesz)
        regions.append((f"kernel.seg{i}", gpa, seg.memsz))
    return Loaded(low=placed[0][0], high=max(g + s.memsz for g, s in placed), regions=regions)


def place_high(mem: GuestRam, what: str, size: int, floor: int, ceiling: int | None = None,
               align: int = PAGE) -> int:
    """Highest `align`-aligned address for `size` bytes that ends below min(RAM top, ceiling)
    and starts at or above `floor` (the end of the kernel). Linux and the BSD loaders put
    initrds high for the same reason: the kernel's own early allocations grow upwards."""
    top = low_ram_top(mem)
    if ceiling is not None:
        top = min(top, ceiling)
    gpa = align_down(top - size, align)
    if size > top or gpa < floor:
        raise KernelImageError(f"{what} of {mib(size)} does not fit between the kernel's end at "
                               f"{floor:#x} and {top:#x} in {mem.size // layout.MiB} MiB of guest memory",
                               "give the guest more memory")
    return gpa


def write_cmdline(mem: GuestRam, cmdline: str, limit: int = layout.CMDLINE_MAX) -> tuple[int, int]:
    """NUL-terminated command line at layout.CMDLINE_ADDR, zero-padded to a 4-byte boundary plus
    one more zero word (NetBSD's PVH entry copies 32-bit words until a zero word).
    `limit` counts the terminating NUL. Returns (gpa, length without the NUL)."""
    raw = cmdline.encode("utf-8")
    if b"\0" in raw:
        raise KernelImageError("the kernel command line contains a NUL byte", "remove it")
    limit = min(limit, layout.CMDLINE_MAX - 4)
    if len(raw) + 1 > limit:
        raise KernelImageError(f"the kernel command line is {len(raw)} bytes; this kernel accepts at "
                               f"most {limit - 1}", "shorten the command line")
    padded = raw + b"\0" * (align_up(len(raw) + 1, 4) - len(raw) + 4)
    mem.write(layout.CMDLINE_ADDR, padded)
    return layout.CMDLINE_ADDR, len(raw)


def memory_map(mem: GuestRam) -> list[tuple[int, int, int]]:
    """The (addr, size, type) map every protocol hands over (e820 types)."""
    return layout.e820_map(mem.size)


def check_kernel_fits(mem: GuestRam, size: int, name: str = "kernel") -> None:
    if size > mem.size:
        raise KernelImageError(f"{name} needs {mib(size)} but the guest has {mem.size // layout.MiB} MiB",
                               "give the guest more memory")


def write_cdecl_stack(mem: GuestRam, args: list[int]) -> int:
    """A 32-bit call frame below layout.BOOT_STACK_TOP: [esp] = return address 0 (the kernel
    never returns), [esp+4] = args[0], ... Returns ESP (16-byte aligned)."""
    words = [0] + list(args)
    esp = align_down(layout.BOOT_STACK_TOP - 4 * len(words), 16)
    mem.write(esp, b"".join((w & 0xFFFF_FFFF).to_bytes(4, "little") for w in words))
    return esp
