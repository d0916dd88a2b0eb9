"""aarch64 loaders: the arm64 `Image` protocol (plain or gzip'd) and the NetBSD aarch64 ELF kernel.

Facts followed (Linux Documentation/arch/arm64/booting.rst; NetBSD sys/arch/aarch64/aarch64/locore.S):
- Image header, 64 bytes little-endian: code0 u32 @0, code1 u32 @4, text_offset u64 @8,
  image_size u64 @16 (effective size, BSS included), flags u64 @24, res2-4, magic "ARM\\x64" @56,
  res5 u32 @60 (offset of a PE header when the Image carries an EFI stub, else 0).
- flags: bit 0 kernel endianness (1 = big-endian: refused here, the VM runs little-endian),
  bits 1-2 page size (0 unspecified, 1 = 4K, 2 = 16K, 3 = 64K), bit 3 physical placement (0 = the
  2 MiB-aligned base as close as possible to the start of DRAM, 1 = anywhere in DRAM).
- image_size == 0 means a pre-3.17 kernel: assume text_offset 0x80000 and an unknown size.
- The Image is placed text_offset bytes above a 2 MiB-aligned base; image_size bytes from there
  must be free. The DTB is 8-byte aligned, at most 2 MiB, and must not share a 2 MiB region with
  anything mapped differently (layout.a64_fdt_addr puts it in the last 2 MiB of RAM).
- Entry: x0 = physical address of the DTB, x1 = x2 = x3 = 0, MMU and D-cache off, PSTATE.DAIF
  masked, EL1 (or EL2): PSTATE = EL1h | DAIF = 0x3c5. The initrd is announced by /chosen's
  linux,initrd-start/-end.
- NetBSD/aarch64 (seed 000): locore's aarch64_start needs only the DTB pointer in x0; it runs at
  EL1 or EL2 with the MMU off and finds its physical load address PC-relatively, so the ELF
  `netbsd` is laid out contiguously (segments at their offsets from the lowest p_vaddr) at a
  2 MiB-aligned base and entered at the same offset as e_entry. Its `netbsd.img` is an Image and
  takes the Image path.
A header (or ELF program header) that promises more bytes than the file holds is refused with a
one-line KernelImageError, before anything is written to guest memory.
"""
from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field
from pathlib import Path

from harness import layout
from harness.arch.aarch64.regs import PSTATE_EL1H_DAIF
from harness.boot.fdt import Aarch64Machine, build_fdt
from harness.boot.image import (ARM64_IMAGE_MAGIC, ELF_MAGIC, EM_AARCH64, read_initrd, read_kernel_any_arch,
                                parse_elf)
from harness.boot.plan import BootPlan
from harness.errors import ConfigError, KernelImageError
from harness.memory import GuestRam

IMAGE_HEADER = struct.Struct("<IIQQQQQQ4sI")
IMAGE_HEADER_SIZE = IMAGE_HEADER.size                     # 64
FLAG_BIG_ENDIAN = 1 << 0
FLAG_PAGE_SIZE_SHIFT, FLAG_PAGE_SIZE_MASK = 1, 0x3
FLAG_PLACE_ANYWHERE = 1 << 3
PAGE_SIZES = {0: "unspecified", 1: "4K", 2: "16K", 3: "64K"}
LEGACY_TEXT_OFFSET = 0x80000
PE_SIGNATURE = b"PE\0\0"
PE_COFF_HEADER = struct.Struct("<HHIIIHH")                # machine, nsections, ..., size of optional hdr, chars
PE_SECTION = struct.Struct("<8sIIIIIIHHI")                # name, vsize, vaddr, raw size, raw ptr, ...
IMAGE_FILE_MACHINE_ARM64 = 0xAA64
ELFOSABI_NETBSD = 2
INITRD_ALIGN = 2 * layout.MiB

A64_METHODS = ("image", "netbsd")


@dataclass
class Arm64Entry:
    """The boot vCPU at its first instruction (KVM_SET_ONE_REG of PC, X0-X3, PSTATE)."""
    pc: int
    x: tuple[int, int, int, int]                          # x0..x3
    pstate: int = PSTATE_EL1H_DAIF


@dataclass
class ImageHeader:
    text_offset: int
    image_size: int                                       # 0: unknown (pre-3.17 kernel)
    flags: int
    pe_offset: int

    @property
    def page_size(self) -> str:
        return PAGE_SIZES[(self.flags >> FLAG_PAGE_SIZE_SHIFT) & FLAG_PAGE_SIZE_MASK]


@dataclass
class Aarch64Boot:
    plan: BootPlan
    machine: Aarch64Machine                               # the description the DTB was built from
    fdt: bytes = field(repr=False, default=b"")


def is_arm64_image(data: bytes) -> bool:
    return len(data) >= IMAGE_HEADER_SIZE and data[56:60] == ARM64_IMAGE_MAGIC


def parse_image_header(data: bytes, name: str) -> ImageHeader:
    if len(data) < IMAGE_HEADER_SIZE:
        raise KernelImageError(f"{name} is {len(data)} bytes, shorter than the 64-byte arm64 Image header",
                               "download it again")
    _c0, _c1, text_offset, image_size, flags, _r2, _r3, _r4, magic, res5 = IMAGE_HEADER.unpack_from(data)
    if magic != ARM64_IMAGE_MAGIC:
        raise KernelImageError(f"{name} has no arm64 Image magic at offset 0x38", "give an arm64 Image")
    if flags & FLAG_BIG_ENDIAN:
        raise KernelImageError(f"{name} is a big-endian arm64 kernel", "use a little-endian kernel")
    if image_size == 0:
        text_offset = LEGACY_TEXT_OFFSET
    elif image_size < len(data):
        raise KernelImageError(f"{name}: the Image header's image_size {image_size:#x} is smaller than the "
                               f"file ({len(data):#x} bytes): corrupt header", "download it again")
    if text_offset % 4096:
        raise KernelImageError(f"{name}: text_offset {text_offset:#x} is not page aligned", "download it again")
    header = ImageHeader(text_offset, image_size, flags, res5)
    _check_pe(data, header, name)
    return header


def _check_pe(data: bytes, header: ImageHeader, name: str) -> None:
    """An EFI-stub Image's PE sections must lie inside the file (a truncated download fails here)."""
    if header.pe_offset == 0:
        return
    off = header.pe_offset
    if off + 4 + PE_COFF_HEADER.size > len(data) or data[off:off + 4] != PE_SIGNATURE:
        raise KernelImageError(f"{name}: the Image header points at a PE header at {off:#x} that the "
                               f"{len(data)}-byte file does not hold", "download it again")
    machine, nsections, _t, _p, _n, opt_size, _ch = PE_COFF_HEADER.unpack_from(data, off + 4)
    if machine != IMAGE_FILE_MACHINE_ARM64:
        raise KernelImageError(f"{name}: PE machine {machine:#x} is not arm64", "give an arm64 kernel")
    table = off + 4 + PE_COFF_HEADER.size + opt_size
    if table + nsections * PE_SECTION.size > len(data):
        raise KernelImageError(f"{name}: the PE section table ends past the end of the file", "download it again")
    for i in range(nsections):
        sec = PE_SECTION.unpack_from(data, table + i * PE_SECTION.size)
        raw_size, raw_ptr = sec[3], sec[4]
        if raw_size and raw_ptr + raw_size > len(data):
            label = sec[0].rstrip(b"\0").decode("ascii", "replace")
            raise KernelImageError(f"{name} is truncated: PE section {label} needs bytes up to "
                                   f"{raw_ptr + raw_size:#x}, the file has {len(data):#x}", "download it again")


def _kernel_base() -> int:
    # Placement bit 0 asks for the 2 MiB-aligned base closest to the start of DRAM; bit 1 allows
    # anywhere. The start of DRAM satisfies both.
    return layout.A64_RAM_START


def _check_fits(end: int, machine: Aarch64Machine, what: str) -> None:
    if end > machine.fdt_addr:
        raise ConfigError(f"{what} ends at {end:#x}, past the device tree at {machine.fdt_addr:#x}",
                          "give the guest more memory")


def _place_image(mem: GuestRam, data: bytes, header: ImageHeader, machine: Aarch64Machine,
                 name: str) -> tuple[int, int, dict]:
    load = _kernel_base() + header.text_offset
    size = header.image_size or len(data)
    _check_fits(load + size, machine, f"kernel {name}")
    mem.write(load, data)
    info = {"protocol": "arm64-image", "text_offset": header.text_offset, "image_size": header.image_size,
            "page_size": header.page_size, "efi_stub": bool(header.pe_offset)}
    return load, load + size, info


def _place_netbsd_elf(mem: GuestRam, data: bytes, machine: Aarch64Machine,
                      name: str) -> tuple[int, int, dict]:
    elf = parse_elf(data, name, machines=(EM_AARCH64,))
    loads = elf.loads()
    if not loads:
        raise KernelImageError(f"{name} has no loadable segment", "give a NetBSD/aarch64 kernel")
    low = min(s.vaddr for s in loads)
    high = max(s.vaddr + s.memsz for s in loads)
    if not low <= elf.entry < high:
        raise KernelImageError(f"{name}: entry {elf.entry:#x} is outside its segments", "download it again")
    base = _kernel_base()
    _check_fits(base + (high - low), machine, f"kernel {name}")
    for seg in loads:
        dest = base + (seg.vaddr - low)
        mem.write(dest, elf.segment_bytes(seg))
        mem.fill(dest + seg.filesz, seg.memsz - seg.filesz)
    info = {"protocol": "netbsd-aarch64", "link_base": low}
    return base + (elf.entry - low), base + (high - low), info


def _place_initrd(mem: GuestRam, initrd: bytes, kernel_end: int, machine: Aarch64Machine) -> tuple[int, int]:
    start = -(-kernel_end // INITRD_ALIGN) * INITRD_ALIGN
    _check_fits(start + len(initrd), machine, "the initrd")
    mem.write(start, initrd)
    return start, len(initrd)


def detect_aarch64_method(data: bytes, name: str) -> str:
    """`image` for an arm64 Image (Linux, NetBSD's netbsd.img), `netbsd` for a NetBSD aarch64 ELF."""
    if is_arm64_image(data):
        return "image"
    if data.startswith(ELF_MAGIC):
        elf = parse_elf(data, name, machines=(EM_AARCH64,))
        if elf.osabi == ELFOSABI_NETBSD or any(n.owner == "NetBSD" for n in elf.notes):
            return "netbsd"
        raise KernelImageError(f"{name} is an aarch64 ELF file but not a NetBSD kernel",
                               "boot a Linux kernel as its arm64 Image (arch/arm64/boot/Image)")
    raise KernelImageError(f"{name} is neither an arm64 Image nor an aarch64 ELF kernel",
                           "give an arm64 Image, Image.gz or a NetBSD/aarch64 kernel")


def load_aarch64(method: str, mem: GuestRam, kernel: Path, initrd: Path | None,
                 machine: Aarch64Machine) -> Aarch64Boot:
    """Load `kernel` (and `initrd`) for `machine`, write its DTB, and say where the vCPU starts.

    `machine` describes the VM (memory, vCPUs, command line, virtio slots); the returned one is
    the same with the initrd's placement filled in, and is what the DTB says.
    """
    kernel = Path(kernel)
    data = read_kernel_any_arch(kernel, mem.size)
    if method == "auto":
        method = detect_aarch64_method(data, kernel.name)
    if method == "image":
        entry_pc, kernel_end, info = _place_image(mem, data, parse_image_header(data, kernel.name),
                                                  machine, kernel.name)
    elif method == "netbsd":
        entry_pc, kernel_end, info = _place_netbsd_elf(mem, data, machine, kernel.name)
    else:
        raise ConfigError(f"boot method {method!r} is not an aarch64 boot method",
                          f"use one of: auto, {', '.join(A64_METHODS)}")
    regions = [("kernel", _kernel_base(), kernel_end - _kernel_base())]
    if initrd is not None:
        start, size = _place_initrd(mem, read_initrd(Path(initrd), mem.size), kernel_end, machine)
        machine = dataclasses.replace(machine, initrd=(start, size))
        regions.append(("initrd", start, size))
        info["initrd"] = {"addr": start, "size": size}
    blob = build_fdt(machine)
    mem.write(machine.fdt_addr, blob)
    regions.append(("fdt", machine.fdt_addr, len(blob)))
    info.update(method=method, kernel=str(kernel), entry=entry_pc, fdt_addr=machine.fdt_addr,
                vcpus=machine.vcpus, cmdline=machine.cmdline)
    entry = Arm64Entry(pc=entry_pc, x=(machine.fdt_addr, 0, 0, 0))
    return Aarch64Boot(BootPlan(entry=entry, info=info, regions=regions), machine, blob)  # type: ignore[arg-type]
