"""The cffi declarations match <linux/kvm.h>: every struct size, field offset and ioctl number used."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from harness.kvm import ffi as k
from harness.kvm.ffi import ffi

HAVE_HEADERS = shutil.which("gcc") is not None and __import__("os").path.exists("/usr/include/linux/kvm.h")
pytestmark = pytest.mark.skipif(not HAVE_HEADERS, reason="needs gcc and linux-libc-dev (<linux/kvm.h>)")

STRUCTS = ["kvm_userspace_memory_region", "kvm_regs", "kvm_segment", "kvm_dtable", "kvm_sregs",
           "kvm_cpuid_entry2", "kvm_cpuid2", "kvm_msr_entry", "kvm_msrs", "kvm_msr_filter_range", "kvm_msr_filter",
           "kvm_pit_config", "kvm_irq_level", "kvm_enable_cap", "kvm_mp_state", "kvm_translation",
           "kvm_coalesced_mmio_zone", "kvm_coalesced_mmio", "kvm_coalesced_mmio_ring", "kvm_vcpu_events",
           "kvm_sync_regs", "kvm_run", "kvm_xsave", "kvm_xcr", "kvm_xcrs", "kvm_guest_debug", "kvm_guest_debug_arch",
           "kvm_debugregs", "kvm_msi"]
# (struct, field path) for every field the code touches by offset or attribute.
FIELDS = [
    ("kvm_run", "immediate_exit"), ("kvm_run", "exit_reason"), ("kvm_run", "io.direction"), ("kvm_run", "io.size"),
    ("kvm_run", "io.port"), ("kvm_run", "io.count"), ("kvm_run", "io.data_offset"), ("kvm_run", "mmio.phys_addr"),
    ("kvm_run", "mmio.data"), ("kvm_run", "mmio.len"), ("kvm_run", "mmio.is_write"),
    ("kvm_run", "fail_entry.hardware_entry_failure_reason"), ("kvm_run", "fail_entry.cpu"),
    ("kvm_run", "internal.suberror"), ("kvm_run", "internal.ndata"), ("kvm_run", "internal.data"),
    ("kvm_run", "emulation_failure.flags"), ("kvm_run", "emulation_failure.insn_size"),
    ("kvm_run", "emulation_failure.insn_bytes"), ("kvm_run", "system_event.type"),
    ("kvm_run", "system_event.ndata"), ("kvm_run", "system_event.data"), ("kvm_run", "msr.error"),
    ("kvm_run", "msr.reason"), ("kvm_run", "msr.index"), ("kvm_run", "msr.data"), ("kvm_run", "kvm_valid_regs"),
    ("kvm_run", "kvm_dirty_regs"), ("kvm_run", "s.regs.regs.rip"), ("kvm_run", "s"),
    ("kvm_sregs", "tr"), ("kvm_sregs", "gdt"), ("kvm_sregs", "idt"), ("kvm_sregs", "cr0"), ("kvm_sregs", "efer"),
    ("kvm_sregs", "apic_base"), ("kvm_segment", "selector"), ("kvm_segment", "type"), ("kvm_segment", "unusable"),
    ("kvm_regs", "rip"), ("kvm_regs", "rflags"), ("kvm_msr_filter", "ranges"), ("kvm_msr_filter_range", "bitmap"),
    ("kvm_enable_cap", "args"), ("kvm_translation", "valid"), ("kvm_coalesced_mmio", "pio"),
    ("kvm_coalesced_mmio", "data"), ("kvm_coalesced_mmio_ring", "coalesced_mmio"), ("kvm_coalesced_mmio_zone", "pio"),
    ("kvm_vcpu_events", "exception"), ("kvm_vcpu_events", "sipi_vector"), ("kvm_vcpu_events", "flags"),
    ("kvm_vcpu_events", "triple_fault"), ("kvm_vcpu_events", "exception_has_payload"),
    ("kvm_vcpu_events", "exception_payload"), ("kvm_cpuid2", "entries"), ("kvm_msrs", "entries"), ("kvm_xcrs", "xcrs"), ("kvm_xcr", "value"),
    ("kvm_run", "debug.arch.exception"), ("kvm_run", "debug.arch.pc"), ("kvm_run", "debug.arch.dr6"),
    ("kvm_run", "debug.arch.dr7"), ("kvm_guest_debug", "control"), ("kvm_guest_debug", "arch"),
    ("kvm_guest_debug_arch", "debugreg"), ("kvm_debugregs", "db"), ("kvm_debugregs", "dr6"), ("kvm_debugregs", "dr7"),
    ("kvm_debugregs", "flags"),
    ("kvm_msi", "address_lo"), ("kvm_msi", "address_hi"), ("kvm_msi", "data"), ("kvm_msi", "flags"),
]


def _cffi_offset(struct: str, path: str) -> int:
    return ffi.offsetof(f"struct {struct}", *path.split("."))


@pytest.fixture(scope="module")
def c_values(tmp_path_factory) -> dict[str, int]:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for s in STRUCTS:
        lines.append(f'printf("size {s} %zu\\n", sizeof(struct {s}));')
    for s, path in FIELDS:
        lines.append(f'printf("off {s}.{path} %zu\\n", offsetof(struct {s}, {path}));')
    for name in k.IOCTLS:
        lines.append(f'printf("ioctl {name} %lu\\n", (unsigned long)({name}));')
    for name, value in k.CAPS.items():
        lines.append(f'printf("cap {name} %d\\n", KVM_CAP_{name});')
    for name in ("KVM_COALESCED_MMIO_PAGE_OFFSET", "KVM_PIO_PAGE_OFFSET", "KVM_EXIT_X86_RDMSR", "KVM_EXIT_INTERNAL_ERROR",
                 "KVM_SYSTEM_EVENT_RESET", "KVM_MSR_EXIT_REASON_FILTER", "KVM_SYNC_X86_REGS"):
        lines.append(f'printf("const {name} %lu\\n", (unsigned long)({name}));')
    lines += ["return 0; }"]
    d = tmp_path_factory.mktemp("ffi")
    (d / "probe.c").write_text("\n".join(lines))
    subprocess.run(["gcc", "-o", str(d / "probe"), str(d / "probe.c")], check=True, capture_output=True)
    out = subprocess.run([str(d / "probe")], check=True, capture_output=True, text=True).stdout
    values = {}
    for line in out.splitlines():
        kind, name, value = line.split()
        values[f"{kind} {name}"] = int(value)
    return values


@pytest.mark.parametrize("struct", STRUCTS)
def test_struct_size(c_values, struct):
    assert ffi.sizeof(f"struct {struct}") == c_values[f"size {struct}"]


@pytest.mark.parametrize("struct,path", FIELDS)
def test_field_offset(c_values, struct, path):
    assert _cffi_offset(struct, path) == c_values[f"off {struct}.{path}"]


def test_ioctl_numbers(c_values):
    wrong = {name: hex(v) for name, v in k.IOCTLS.items() if c_values[f"ioctl {name}"] != v}
    assert not wrong
    assert len(k.IOCTLS) >= 29


def test_capability_numbers(c_values):
    assert {n: v for n, v in k.CAPS.items() if c_values[f"cap {n}"] != v} == {}


def test_constants(c_values):
    assert c_values["const KVM_COALESCED_MMIO_PAGE_OFFSET"] == k.KVM_COALESCED_MMIO_PAGE_OFFSET
    assert c_values["const KVM_PIO_PAGE_OFFSET"] == k.KVM_PIO_PAGE_OFFSET
    assert c_values["const KVM_EXIT_X86_RDMSR"] == k.KVM_EXIT_X86_RDMSR
    assert c_values["const KVM_EXIT_INTERNAL_ERROR"] == k.KVM_EXIT_INTERNAL_ERROR
    assert c_values["const KVM_SYSTEM_EVENT_RESET"] == k.KVM_SYSTEM_EVENT_RESET
    assert c_values["const KVM_MSR_EXIT_REASON_FILTER"] == k.KVM_MSR_EXIT_REASON_FILTER
    assert c_values["const KVM_SYNC_X86_REGS"] == k.KVM_SYNC_X86_REGS


def test_hot_path_offsets_match_struct():
    """runloop reads exit_reason / io / rip by raw offset: they must be the cffi (== C) offsets."""
    from harness.kvm import runloop
    assert ffi.offsetof("struct kvm_run", "exit_reason") == 8
    assert ffi.offsetof("struct kvm_run", "io") == 32
    assert _cffi_offset("kvm_run", "s.regs.regs.rip") == runloop._RIP_OFFSET


def test_cached_declarations_match_a_fresh_parse(tmp_path, monkeypatch):
    """The out-of-line module in the cache lays out every struct exactly as parsing CDEF does."""
    import cffi
    from harness.kvm import ffi as kffi
    fresh = cffi.FFI()
    fresh.cdef(kffi.CDEF)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    cached = kffi._load_ffi()
    assert type(cached).__module__ == "_cffi_backend" and list((tmp_path / "cffi").glob("_harness_kvm_*.py"))
    for name in ("struct kvm_run", "struct kvm_regs", "struct kvm_sregs", "struct kvm_xsave", "struct kvm_cpuid2",
                 "struct kvm_msr_filter", "struct kvm_vcpu_events", "struct kvm_xcrs"):
        assert cached.sizeof(name) == fresh.sizeof(name), name
    assert cached.offsetof("struct kvm_run", "s") == fresh.offsetof("struct kvm_run", "s")
