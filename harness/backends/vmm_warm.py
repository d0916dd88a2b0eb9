"""What a forked VMM child finds already done: the one list of the VMM's imports and caches.

Two processes fork built-in VMM children: the VMM fork server on this machine
(harness.backends.vmm_server) and the lab's agent (harness.hosts.agent). Each calls `warm()` once,
before its first fork, so a child pays neither the imports nor cffi's first parse of a C type.
Under the lab's TCG each of those costs ~20-50x what it costs natively (measured in the lab: the
virtio package's import 0.29 s of a cell's start, capstone's 1.36 s of its stop; under load
pyelftools' import 2.7 s, cffi's first parse of each C type 1.1 s).

Warm is what every child of an architecture runs, from its spec to its summary: the loaders and
devices before the guest's first instruction, and capstone at the end (the summary decodes each
stopped vCPU's instruction at RIP). What only some cells use is left to their child: the gdb
stub (--gdb), the qemu-img overlay of a virtio disk. `imports_in_child` tells what a child
imported itself (its summary carries it), which is how the list is kept honest
(tests/backends/test_vmm_warm.py).
"""
from __future__ import annotations

import importlib
import os
import sys

COMMON = ("harness.backends.builtin_vm", "harness.backends.debugopts", "harness.boot", "harness.boot.decompress",
          "harness.devices", "harness.devices.context", "harness.devices.virtio", "harness.kvm.system",
          "harness.memory")
BY_ARCH = {
    "x86_64": ("harness.firmware", "harness.kvm.machine", "harness.kvm.rescue", "harness.kvm.insn",
               "harness.arch.x86_64.decode", "elftools.elf.elffile", "elftools.common.exceptions",
               "elftools.elf.enums"),
    "aarch64": ("harness.kvm.arch.aarch64.machine", "harness.boot.arm64", "harness.boot.fdt",
                "harness.devices.aarch64", "fdt"),
}
# Kernel decompressors and the instruction decoder: a child without them says so itself when it
# needs one (a one-line error, or an undecoded instruction), so their absence is no reason here.
OPTIONAL = ("lz4.block", "zstandard", "capstone")
# The modules a child had when its main() began (set by `mark_child_start`).
_at_child_start: frozenset[str] = frozenset()


def warm(arch: str | None = None) -> None:
    """Import and prime everything a child of `arch` (default: this machine's) needs."""
    arch = arch or os.uname().machine    # not platform: the VMM child never imports it (0.3 s under TCG)
    for name in COMMON + BY_ARCH.get(arch, ()) + loader_modules(arch):
        importlib.import_module(name)
    for name in OPTIONAL:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    _prime_cffi_types()
    if arch == "x86_64" and "capstone" in sys.modules:
        from harness.arch.x86_64.decode import decoder
        for bits in (16, 32, 64):   # a Cs handle per mode: what the summary's vCPU state decodes with
            decoder(bits)


def loader_modules(arch: str) -> tuple[str, ...]:
    """Every boot method's loader of the x86 table (harness.boot.LOADERS imports each on first
    use: a few ms natively, a cell's start of emulated CPU in the lab); aarch64's is in BY_ARCH."""
    if arch != "x86_64":
        return ()
    from harness.boot import LOADERS
    return tuple(loader.module for loader in LOADERS.values() if loader.module)


def _prime_cffi_types() -> None:
    """cffi parses a C type's spelling on its first use and caches it; a fork inherits the cache."""
    from harness.kvm.ffi import ffi
    for struct in ffi.list_types()[1]:
        for spelling in (f"struct {struct}", f"struct {struct} *"):
            ffi.typeof(spelling)
    for spelling in ("char[]", "uint8_t[]", "uint64_t *", "unsigned long", "void *"):
        ffi.typeof(spelling)


def mark_child_start() -> None:
    """Called first in a VMM child's main(): what it imports from here on is its own cost."""
    global _at_child_start
    _at_child_start = frozenset(sys.modules)


def imports_in_child() -> list[str]:
    """Modules this child imported since `mark_child_start` (top-level packages and harness
    modules), sorted: empty for a forked child of a warm forker on the common path."""
    late = set(sys.modules) - _at_child_start
    return sorted(name for name in late if name.startswith("harness.") or "." not in name)
