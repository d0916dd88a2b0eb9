"""Boot loaders: put a kernel, its initrd and its boot tables into guest RAM, and say how the
first vCPU must look when it starts.

    plan = load("pvh", mem, Path("vmlinuz"), None, "console=ttyS0")
    plan.entry    -> EntryState (registers, segments, control registers) for the KVM core
    plan.info     -> protocol, entry point, kernel version, load range, initrd placement, ...
    plan.regions  -> (name, gpa, size) of everything written

Methods: the LOADERS table below (bzimage, pvh, multiboot, netbsd, openbsd, freebsd, raw).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.boot.bda import write_bda
from harness.boot.entry import EntryState, Segment
from harness.boot.image import (ELF_MAGIC, is_bzimage, parse_elf, read_initrd, read_kernel,
                                extract_vmlinux)
from harness.boot.plan import BootPlan
from harness.errors import KernelImageError, lookup
from harness.memory import GuestRam

__all__ = ["BootPlan", "EntryState", "Segment", "LOADERS", "METHODS", "load", "detect_method"]

DETECT_CAP = 512 * 1024 * 1024          # decompression cap when no guest memory size is known
ELFOSABI_NETBSD, ELFOSABI_FREEBSD, ELFOSABI_OPENBSD = 2, 9, 12

_VERSION_RE = re.compile(rb"(Linux version \d[^\0\n]{0,200}"
                         rb"|(?:NetBSD|OpenBSD|FreeBSD) \d+\.\d+[-\w.]* \([\w.-]+\)[^\0\n]{0,160})")


@dataclass
class LoadInput:
    """What every loader gets: guest RAM, the kernel's bytes, the initrd's, the command line."""
    mem: GuestRam
    data: bytes
    initrd: bytes | None
    cmdline: str
    name: str                      # the kernel's file name, for messages
    initrd_name: str = "initrd"
    options: dict[str, Any] = field(default_factory=dict)   # the guest file's builtin: section
    rsdp: int = 0                  # ACPI RSDP address for the handoffs that carry one (bzImage, PVH)


@dataclass(frozen=True)
class Loader:
    load: Callable[[LoadInput], BootPlan]
    description: str
    bios_data_area: bool = True    # write the BDA BIOS-era kernels read (EBDA pointer, base memory)
    read: Callable[[Path, int], bytes] = read_kernel   # (path, size cap) -> the kernel's bytes
    module: str = ""               # what `load` imports on first use (the VMM's forkers warm it)


def _bzimage(i: LoadInput) -> BootPlan:
    from harness.boot.bzimage import load_bzimage
    return load_bzimage(i.mem, i.data, i.initrd, i.cmdline, i.name, rsdp=i.rsdp)


def _pvh(i: LoadInput) -> BootPlan:
    """The PVH entry of an ELF vmlinux; a bzImage is unpacked to its vmlinux first."""
    from harness.boot.pvh import load_pvh
    data, version = i.data, ""
    if is_bzimage(data):
        from harness.boot.image import parse_setup_header
        version = parse_setup_header(data, i.name).kernel_version
        data = extract_vmlinux(data, i.mem.size, i.name)
    plan = load_pvh(i.mem, parse_elf(data, i.name), i.initrd, i.cmdline, i.name, rsdp=i.rsdp)
    plan.info["kernel_version"] = version or find_version(data)
    return plan


def _multiboot(i: LoadInput) -> BootPlan:
    from harness.boot.multiboot import load_multiboot
    return load_multiboot(i.mem, i.data, i.initrd, i.cmdline, i.name, i.initrd_name)


def _netbsd(i: LoadInput) -> BootPlan:
    from harness.boot.netbsd import load_netbsd
    return load_netbsd(i.mem, parse_elf(i.data, i.name), i.initrd, i.cmdline, i.name)


def _openbsd(i: LoadInput) -> BootPlan:
    from harness.boot.openbsd import load_openbsd
    return load_openbsd(i.mem, parse_elf(i.data, i.name), i.initrd, i.cmdline, i.name)


def _freebsd(i: LoadInput) -> BootPlan:
    from harness.boot.freebsd import load_freebsd
    return load_freebsd(i.mem, parse_elf(i.data, i.name), i.initrd, i.cmdline, i.name)


def _read_raw(path: Path, cap: int) -> bytes:
    from harness.boot.raw import read_image
    return read_image(path)


def _raw(i: LoadInput) -> BootPlan:
    from harness.boot.raw import load_raw
    entry, info = load_raw(i.mem, i.data, mode=str(i.options.get("raw_mode", "real16")))
    return BootPlan(entry, info)


# The one table of boot methods the built-in VMM loads. The guest-file validator, `harness boot
# --boot`, the built-in backend's check and `load` all read it; a new protocol is one line here.
LOADERS: dict[str, Loader] = {
    "bzimage": Loader(_bzimage, "Linux 64-bit boot protocol (bzImage)", module="harness.boot.bzimage"),
    "pvh": Loader(_pvh, "Xen PVH entry note (a bzImage is unpacked to its vmlinux)", module="harness.boot.pvh"),
    "multiboot": Loader(_multiboot, "Multiboot v1 (ELF or a.out kludge)", module="harness.boot.multiboot"),
    "netbsd": Loader(_netbsd, "NetBSD's native loader handoff", module="harness.boot.netbsd"),
    "openbsd": Loader(_openbsd, "OpenBSD's native loader handoff", module="harness.boot.openbsd"),
    "freebsd": Loader(_freebsd, "FreeBSD's native loader handoff", module="harness.boot.freebsd"),
    "raw": Loader(_raw, "flat binary at 0x10000 in real16/protected32/long64 (tests, benchmarks)",
                  bios_data_area=False, read=_read_raw, module="harness.boot.raw"),
}
METHODS = tuple(m for m in LOADERS if m != "raw")    # what `boot: auto` can detect
AUTO = "auto"
# Boot methods no x86 loader here serves: QEMU boots them (harness.backends.qemu); an aarch64
# guest's `image` (and `netbsd`) the built-in VMM loads with harness.boot.arm64 (A64_METHODS).
QEMU_ONLY_METHODS = {"firmware": "the machine's firmware boots the disk (SeaBIOS, UEFI)",
                     "image": "a Linux-style arm64 Image"}
ALL_METHODS = (*LOADERS, *QEMU_ONLY_METHODS, AUTO)   # what a guest file's `boot:` may say


def load(method: str, mem: GuestRam, kernel: Path, initrd: Path | None, cmdline: str,
         vcpus: int = 1, options: dict[str, Any] | None = None, rsdp: int | None = None) -> BootPlan:
    """Load `kernel` (and `initrd`) with boot method `method` ("auto" detects it). `rsdp` is the
    ACPI RSDP address for the handoffs that carry one (bzImage, PVH); the others scan for it."""
    kernel = Path(kernel)
    if method == AUTO:
        method = detect_method(kernel)
    loader = lookup(LOADERS, method, "boot method", names=(AUTO, *LOADERS))
    data = loader.read(kernel, mem.size)
    initrd_data = read_initrd(Path(initrd), mem.size) if initrd is not None else None
    plan = loader.load(LoadInput(mem, data, initrd_data, cmdline, kernel.name,
                                 Path(initrd).name if initrd is not None else "initrd", dict(options or {}), rsdp or 0))
    if loader.bios_data_area:
        plan.regions.append(write_bda(mem))
    plan.info.setdefault("protocol", method)
    plan.info["method"] = method
    plan.info["kernel"] = str(kernel)
    plan.info["vcpus"] = vcpus
    if not plan.info.get("kernel_version"):
        plan.info["kernel_version"] = find_version(data)
    return plan


_VERSION_PREFIXES = (b"Linux version ", b"NetBSD ", b"OpenBSD ", b"FreeBSD ")


def find_version(data: bytes) -> str:
    """The kernel's own version banner, when its image carries one in plain text.

    The leftmost match of _VERSION_RE, found by bytes.find on each literal prefix and the regex
    tried only there: a regex search of a 50 MB vmlinux took 17 s under the lab's TCG (and is
    needlessly slow natively), bytes.find is a memchr-speed scan."""
    best: re.Match[bytes] | None = None
    for prefix in _VERSION_PREFIXES:
        end = len(data) if best is None else best.start()   # only an earlier match can win
        pos = data.find(prefix, 0, end)
        while pos >= 0:
            match = _VERSION_RE.match(data, pos)
            if match:
                best = match
                break
            pos = data.find(prefix, pos + 1, end)
    return best.group(0).decode("ascii", "replace").strip() if best else ""


def detect_method(kernel: Path) -> str:
    """Boot method for `boot: auto`: bzImage magic, then the PVH note, then a multiboot
    header, then the BSDs' ELF notes / OSABI."""
    from harness.boot.multiboot import find_header
    from harness.boot.openbsd import PT_OPENBSD_RANDOMIZE
    from harness.boot.pvh import pvh_entry

    kernel = Path(kernel)
    data = read_kernel(kernel, DETECT_CAP)
    if is_bzimage(data):
        return "bzimage"
    if not data.startswith(ELF_MAGIC):
        if find_header(data) is not None:
            return "multiboot"
        raise KernelImageError(f"cannot tell how to boot {kernel.name}: not a bzImage, not ELF, no multiboot header",
                               "set boot: to the right method in the guest YAML")
    elf = parse_elf(data, kernel.name)
    owners = {n.owner for n in elf.notes}
    if pvh_entry(elf) is not None:
        return "pvh"
    if find_header(data) is not None:
        return "multiboot"
    if "OpenBSD" in owners or elf.osabi == ELFOSABI_OPENBSD or any(
            s.type == PT_OPENBSD_RANDOMIZE for s in elf.segments):
        return "openbsd"
    if "NetBSD" in owners or elf.osabi == ELFOSABI_NETBSD:
        return "netbsd"
    if "FreeBSD" in owners or elf.osabi == ELFOSABI_FREEBSD:
        return "freebsd"
    raise KernelImageError(f"cannot tell how to boot ELF kernel {kernel.name}: no PVH note, no multiboot header, "
                           "no BSD note", "set boot: to the right method in the guest YAML")
