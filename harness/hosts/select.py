"""Which host a cell runs on: `native`, `lab`, or `auto` resolved for this machine.

`auto` is native where /dev/kvm is hardware-backed (kvm_intel / kvm_amd on a CPU with vmx/svm)
and the lab otherwise (kvm_pvm, or no /dev/kvm at all). The concrete host goes into the cell id
and the result, so gap ledgers from different hosts never mix.
"""
from __future__ import annotations

import functools

NATIVE, LAB, AUTO = "native", "lab", "auto"
HOSTS = (NATIVE, LAB, AUTO)
# Backends that can run in the lab: their VM child runs there (builtin: the VMM child; qemu-kvm:
# QEMU on the lab's KVM, the same-KVM reference for the built-in VMM).
LAB_BACKENDS = ("builtin", "qemu-kvm")


@functools.lru_cache(maxsize=1)
def native_is_hardware() -> bool:
    from harness.kvm.system import host_info
    info = host_info()
    return bool(info.get("hardware_backed")) and bool(info.get("usable"))


def resolve_host(host: str, backend: str) -> str:
    """The concrete host for a cell of `backend` (auto -> native or lab; lab only where it can run)."""
    if host == AUTO:
        return NATIVE if backend not in LAB_BACKENDS or native_is_hardware() else LAB
    return host


def can_run(host: str, backend: str) -> bool:
    return host != LAB or backend in LAB_BACKENDS
