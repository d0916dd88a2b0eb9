"""The host's CPUID table as KVM offers it (KVM_GET_SUPPORTED_CPUID); profiles and feature bits
live in harness.arch.x86_64.cpuid.
"""
from __future__ import annotations

from harness.kvm import ffi as k
from harness.kvm.ffi import ffi
from harness.kvm.system import ioctl


def supported(kvm_fd: int) -> list[dict[str, int]]:
    """KVM_GET_SUPPORTED_CPUID as a list of dicts (grows the buffer until KVM is satisfied)."""
    nent = 128
    while True:
        buf = ffi.new("char[]", ffi.sizeof("struct kvm_cpuid2") + nent * ffi.sizeof("struct kvm_cpuid_entry2"))
        cpuid = ffi.cast("struct kvm_cpuid2 *", buf)
        cpuid.nent = nent
        try:
            ioctl(kvm_fd, k.KVM_GET_SUPPORTED_CPUID, cpuid, what="KVM_GET_SUPPORTED_CPUID")
        except OSError as exc:
            if exc.errno == 7 and nent < 4096:  # E2BIG
                nent *= 2
                continue
            raise
        return [{f: int(getattr(cpuid.entries[i], f)) for f in ("function", "index", "flags", "eax", "ebx", "ecx",
                                                               "edx")} for i in range(cpuid.nent)]
