"""cffi (ABI mode) declarations of the arm64 KVM API the aarch64 VMM uses.

Layouts follow <linux/kvm.h> and arm64's <asm/kvm.h>; tests/kvm/test_ffi_aarch64.py compiles a
program with the aarch64 cross compiler against the arm64 headers and checks every size, offset,
ioctl number and register id used here. All structs are naturally aligned u32/u64 fields, which
LP64 lays out identically on x86-64 and arm64, so the layout cffi computes is the guest host's.
The ioctl numbers use asm-generic/ioctl.h, shared with x86 (harness.kvm.ffi).
"""
from __future__ import annotations

import cffi

from harness.arch.aarch64 import regs as arm
from harness.kvm import ffi as generic
from harness.kvm.ffi import _IOC_READ, _IOC_WRITE, _ioc

ffi = cffi.FFI()
ffi.cdef("""
struct kvm_userspace_memory_region {
    uint32_t slot; uint32_t flags; uint64_t guest_phys_addr; uint64_t memory_size; uint64_t userspace_addr;
};
struct kvm_vcpu_init { uint32_t target; uint32_t features[7]; };
struct kvm_one_reg { uint64_t id; uint64_t addr; };
struct kvm_create_device { uint32_t type; uint32_t fd; uint32_t flags; };
struct kvm_device_attr { uint32_t flags; uint32_t group; uint64_t attr; uint64_t addr; };
struct kvm_irq_level { uint32_t irq; uint32_t level; };
struct kvm_mp_state { uint32_t mp_state; };
struct kvm_coalesced_mmio_zone { uint64_t addr; uint32_t size; uint32_t pio; };
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
        struct { uint64_t phys_addr; uint8_t data[8]; uint32_t len; uint8_t is_write; } mmio;
        struct { uint64_t nr; uint64_t args[6]; uint64_t ret; uint64_t flags; } hypercall;
        struct { uint32_t suberror; uint32_t ndata; uint64_t data[16]; } internal;
        struct { uint32_t type; uint32_t ndata; uint64_t data[16]; } system_event;
        struct { uint64_t esr_iss; uint64_t fault_ipa; } arm_nisv;
        char padding[256];
    };
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    union { uint64_t device_irq_level; char padding[2048]; } s;
};
""")


def _sized(direction: int, nr: int, ctype: str) -> int:
    return _ioc(direction, nr, ffi.sizeof(ctype))


# Arch-neutral ioctls (no argument, or a struct with one layout everywhere) are the x86 module's.
KVM_CREATE_VM, KVM_CHECK_EXTENSION = generic.KVM_CREATE_VM, generic.KVM_CHECK_EXTENSION
KVM_GET_VCPU_MMAP_SIZE, KVM_CREATE_VCPU, KVM_RUN = (generic.KVM_GET_VCPU_MMAP_SIZE, generic.KVM_CREATE_VCPU,
                                                     generic.KVM_RUN)
KVM_SET_USER_MEMORY_REGION, KVM_IRQ_LINE = generic.KVM_SET_USER_MEMORY_REGION, generic.KVM_IRQ_LINE
KVM_GET_MP_STATE = generic.KVM_GET_MP_STATE
# arm64's own
KVM_GET_ONE_REG = _sized(_IOC_WRITE, 0xAB, "struct kvm_one_reg")
KVM_SET_ONE_REG = _sized(_IOC_WRITE, 0xAC, "struct kvm_one_reg")
KVM_ARM_VCPU_INIT = _sized(_IOC_WRITE, 0xAE, "struct kvm_vcpu_init")
KVM_ARM_PREFERRED_TARGET = _sized(_IOC_READ, 0xAF, "struct kvm_vcpu_init")
KVM_CREATE_DEVICE = _sized(_IOC_READ | _IOC_WRITE, 0xE0, "struct kvm_create_device")
KVM_SET_DEVICE_ATTR = _sized(_IOC_WRITE, 0xE1, "struct kvm_device_attr")
KVM_HAS_DEVICE_ATTR = _sized(_IOC_WRITE, 0xE3, "struct kvm_device_attr")
KVM_REGISTER_COALESCED_MMIO = _sized(_IOC_WRITE, 0x67, "struct kvm_coalesced_mmio_zone")
KVM_UNREGISTER_COALESCED_MMIO = _sized(_IOC_WRITE, 0x68, "struct kvm_coalesced_mmio_zone")

IOCTLS = {name: value for name, value in dict(globals()).items()
          if isinstance(value, int) and name in {"KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE", "KVM_CREATE_VCPU",
                       "KVM_SET_USER_MEMORY_REGION", "KVM_IRQ_LINE", "KVM_RUN", "KVM_GET_MP_STATE",
                       "KVM_GET_ONE_REG", "KVM_SET_ONE_REG", "KVM_ARM_VCPU_INIT", "KVM_ARM_PREFERRED_TARGET",
                       "KVM_CREATE_DEVICE", "KVM_SET_DEVICE_ATTR", "KVM_HAS_DEVICE_ATTR",
                       "KVM_REGISTER_COALESCED_MMIO", "KVM_UNREGISTER_COALESCED_MMIO"}}

# capabilities
KVM_CAP_IRQCHIP = 0
KVM_CAP_NR_VCPUS = 9
KVM_CAP_COALESCED_MMIO = 15          # answers the ring's page offset in the vCPU mmap (arm64: 1)
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_ARM_PSCI = 87
KVM_CAP_ARM_PSCI_0_2 = 102
KVM_CAP_ARM_VM_IPA_SIZE = 165
KVM_CAP_ARM_NISV_TO_USER = 177
KVM_VM_TYPE_ARM_IPA_SIZE_MASK = 0xFF

# vCPU init features (bit numbers in features[0])
KVM_ARM_VCPU_POWER_OFF = 0
KVM_ARM_VCPU_EL1_32BIT = 1
KVM_ARM_VCPU_PSCI_0_2 = 2
KVM_ARM_VCPU_PMU_V3 = 3

# in-kernel devices
KVM_DEV_TYPE_ARM_VGIC_V2 = 5
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
KVM_DEV_ARM_VGIC_GRP_ADDR = 0
KVM_DEV_ARM_VGIC_GRP_NR_IRQS = 3
KVM_DEV_ARM_VGIC_GRP_CTRL = 4
KVM_DEV_ARM_VGIC_CTRL_INIT = 0
KVM_VGIC_V3_ADDR_TYPE_DIST = 2
KVM_VGIC_V3_ADDR_TYPE_REDIST = 3

# KVM_IRQ_LINE's irq field on arm64: type << 24 | vcpu << 16 | number
KVM_ARM_IRQ_TYPE_SHIFT = 24
KVM_ARM_IRQ_VCPU_SHIFT = 16
KVM_ARM_IRQ_TYPE_CPU, KVM_ARM_IRQ_TYPE_SPI, KVM_ARM_IRQ_TYPE_PPI = 0, 1, 2

# exits and system events (linux/kvm.h, arch-neutral numbers)
KVM_EXIT_UNKNOWN, KVM_EXIT_HYPERCALL, KVM_EXIT_MMIO = 0, 3, 6
KVM_EXIT_FAIL_ENTRY, KVM_EXIT_INTR, KVM_EXIT_INTERNAL_ERROR = 9, 10, 17
KVM_EXIT_SYSTEM_EVENT, KVM_EXIT_ARM_NISV = 24, 28
KVM_SYSTEM_EVENT_SHUTDOWN, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_CRASH = 1, 2, 3
KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED = 0, 5
EXIT_NAMES = {0: "unknown", 3: "hypercall", 6: "mmio", 9: "fail-entry", 10: "intr", 17: "internal-error",
              24: "system-event", 28: "arm-nisv"}

# --- register ids for KVM_GET/SET_ONE_REG (arm64 asm/kvm.h) --------------------------------------
KVM_REG_ARM64 = 0x6000_0000_0000_0000
KVM_REG_SIZE_U64 = 0x0030_0000_0000_0000
KVM_REG_ARM_COPROC_SHIFT = 16
KVM_REG_ARM_CORE = 0x0010 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM64_SYSREG = 0x0013 << KVM_REG_ARM_COPROC_SHIFT
# struct kvm_regs begins with struct user_pt_regs { u64 regs[31]; u64 sp; u64 pc; u64 pstate; }:
# a core register's id carries its offset in 32-bit words.
CORE_SP_OFFSET, CORE_PC_OFFSET, CORE_PSTATE_OFFSET = 31 * 8, 32 * 8, 33 * 8


def core_reg(byte_offset: int) -> int:
    return KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (byte_offset // 4)


def x_reg(n: int) -> int:
    if not 0 <= n <= 30:
        raise ValueError(f"x{n} is not a general-purpose register")
    return core_reg(8 * n)


REG_PC = core_reg(CORE_PC_OFFSET)
REG_SP = core_reg(CORE_SP_OFFSET)
REG_PSTATE = core_reg(CORE_PSTATE_OFFSET)


def sys_reg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    return (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG
            | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2)


REG_MPIDR_EL1 = sys_reg(*arm.MPIDR_EL1)
REG_ESR_EL1 = sys_reg(*arm.ESR_EL1)
REG_FAR_EL1 = sys_reg(*arm.FAR_EL1)
REG_VBAR_EL1 = sys_reg(*arm.VBAR_EL1)
REG_SCTLR_EL1 = sys_reg(*arm.SCTLR_EL1)
