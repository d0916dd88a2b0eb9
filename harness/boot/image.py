"""Reading kernel and initrd files: every way a file can be wrong becomes a KernelImageError.

What lives here:
  * read_kernel(path, mem_size): the file's bytes, gunzipped when it is a .gz (NetBSD and
    OpenBSD ship kernels that way, Debian ships xen-*.gz), checked against guest memory;
  * parse_elf(data): an ElfImage (pyelftools underneath) restricted to x86 ELF files;
  * parse_setup_header(data) / extract_vmlinux(data): the Linux bzImage setup header and the
    vmlinux ELF inside its compressed payload (so a distribution bzImage boots through PVH);
  * read_initrd(path, mem_size).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from harness.boot import decompress
from harness.errors import KernelImageError

MiB = 1024 * 1024
ELF_MAGIC = b"\x7fELF"
BZIMAGE_MAGIC = b"HdrS"              # setup header signature at 0x202
ARM64_IMAGE_MAGIC = b"ARM\x64"       # arm64 Image header magic at 0x38
EM_386, EM_X86_64, EM_AARCH64 = 3, 62, 183
MACHINE_NAMES = {2: "SPARC", 3: "i386", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "s390",
                 40: "ARM", 50: "IA-64", 62: "x86-64", 183: "aarch64", 243: "RISC-V"}
PT_LOAD, PT_NOTE = 1, 4
MAX_FILE = 2 * 1024 * MiB            # nothing this harness boots is bigger than 2 GiB


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def read_file(path: Path, what: str, limit: int) -> bytes:
    """Bytes of `path`; missing, unreadable, empty and over-`limit` files are errors."""
    path = Path(path)
    if not path.exists():
        raise KernelImageError(f"{what} file {path} does not exist",
                               "check the path in the guest YAML, or fetch the guest's assets first")
    if not path.is_file():
        raise KernelImageError(f"{what} path {path} is not a regular file", "point it at the file itself")
    size = path.stat().st_size
    if size == 0:
        raise KernelImageError(f"{what} file {path} is empty", "download it again")
    if size > limit:
        raise KernelImageError(f"{what} file {path} is {_size(size)} ({size} bytes), more than the "
                               f"{_size(limit)} of guest memory", "give the guest more memory")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KernelImageError(f"cannot read {what} file {path}: {exc.strerror}",
                               "check its permissions") from None


def read_kernel(path: Path, mem_size: int) -> bytes:
    """An x86 kernel file's bytes, decompressed when the whole file is gzip/xz/zstd-compressed."""
    data = read_kernel_any_arch(path, mem_size)
    reject_foreign(data, Path(path).name)
    return data


def read_kernel_any_arch(path: Path, mem_size: int) -> bytes:
    """A kernel file's bytes, decompressed when the whole file is compressed (a gzip'd arm64 Image,
    netbsd.gz), at least 64 bytes long; the caller checks its architecture."""
    data = read_file(path, "kernel", min(mem_size, MAX_FILE))
    fmt = decompress.sniff(data)
    if fmt in ("gzip", "xz", "zstd", "bzip2"):
        data = decompress.decompress(data, fmt, mem_size, what=f"kernel {Path(path).name}")
    if len(data) < 64:
        raise KernelImageError(f"kernel {Path(path).name} is only {len(data)} bytes (truncated)",
                               "download it again")
    return data


def read_initrd(path: Path, mem_size: int) -> bytes:
    return read_file(path, "initrd", min(mem_size, MAX_FILE))


def reject_foreign(data: bytes, name: str) -> None:
    """Clear errors for kernels of another architecture that are not ELF files."""
    if len(data) >= 0x3C and data[0x38:0x3C] == ARM64_IMAGE_MAGIC:
        raise KernelImageError(f"kernel {name} is an arm64 Image, not an x86 kernel",
                               "boot it with an aarch64 backend (qemu-system-aarch64), or use an x86 kernel")


# --- ELF -----------------------------------------------------------------------------------------
@dataclass
class ElfSegment:
    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int


@dataclass
class ElfNote:
    owner: str
    type: int
    desc: bytes


@dataclass
class ElfImage:
    data: bytes
    elfclass: int                  # 32 or 64
    machine: int                   # EM_386 / EM_X86_64
    osabi: int
    entry: int
    segments: list[ElfSegment] = field(default_factory=list)
    notes: list[ElfNote] = field(default_factory=list)

    def loads(self) -> list[ElfSegment]:
        return [s for s in self.segments if s.type == PT_LOAD and s.memsz > 0]

    def segment_bytes(self, seg: ElfSegment) -> bytes:
        return self.data[seg.offset:seg.offset + seg.filesz]

    def note(self, owner: str, ntype: int) -> ElfNote | None:
        return next((n for n in self.notes if n.owner == owner and n.type == ntype), None)


def elf_machine(data: bytes) -> int:
    """e_machine straight from the identification bytes (for error messages before parsing)."""
    little = data[5] != 2
    return int.from_bytes(data[18:20], "little" if little else "big")


X86_MACHINES = (EM_X86_64, EM_386)


def parse_elf(data: bytes, name: str = "kernel", machines: tuple[int, ...] = X86_MACHINES) -> ElfImage:
    """An ELF executable for one of `machines` (x86 by default), or a KernelImageError saying what
    is wrong with it."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    if not data.startswith(ELF_MAGIC):
        raise KernelImageError(f"{name} is not an ELF file", "check that the path names a kernel")
    if len(data) < 52:
        raise KernelImageError(f"{name} is a truncated ELF file ({len(data)} bytes)", "download it again")
    machine = elf_machine(data)
    if machine not in machines:
        arch = MACHINE_NAMES.get(machine, f"machine {machine}")
        wanted = " or ".join(MACHINE_NAMES[m] for m in machines)
        raise KernelImageError(f"{name} is an ELF file for {arch}, not {wanted}",
                               "use an x86 kernel, or boot this one with a backend for its architecture")
    try:
        elf = ELFFile(io.BytesIO(data))
        segments = [_segment(ph) for ph in elf.iter_segments()]
        _check_bounds(segments, len(data), name)
        notes = list(_notes(elf, data))
        image = ElfImage(data=data, elfclass=elf.elfclass, machine=machine,
                         osabi=_osabi(elf.header["e_ident"]["EI_OSABI"]), entry=elf.header["e_entry"],
                         segments=segments, notes=notes)
    except KernelImageError:
        raise
    except Exception as exc:  # pyelftools/construct raise ELFError, StreamError, ValueError...
        # OverflowError: a header offset beyond what a file position can be (found by fuzzing)
        if isinstance(exc, (ELFError, ValueError, KeyError, EOFError, OverflowError, MemoryError)) \
                or type(exc).__module__.startswith(("elftools", "construct")):
            raise KernelImageError(f"{name} is a truncated or corrupt ELF file ({exc})",
                                   "download it again") from None
        raise
    return image


def _check_bounds(segments: list[ElfSegment], size: int, name: str) -> None:
    for seg in segments:
        if seg.filesz and seg.offset + seg.filesz > size:
            raise KernelImageError(f"{name} is truncated: a segment needs bytes up to offset "
                                   f"{seg.offset + seg.filesz:#x} but the file has {size:#x}",
                                   "download it again")
        if seg.type == PT_LOAD and seg.filesz > seg.memsz:
            raise KernelImageError(f"{name} is corrupt: a segment's file size exceeds its memory size",
                                   "download it again")


def _segment(ph) -> ElfSegment:
    h = ph.header
    ptype = h["p_type"]
    if isinstance(ptype, str):      # pyelftools names well-known types; keep the number
        from elftools.elf.enums import ENUM_P_TYPE_BASE
        ptype = ENUM_P_TYPE_BASE.get(ptype, ptype)
    return ElfSegment(type=int(ptype), offset=h["p_offset"], vaddr=h["p_vaddr"], paddr=h["p_paddr"],
                      filesz=h["p_filesz"], memsz=h["p_memsz"], flags=h["p_flags"])


def _osabi(value) -> int:
    if isinstance(value, int):
        return value
    from elftools.elf.enums import ENUM_EI_OSABI
    return ENUM_EI_OSABI.get(value, 0)


def _notes(elf, data: bytes):
    """Notes from PT_NOTE segments, or from SHT_NOTE sections when there is no PT_NOTE.

    pyelftools replaces note types by GNU names whatever the owner ("Xen" type 1 would come back
    as NT_GNU_ABI_TAG), so the numeric type is read from the note header it located.
    """
    little = elf.little_endian
    sources = [s for s in elf.iter_segments() if s.header["p_type"] == "PT_NOTE"]
    if not sources:
        sources = [s for s in elf.iter_sections() if s.header["sh_type"] == "SHT_NOTE"]
    for src in sources:
        for note in src.iter_notes():
            off = note["n_offset"]
            ntype = int.from_bytes(data[off + 8:off + 12], "little" if little else "big")
            yield ElfNote(owner=note["n_name"] or "", type=ntype, desc=bytes(note["n_descdata"]))


# --- bzImage -------------------------------------------------------------------------------------
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
LOADED_HIGH = 1 << 0
CAN_USE_HEAP = 1 << 7


@dataclass
class SetupHeader:
    """The fields of the Linux setup header (Documentation/arch/x86/boot.rst) a loader needs."""
    setup_sects: int
    version: int                   # boot protocol, 0x020c = 2.12
    loadflags: int
    header_end: int                # file offset just past the header: 0x202 + byte at 0x201
    kernel_version: str
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: int
    xloadflags: int
    cmdline_size: int
    payload_offset: int
    payload_length: int
    pref_address: int
    init_size: int

    @property
    def pm_offset(self) -> int:
        """File offset of the protected-mode kernel."""
        return (self.setup_sects or 4) * 512 + 512

    def version_str(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"


SETUP_HEADER_END = 0x270


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x206 and data[0x202:0x206] == BZIMAGE_MAGIC


def _u(data: bytes, off: int, size: int) -> int:
    return int.from_bytes(data[off:off + size], "little")


def parse_setup_header(data: bytes, name: str = "kernel") -> SetupHeader:
    if not is_bzimage(data):
        raise KernelImageError(f"{name} has no Linux setup header (no 'HdrS' at 0x202)",
                               "use a bzImage, or pick the boot method that matches this kernel")
    version = _u(data, 0x206, 2)
    header_end = 0x202 + data[0x201]
    # Every field read below lies before 0x270 (the 2.15 header's end); a shorter file was cut off
    # (found by fuzzing: a file ending inside the header raised IndexError).
    if len(data) < max(SETUP_HEADER_END, header_end):
        raise KernelImageError(f"{name} is truncated: {len(data)} bytes end inside its setup header "
                               f"(which reaches {max(SETUP_HEADER_END, header_end):#x})", "download it again")
    hdr = SetupHeader(setup_sects=data[0x1F1], version=version, loadflags=data[0x211],
                      header_end=header_end, kernel_version="",
                      initrd_addr_max=_u(data, 0x22C, 4) if version >= 0x0203 else 0x37FFFFFF,
                      kernel_alignment=_u(data, 0x230, 4) if version >= 0x0205 else 0,
                      relocatable=data[0x234] if version >= 0x0205 else 0,
                      xloadflags=_u(data, 0x236, 2) if version >= 0x020C else 0,
                      cmdline_size=_u(data, 0x238, 4) if version >= 0x0206 else 255,
                      payload_offset=_u(data, 0x248, 4) if version >= 0x0208 else 0,
                      payload_length=_u(data, 0x24C, 4) if version >= 0x0208 else 0,
                      pref_address=_u(data, 0x258, 8) if version >= 0x020A else 0,
                      init_size=_u(data, 0x260, 4) if version >= 0x020A else 0)
    if header_end > len(data) or hdr.pm_offset >= len(data):
        raise KernelImageError(f"{name} is truncated: its setup code ends at {hdr.pm_offset:#x} but the "
                               f"file is {len(data):#x} bytes", "download it again")
    # syssize (protocol >= 2.04): the protected-mode part in 16-byte units. Real images are longer
    # (a signature may follow); a file shorter than its header promises was cut off.
    syssize = _u(data, 0x1F4, 4) if version >= 0x0204 else 0
    if hdr.pm_offset + 16 * syssize > len(data):
        raise KernelImageError(f"{name} is truncated: its header promises {16 * syssize:#x} bytes of kernel after "
                               f"the setup code, the file holds {len(data) - hdr.pm_offset:#x}", "download it again")
    hdr.kernel_version = _kernel_version(data, hdr)
    return hdr


def _kernel_version(data: bytes, hdr: SetupHeader) -> str:
    """The version string the setup header points at (kernel_version + 0x200), if any."""
    ptr = _u(data, 0x20E, 2)
    if not ptr:
        return ""
    start = ptr + 0x200
    if start >= hdr.pm_offset:
        return ""
    end = data.find(b"\0", start, min(start + 256, hdr.pm_offset))
    raw = data[start:end if end >= 0 else start + 256]
    return raw.decode("ascii", "replace")


def require_64bit_entry(hdr: SetupHeader, name: str = "kernel") -> None:
    """The 64-bit boot protocol needs protocol >= 2.12 and XLF_KERNEL_64."""
    if hdr.version < 0x020C:
        raise KernelImageError(f"{name} speaks boot protocol {hdr.version_str()}; the 64-bit entry "
                               "needs 2.12 or newer (Linux >= 3.8)", "use a newer x86-64 kernel")
    if not hdr.xloadflags & XLF_KERNEL_64:
        raise KernelImageError(f"{name} has no 64-bit entry point (XLF_KERNEL_64 clear: a 32-bit kernel?)",
                               "use an x86-64 kernel")


def extract_vmlinux(data: bytes, cap: int, name: str = "kernel") -> bytes:
    """The vmlinux ELF compressed inside a bzImage (payload_offset/length, protocol >= 2.08)."""
    hdr = parse_setup_header(data, name)
    if hdr.version < 0x0208 or not hdr.payload_length:
        raise KernelImageError(f"{name} (boot protocol {hdr.version_str()}) does not describe its "
                               "compressed payload", "use a kernel with boot protocol 2.08 or newer")
    start = hdr.pm_offset + hdr.payload_offset
    end = start + hdr.payload_length
    if end > len(data):
        raise KernelImageError(f"{name} is truncated: its payload ends at {end:#x}, the file at "
                               f"{len(data):#x}", "download it again")
    payload = data[start:end]
    fmt = decompress.sniff(payload)
    if fmt is None:
        if payload.startswith(ELF_MAGIC):      # CONFIG_KERNEL_UNCOMPRESSED
            return payload
        raise KernelImageError(f"{name}: payload compression not recognised (starts {payload[:6].hex()})",
                               "download it again, or boot the vmlinux directly")
    vmlinux = decompress.decompress(payload, fmt, cap, what=f"{name} payload")
    if not vmlinux.startswith(ELF_MAGIC):
        raise KernelImageError(f"{name}: the decompressed payload is not an ELF vmlinux",
                               "download it again")
    return vmlinux
