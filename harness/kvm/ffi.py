"""cffi (ABI mode) declarations of the KVM structs and ioctl numbers the built-in VMM uses.

Layouts follow <linux/kvm.h> and <asm/kvm.h> for x86-64; tests/kvm/test_ffi.py compiles a C
program against the real headers and checks every size, offset and ioctl number used here.
ABI mode needs no compiler at run time: cffi lays the structs out by the platform C rules.

Parsing CDEF with pycparser costs the VMM child ~0.4 s at every start, so the parsed form is
kept: cffi's out-of-line ABI mode writes it as a small Python module (`emit_python_code`) into
the harness cache, named by a hash of CDEF and the cffi version, and later starts import that
(only `_cffi_backend`, no parser). Where the cache cannot be written, CDEF is parsed in process.
"""
from __future__ import annotations

import contextlib
import io
import importlib.util
import os
import zlib
from pathlib import Path
from typing import Any

CDEF = """
struct kvm_userspace_memory_region {
    uint32_t slot; uint32_t flags; uint64_t guest_phys_addr; uint64_t memory_size; uint64_t userspace_addr;
};
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
};
struct kvm_segment {
    uint64_t base; uint32_t limit; uint16_t selector; uint8_t type;
    uint8_t present, dpl, db, s, l, g, avl; uint8_t unusable; uint8_t padding;
};
struct kvm_dtable { uint64_t base; uint16_t limit; uint16_t padding[3]; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer; uint64_t apic_base;
    uint64_t interrupt_bitmap[4];
};
struct kvm_cpuid_entry2 {
    uint32_t function; uint32_t index; uint32_t flags;
    uint32_t eax; uint32_t ebx; uint32_t ecx; uint32_t edx; uint32_t padding[3];
};
struct kvm_cpuid2 { uint32_t nent; uint32_t padding; struct kvm_cpuid_entry2 entries[]; };
struct kvm_msr_entry { uint32_t index; uint32_t reserved; uint64_t data; };
struct kvm_msrs { uint32_t nmsrs; uint32_t pad; struct kvm_msr_entry entries[]; };
struct kvm_msr_filter_range { uint32_t flags; uint32_t nmsrs; uint32_t base; uint8_t *bitmap; };
struct kvm_msr_filter { uint32_t flags; struct kvm_msr_filter_range ranges[16]; };
struct kvm_pit_config { uint32_t flags; uint32_t pad[15]; };
struct kvm_irq_level { uint32_t irq; uint32_t level; };
struct kvm_msi { uint32_t address_lo; uint32_t address_hi; uint32_t data; uint32_t flags; uint32_t devid;
                 uint8_t pad[12]; };
struct kvm_enable_cap { uint32_t cap; uint32_t flags; uint64_t args[4]; uint8_t pad[64]; };
struct kvm_mp_state { uint32_t mp_state; };
struct kvm_translation {
    uint64_t linear_address; uint64_t physical_address;
    uint8_t valid; uint8_t writeable; uint8_t usermode; uint8_t pad[5];
};
struct kvm_coalesced_mmio_zone { uint64_t addr; uint32_t size; uint32_t pio; };
struct kvm_coalesced_mmio { uint64_t phys_addr; uint32_t len; uint32_t pio; uint8_t data[8]; };
struct kvm_coalesced_mmio_ring { uint32_t first, last; struct kvm_coalesced_mmio coalesced_mmio[]; };
struct kvm_vcpu_events {
    struct { uint8_t injected; uint8_t nr; uint8_t has_error_code; uint8_t pending; uint32_t error_code; } exception;
    struct { uint8_t injected; uint8_t nr; uint8_t soft; uint8_t shadow; } interrupt;
    struct { uint8_t injected; uint8_t pending; uint8_t masked; uint8_t pad; } nmi;
    uint32_t sipi_vector;
    uint32_t flags;
    struct { uint8_t smm; uint8_t pending; uint8_t smm_inside_nmi; uint8_t latched_init; } smi;
    struct { uint8_t pending; } triple_fault;
    uint8_t reserved[26];
    uint8_t exception_has_payload;
    uint64_t exception_payload;
};
struct kvm_sync_regs { struct kvm_regs regs; struct kvm_sregs sregs; struct kvm_vcpu_events events; };
struct kvm_run {
    uint8_t request_interrupt_window;
    uint8_t immediate_exit;
    uint8_t padding1[6];
    uint32_t exit_reason;
    uint8_t ready_for_interrupt_injection;
    uint8_t if_flag;
    uint16_t flags;
    uint64_t cr8;
    uint64_t apic_base;
    union {
        struct { uint64_t hardware_exit_reason; } hw;
        struct { uint64_t hardware_entry_failure_reason; uint32_t cpu; } fail_entry;
        struct { uint32_t exception; uint32_t error_code; } ex;
        struct { struct { uint32_t exception; uint32_t pad; uint64_t pc; uint64_t dr6; uint64_t dr7; } arch; } debug;
        struct { uint8_t direction; uint8_t size; uint16_t port; uint32_t count; uint64_t data_offset; } io;
        struct { uint64_t phys_addr; uint8_t data[8]; uint32_t len; uint8_t is_write; } mmio;
        struct { uint32_t suberror; uint32_t ndata; uint64_t data[16]; } internal;
        struct { uint32_t suberror; uint32_t ndata; uint64_t flags; uint8_t insn_size; uint8_t insn_bytes[15]; }
            emulation_failure;
        struct { uint32_t type; uint32_t ndata; uint64_t data[16]; } system_event;
        struct { uint8_t error; uint8_t pad[7]; uint32_t reason; uint32_t index; uint64_t data; } msr;
        char padding[256];
    };
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    union { struct kvm_sync_regs regs; char padding[2048]; } s;
};

struct kvm_guest_debug_arch { uint64_t debugreg[8]; };
struct kvm_guest_debug { uint32_t control; uint32_t pad; struct kvm_guest_debug_arch arch; };
struct kvm_debugregs { uint64_t db[4]; uint64_t dr6; uint64_t dr7; uint64_t flags; uint64_t reserved[9]; };

struct kvm_xsave { uint32_t region[1024]; };
struct kvm_xcr { uint32_t xcr; uint32_t reserved; uint64_t value; };
struct kvm_xcrs { uint32_t nr_xcrs; uint32_t flags; struct kvm_xcr xcrs[16]; uint64_t padding[16]; };

int ioctl(int fd, unsigned long request, ...);
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
"""


def _cache_module(cache: Path) -> Path:
    # zlib's checksums, not hashlib: importing hashlib initialises OpenSSL (~8 ms of the child's start)
    import _cffi_backend
    key = f"{_cffi_backend.__version__}\0{CDEF}".encode()
    return cache / "cffi" / f"_harness_kvm_{zlib.crc32(key):08x}{zlib.adler32(key):08x}.py"


def _write_module(path: Path) -> None:
    """Write the out-of-line module at `path` (atomically: parallel VMM children may race here)."""
    import cffi
    builder = cffi.FFI()
    builder.cdef(CDEF)
    builder.set_source(path.stem, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.redirect_stdout(io.StringIO()):   # cffi says "generating ...": stdout is the guest console
        builder.emit_python_code(str(tmp))
    os.replace(tmp, path)


def _load_ffi() -> Any:
    from harness.model.files import cache_root
    path = _cache_module(cache_root())
    try:
        if not path.exists():
            _write_module(path)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.ffi
    except OSError:   # no writable cache: parse here, as plain ABI mode does
        import cffi
        parsed = cffi.FFI()
        parsed.cdef(CDEF)
        return parsed


ffi = _load_ffi()
libc = ffi.dlopen(None)

# --- ioctl number encoding (asm-generic/ioctl.h) ---------------------------------------
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (KVMIO << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, ctype: str) -> int:
    return _ioc(_IOC_WRITE, nr, ffi.sizeof(ctype))


def _ior(nr: int, ctype: str) -> int:
    return _ioc(_IOC_READ, nr, ffi.sizeof(ctype))


def _iowr(nr: int, ctype: str) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ffi.sizeof(ctype))


# system fd
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, "struct kvm_cpuid2")
# vm fd
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, "struct kvm_userspace_memory_region")
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, "uint64_t")
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, "struct kvm_irq_level")
KVM_REGISTER_COALESCED_MMIO = _iow(0x67, "struct kvm_coalesced_mmio_zone")
KVM_UNREGISTER_COALESCED_MMIO = _iow(0x68, "struct kvm_coalesced_mmio_zone")
KVM_CREATE_PIT2 = _iow(0x77, "struct kvm_pit_config")
KVM_ENABLE_CAP = _iow(0xA3, "struct kvm_enable_cap")
KVM_SIGNAL_MSI = _iow(0xA5, "struct kvm_msi")
KVM_X86_SET_MSR_FILTER = _iow(0xC6, "struct kvm_msr_filter")
# vcpu fd
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, "struct kvm_regs")
KVM_SET_REGS = _iow(0x82, "struct kvm_regs")
KVM_GET_SREGS = _ior(0x83, "struct kvm_sregs")
KVM_SET_SREGS = _iow(0x84, "struct kvm_sregs")
KVM_TRANSLATE = _iowr(0x85, "struct kvm_translation")
KVM_GET_MSRS = _iowr(0x88, "struct kvm_msrs")
KVM_SET_MSRS = _iow(0x89, "struct kvm_msrs")
KVM_SET_CPUID2 = _iow(0x90, "struct kvm_cpuid2")
KVM_GET_MP_STATE = _ior(0x98, "struct kvm_mp_state")
KVM_SET_MP_STATE = _iow(0x99, "struct kvm_mp_state")
KVM_SET_GUEST_DEBUG = _iow(0x9B, "struct kvm_guest_debug")
KVM_GET_VCPU_EVENTS = _ior(0x9F, "struct kvm_vcpu_events")
KVM_SET_VCPU_EVENTS = _iow(0xA0, "struct kvm_vcpu_events")
KVM_GET_DEBUGREGS = _ior(0xA1, "struct kvm_debugregs")
KVM_SET_DEBUGREGS = _iow(0xA2, "struct kvm_debugregs")
KVM_GET_XSAVE = _ior(0xA4, "struct kvm_xsave")
KVM_SET_XSAVE = _iow(0xA5, "struct kvm_xsave")
KVM_GET_XCRS = _ior(0xA6, "struct kvm_xcrs")
KVM_SET_XCRS = _iow(0xA7, "struct kvm_xcrs")

# capabilities (KVM_CHECK_EXTENSION)
CAPS = {
    "IRQCHIP": 0, "USER_MEMORY": 3, "SET_TSS_ADDR": 4, "EXT_CPUID": 7, "NR_VCPUS": 9, "MP_STATE": 14,
    "COALESCED_MMIO": 15, "SET_GUEST_DEBUG": 23, "PIT2": 33, "SET_IDENTITY_MAP_ADDR": 37,
    "INTERNAL_ERROR_DATA": 40, "VCPU_EVENTS": 41, "XSAVE": 55, "TSC_CONTROL": 60, "MAX_VCPUS": 66,
    "SIGNAL_MSI": 77, "SPLIT_IRQCHIP": 121, "IMMEDIATE_EXIT": 136, "COALESCED_PIO": 162,
    "EXCEPTION_PAYLOAD": 164, "DEBUGREGS": 50, "X86_USER_SPACE_MSR": 188, "X86_MSR_FILTER": 189, "X86_TRIPLE_FAULT_EVENT": 218,
}
KVM_CAP_X86_USER_SPACE_MSR = CAPS["X86_USER_SPACE_MSR"]

# exit reasons
EXIT_NAMES = {
    0: "unknown", 1: "exception", 2: "io", 3: "hypercall", 4: "debug", 5: "hlt", 6: "mmio",
    7: "irq-window-open", 8: "shutdown", 9: "fail-entry", 10: "intr", 11: "set-tpr", 12: "tpr-access",
    16: "nmi", 17: "internal-error", 21: "watchdog", 24: "system-event", 26: "ioapic-eoi", 27: "hyperv",
    29: "rdmsr", 30: "wrmsr", 31: "dirty-ring-full", 32: "ap-reset-hold", 33: "bus-lock", 37: "notify",
}
KVM_EXIT_UNKNOWN, KVM_EXIT_IO, KVM_EXIT_HLT, KVM_EXIT_MMIO = 0, 2, 5, 6
KVM_EXIT_DEBUG = 4
KVM_EXIT_SHUTDOWN, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_INTR = 8, 9, 10
KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_SYSTEM_EVENT = 17, 24
KVM_EXIT_X86_RDMSR, KVM_EXIT_X86_WRMSR = 29, 30
KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1

KVM_INTERNAL_ERROR_EMULATION = 1
INTERNAL_SUBERRORS = {1: "emulation", 2: "simultaneous-exception", 3: "delivery-event",
                      4: "unexpected-exit-reason"}
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1

KVM_SYSTEM_EVENT_SHUTDOWN, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_CRASH = 1, 2, 3

KVM_MSR_EXIT_REASON_INVAL, KVM_MSR_EXIT_REASON_UNKNOWN, KVM_MSR_EXIT_REASON_FILTER = 1, 2, 4
KVM_MSR_FILTER_READ, KVM_MSR_FILTER_WRITE = 1, 2
KVM_MSR_FILTER_DEFAULT_ALLOW, KVM_MSR_FILTER_DEFAULT_DENY = 0, 1
KVM_MSR_FILTER_MAX_RANGES = 16
KVM_MSR_FILTER_MAX_BITMAP_SIZE = 0x600

KVM_PIT_SPEAKER_DUMMY = 1
KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED = 0, 1, 2
KVM_MP_STATE_HALTED = 3

KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1
KVM_VCPUEVENT_VALID_SHADOW = 0x4
KVM_VCPUEVENT_VALID_PAYLOAD = 0x10

# KVM_SET_GUEST_DEBUG control bits
KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP = 0x1, 0x2
KVM_GUESTDBG_USE_SW_BP, KVM_GUESTDBG_USE_HW_BP = 0x10000, 0x20000
KVM_GUESTDBG_INJECT_DB, KVM_GUESTDBG_INJECT_BP, KVM_GUESTDBG_BLOCKIRQ = 0x40000, 0x80000, 0x100000

KVM_SYNC_X86_REGS = 1
KVM_PIO_PAGE_OFFSET = 1
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
PAGE_SIZE = 4096
KVM_COALESCED_MMIO_MAX = (PAGE_SIZE - ffi.sizeof("struct kvm_coalesced_mmio_ring")) // ffi.sizeof(
    "struct kvm_coalesced_mmio")

# mmap
PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED = 1
MAP_FAILED = ffi.cast("void *", -1)

# Every ioctl name this module defines, for the conformance test.
IOCTLS = {name: value for name, value in dict(globals()).items()
          if name.startswith("KVM_") and name.isupper() and isinstance(value, int)
          and name in {"KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
                       "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION",
                       "KVM_SET_TSS_ADDR", "KVM_SET_IDENTITY_MAP_ADDR", "KVM_CREATE_IRQCHIP", "KVM_IRQ_LINE",
                       "KVM_REGISTER_COALESCED_MMIO", "KVM_UNREGISTER_COALESCED_MMIO", "KVM_CREATE_PIT2",
                       "KVM_ENABLE_CAP", "KVM_X86_SET_MSR_FILTER", "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS",
                       "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_TRANSLATE", "KVM_GET_MSRS", "KVM_SET_MSRS",
                       "KVM_SET_CPUID2", "KVM_GET_MP_STATE", "KVM_SET_MP_STATE", "KVM_GET_VCPU_EVENTS",
                       "KVM_SET_VCPU_EVENTS", "KVM_SET_GUEST_DEBUG", "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", "KVM_GET_XSAVE", "KVM_SET_XSAVE", "KVM_GET_XCRS",
                       "KVM_SET_XCRS", "KVM_SIGNAL_MSI"}}
