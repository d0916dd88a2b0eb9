"""What kind of x86 KVM host this is, from /sys and /proc alone (no /dev/kvm, no cffi): the host
selection (harness.hosts.select) reads it while expanding a matrix, host_info adds KVM's answers."""
from __future__ import annotations

import os
from pathlib import Path

HARDWARE_MODULES = ("kvm_intel", "kvm_amd")
VIRT_FLAGS = {"vmx", "svm"}


def kvm_module() -> str:
    """Which KVM vendor module is loaded, read from /sys/module (never written)."""
    for name in ("kvm_pvm", "kvm_intel", "kvm_amd"):
        if Path("/sys/module", name).exists():
            return name
    return "kvm" if Path("/sys/module/kvm").exists() else "none"


def cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def hardware_backed(module: str | None = None, flags: set[str] | None = None) -> bool:
    """A vendor KVM module on a CPU with VT-x/SVM: guests run on hardware (not kvm_pvm's emulation)."""
    module = kvm_module() if module is None else module
    flags = cpuinfo()[1] if flags is None else flags
    return module in HARDWARE_MODULES and bool(flags & VIRT_FLAGS)


def kvm_accessible(path: str = "/dev/kvm") -> bool:
    return os.access(path, os.R_OK | os.W_OK)
