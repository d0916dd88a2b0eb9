"""/dev/kvm: opening it with an actionable error, capabilities, and what kind of KVM this host has.

`host_info()` is what every report shows next to a built-in result: a number measured on
kvm_pvm (software batch emulation) means something else than one measured on VT-x.
"""
from __future__ import annotations

import errno
import os
from typing import Any

from harness.arch.x86_64.host import cpuinfo, hardware_backed, kvm_module
from harness.errors import KvmUnavailable
from harness.kvm.ffi import CAPS, KVM_CHECK_EXTENSION, KVM_GET_API_VERSION, ffi, libc

KVM_PATH = "/dev/kvm"
KVM_API_VERSION = 12
_NULL = ffi.cast("unsigned long", 0)


def ioctl(fd: int, request: int, arg: Any = _NULL, what: str = "") -> int:
    """Issue an ioctl; raise OSError (with the ioctl's name in the message) when it fails."""
    if isinstance(arg, int):
        arg = ffi.cast("unsigned long", arg)
    ret = libc.ioctl(fd, ffi.cast("unsigned long", request), arg)
    if ret < 0:
        err = ffi.errno
        raise OSError(err, f"{what or hex(request)}: {os.strerror(err)}")
    return ret


def open_kvm(path: str = KVM_PATH) -> int:
    """Open the KVM device and check its API version; every failure is one KvmUnavailable line."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KvmUnavailable(f"{path} does not exist: this host has no KVM",
                             "load kvm (modprobe kvm_intel / kvm_amd) or run on a host with KVM") from None
    except PermissionError:
        raise KvmUnavailable(f"{path} exists but this user may not open it (EACCES)",
                             "add yourself to group kvm or run as root") from None
    except OSError as exc:
        raise KvmUnavailable(f"cannot open {path}: {exc.strerror}",
                             "load kvm / run on a host with KVM") from None
    try:
        version = ioctl(fd, KVM_GET_API_VERSION, what="KVM_GET_API_VERSION")
    except OSError as exc:
        os.close(fd)
        raise KvmUnavailable(f"{path} is not a KVM device ({exc.strerror})",
                             "point the harness at /dev/kvm") from None
    if version != KVM_API_VERSION:
        os.close(fd)
        raise KvmUnavailable(f"{path} speaks KVM API {version}, not {KVM_API_VERSION}",
                             "run on a Linux host with a standard KVM")
    return fd


def check_extension(fd: int, name: str) -> int:
    """KVM_CHECK_EXTENSION by capability name; 0 when absent (or unknown to the kernel)."""
    try:
        return ioctl(fd, KVM_CHECK_EXTENSION, CAPS[name], what="KVM_CHECK_EXTENSION")
    except OSError:
        return 0


def capabilities(fd: int) -> dict[str, int]:
    return {name: check_extension(fd, name) for name in CAPS}


def host_info(path: str = KVM_PATH) -> dict[str, Any]:
    """What kind of KVM this is. Works (with `usable: False`) when /dev/kvm cannot be opened."""
    model, flags = cpuinfo()
    module = kvm_module()
    info: dict[str, Any] = {
        "kvm_module": module,
        "hardware_backed": hardware_backed(module, flags),
        "cpu_model": model,
        "cpu_virt_flags": sorted(flags & {"vmx", "svm", "hypervisor"}),
        "kernel_release": os.uname().release,     # what platform.release() reads, without importing it
        "arch": os.uname().machine,
        "usable": False,
        "caps": {},
    }
    try:
        fd = open_kvm(path)
    except KvmUnavailable as exc:
        info["error"] = exc.one_line()
        return info
    try:
        info["usable"] = True
        info["api_version"] = KVM_API_VERSION
        info["caps"] = capabilities(fd)
    finally:
        os.close(fd)
    return info


def is_eintr(exc: OSError) -> bool:
    return exc.errno == errno.EINTR
