"""Boot loaders: put a kernel, its initrd and its boot tables into guest RAM, and say how the
first vCPU must look when it starts.

    plan = load("pvh", mem, Path("vmlinuz"), None, "console=ttyS0")
    plan.entry    -> EntryState (registers, segments, control registers) for the KVM core
    plan.info     -> protocol, entry point, kernel version, load range, initrd placement, ...
    plan.regions  -> (name, gpa, size) of everything written

Methods: bzimage (Linux 64-bit boot protocol), pvh (Xen PVH note; a bzImage is unpacked to its
vmlinux first), multiboot (v1), netbsd / openbsd / freebsd (each BSD's native loader handoff).
"""
from __future__ import annotations

import re
from pathlib import Path

from harness.boot.bda import write_bda
from harness.boot.entry import EntryState, Segment
from harness.boot.image import (ELF_MAGIC, is_bzimage, parse_elf, read_initrd, read_kernel,
                                extract_vmlinux)
from harness.boot.plan import BootPlan
from harness.errors import ConfigError, KernelImageError
from harness.memory import GuestRam

__all__ = ["BootPlan", "EntryState", "Segment", "METHODS", "load", "detect_method"]

METHODS = ("bzimage", "pvh", "multiboot", "netbsd", "openbsd", "freebsd")
DETECT_CAP = 512 * 1024 * 1024          # decompression cap when no guest memory size is known
ELFOSABI_NETBSD, ELFOSABI_FREEBSD, ELFOSABI_OPENBSD = 2, 9, 12

_VERSION_RE = re.compile(rb"(Linux version \d[^\0\n]{0,200}"
                         rb"|(?:NetBSD|OpenBSD|FreeBSD) \d+\.\d+[-\w.]* \([\w.-]+\)[^\0\n]{0,160})")


def load(method: str, mem: GuestRam, kernel: Path, initrd: Path | None, cmdline: str,
         vcpus: int = 1, rsdp: int | None = None) -> BootPlan:
    """Load `kernel` (and `initrd`) with boot method `method` ("auto" detects it). `rsdp` is the
    ACPI RSDP address for the handoffs that carry one (bzImage, PVH); the others scan for it."""
    kernel = Path(kernel)
    if method == "auto":
        method = detect_method(kernel)
    if method not in METHODS:
        raise ConfigError(f"unknown boot method {method!r}", f"use one of: auto, {', '.join(METHODS)}")
    data = read_kernel(kernel, mem.size)
    initrd_data = read_initrd(Path(initrd), mem.size) if initrd is not None else None
    name = kernel.name
    plan = _dispatch(method, mem, data, initrd_data, cmdline, name,
                     Path(initrd).name if initrd is not None else "initrd", rsdp or 0)
    # BIOS-era kernels read the EBDA pointer / base memory size from the BDA (see bda.py).
    plan.regions.append(write_bda(mem))
    plan.info.setdefault("protocol", method)
    plan.info["method"] = method
    plan.info["kernel"] = str(kernel)
    plan.info["vcpus"] = vcpus
    if not plan.info.get("kernel_version"):
        plan.info["kernel_version"] = find_version(data)
    return plan


def _dispatch(method: str, mem: GuestRam, data: bytes, initrd: bytes | None, cmdline: str, name: str,
              initrd_name: str, rsdp: int = 0) -> BootPlan:
    if method == "bzimage":
        from harness.boot.bzimage import load_bzimage
        return load_bzimage(mem, data, initrd, cmdline, name, rsdp=rsdp)
    if method == "multiboot":
        from harness.boot.multiboot import load_multiboot
        return load_multiboot(mem, data, initrd, cmdline, name, initrd_name)
    if method == "pvh":
        from harness.boot.pvh import load_pvh
        version = ""
        if is_bzimage(data):
            from harness.boot.image import parse_setup_header
            version = parse_setup_header(data, name).kernel_version
            data = extract_vmlinux(data, mem.size, name)
        plan = load_pvh(mem, parse_elf(data, name), initrd, cmdline, name, rsdp=rsdp)
        plan.info["kernel_version"] = version or find_version(data)
        return plan
    elf = parse_elf(data, name)
    if method == "netbsd":
        from harness.boot.netbsd import load_netbsd
        return load_netbsd(mem, elf, initrd, cmdline, name)
    if method == "openbsd":
        from harness.boot.openbsd import load_openbsd
        return load_openbsd(mem, elf, initrd, cmdline, name)
    from harness.boot.freebsd import load_freebsd
    return load_freebsd(mem, elf, initrd, cmdline, name)


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
