"""Which host a cell runs on: `native`, `lab`, or `auto` resolved for this machine.

`auto` is native where /dev/kvm is hardware-backed (kvm_intel / kvm_amd on a CPU with vmx/svm)
and the lab otherwise (kvm_pvm, or no /dev/kvm at all). The concrete host goes into the cell id
and the result, so gap ledgers from different hosts never mix.
"""
from __future__ import annotations

import functools

from harness.backends.registry import HOSTED

NATIVE, LAB, AUTO = "native", "lab", "auto"
HOSTS = (NATIVE, LAB, AUTO)
# Backends that can run in the lab (builtin: the VMM child; qemu-kvm: QEMU on the lab's KVM, the
# same-KVM reference for the built-in VMM): the backend registry's table of hosted backends.
LAB_BACKENDS = tuple(backend for host, backend in HOSTED if host == LAB)


@functools.lru_cache(maxsize=1)
def native_is_hardware() -> bool:
    """From /sys, /proc and the device node alone: expanding a matrix must not load the VMM."""
    from harness.arch.x86_64.host import hardware_backed, kvm_accessible
    return hardware_backed() and kvm_accessible()


def resolve_host(host: str, backend: str) -> str:
    """The concrete host for a cell of `backend` (auto -> native or lab; lab only where it can run)."""
    if host == AUTO:
        return NATIVE if backend not in LAB_BACKENDS or native_is_hardware() else LAB
    return host


def can_run(host: str, backend: str) -> bool:
    return host != LAB or backend in LAB_BACKENDS
