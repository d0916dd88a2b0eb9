"""x86 debug registers and KVM guest debugging: the ioctls and the bits, named once.

KVM_SET_GUEST_DEBUG puts a vCPU under the host debugger's control: single-step (every instruction
ends in KVM_EXIT_DEBUG), software breakpoints (the guest's #BP exits instead of being delivered),
and hardware breakpoints from `debugreg[0..3]` + a DR7 value (exits on #DB). KVM_GET_DEBUGREGS is
the guest's own view of DR0-DR3/DR6/DR7. `data_breakpoints_work()` and `exec_breakpoints_work()`
and (harness.backends.builtin_gdb) `int3_breakpoints_work()` measure on a scratch VM whether this host reports data (write) and
execute breakpoints and INT3s at all: kvm_pvm's batch emulation reports execute breakpoints, and
INT3 as an emulation failure, but no data breakpoints; the lab (kvm_amd nested in QEMU TCG, whose
SVM arms no DR7 of a nested guest and delivers its INT3 to the guest itself) reports none of
them, so the debugger plants TRAP_INSN there instead.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from harness.arch.x86_64.regs import RFLAGS_FIXED
from harness.kvm import ffi as k
from harness.kvm.ffi import ffi
from harness.kvm.system import ioctl

# DR7: L0..L3 enable bits at 2*i, R/W field at 16 + 4*i, LEN field at 18 + 4*i.
DR7_FIXED_ONE = 1 << 10
RW_EXEC, RW_WRITE, RW_IO, RW_ACCESS = 0b00, 0b01, 0b10, 0b11
LEN_BITS = {1: 0b00, 2: 0b01, 8: 0b10, 4: 0b11}
# DR6: B0..B3 (which slot fired) and BS (single step).
DR6_SLOT_MASK, DR6_BS = 0xF, 1 << 14
SLOTS = 4
DB_VECTOR, BP_VECTOR = 1, 3


@dataclass(frozen=True)
class HwSlot:
    addr: int
    rw: int          # RW_EXEC | RW_WRITE | RW_ACCESS
    length: int      # 1, 2, 4, 8 (an execute breakpoint is 1)


def dr7_value(slots: list[HwSlot | None]) -> int:
    value = DR7_FIXED_ONE
    for i, slot in enumerate(slots[:SLOTS]):
        if slot is None:
            continue
        value |= 1 << (2 * i)
        value |= slot.rw << (16 + 4 * i)
        value |= (0 if slot.rw == RW_EXEC else LEN_BITS[slot.length]) << (18 + 4 * i)
    return value


def set_guest_debug(vcpu_fd: int, *, single_step: bool = False, sw_breakpoints: bool = False,
                    hw_slots: list[HwSlot | None] | None = None) -> int:
    """Program KVM_SET_GUEST_DEBUG; nothing asked means guest debugging off. Returns the control word."""
    dbg = ffi.new("struct kvm_guest_debug *")
    control = 0
    if single_step:
        control |= k.KVM_GUESTDBG_SINGLESTEP
    if sw_breakpoints:
        control |= k.KVM_GUESTDBG_USE_SW_BP
    if hw_slots and any(hw_slots):
        control |= k.KVM_GUESTDBG_USE_HW_BP
        for i, slot in enumerate(hw_slots[:SLOTS]):
            dbg.arch.debugreg[i] = slot.addr if slot else 0
        dbg.arch.debugreg[7] = dr7_value(hw_slots)
    if control:
        control |= k.KVM_GUESTDBG_ENABLE
    dbg.control = control
    ioctl(vcpu_fd, k.KVM_SET_GUEST_DEBUG, dbg, what="KVM_SET_GUEST_DEBUG")
    return control


def guest_debugregs(vcpu_fd: int) -> dict[str, int]:
    """The guest's own DR0-DR3, DR6, DR7 (KVM_GET_DEBUGREGS)."""
    regs = ffi.new("struct kvm_debugregs *")
    ioctl(vcpu_fd, k.KVM_GET_DEBUGREGS, regs, what="KVM_GET_DEBUGREGS")
    return {**{f"dr{i}": int(regs.db[i]) for i in range(4)}, "dr6": int(regs.dr6), "dr7": int(regs.dr7)}


# Real mode, at 0x1000: store AX at [0x800], then HLT. DR0 watches 0x800 for writes.
_PROBE_CODE = bytes.fromhex("b83412" "a30008" "f4")   # mov ax, 0x1234; mov [0x800], ax; hlt
_PROBE_LOAD, _PROBE_DATA = 0x1000, 0x800


def _enter_real_mode_at(vcpu: Any, linear: int) -> None:
    """The vCPU's reset state (real mode) with CS based at 0 and IP = `linear` (< 64 KiB). The KVM
    floor cannot use the loaders' EntryState (harness.boot sits beside it), and needs no more."""
    sregs = vcpu.get_sregs()
    sregs.cs.selector, sregs.cs.base = 0, 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs({**vcpu.get_regs(), "rip": linear, "rflags": RFLAGS_FIXED})


# Where an INT3 never reaches KVM (the lab: QEMU TCG checks SVM's INTn intercept for INT3, not
# the #BP exception intercept kvm_amd sets, so the nested guest takes its own #BP), a software
# breakpoint is `in al, TRAP_PORT` instead: port I/O that no KVM device claims always exits to
# user space, where the run loop hands it to the debugger (harness.kvm.debugger.io_trap).
TRAP_PORT = 0xEF
TRAP_INSN = bytes((0xE4, TRAP_PORT))           # in al, imm8


@functools.lru_cache(maxsize=1)
def data_breakpoints_work() -> bool:
    """Does a DR0 write breakpoint (through KVM_SET_GUEST_DEBUG) stop a guest on this host? Measured."""
    return probe(_PROBE_CODE, hw_slots=[HwSlot(_PROBE_DATA, RW_WRITE, 2), None, None, None]) == k.KVM_EXIT_DEBUG


@functools.lru_cache(maxsize=1)
def exec_breakpoints_work() -> bool:
    """Does a DR0 execute breakpoint (on the probe's second instruction) stop a guest here? Measured."""
    return probe(_PROBE_CODE, hw_slots=[HwSlot(_PROBE_LOAD + 3, RW_EXEC, 1), None, None, None]) == k.KVM_EXIT_DEBUG


def probe(code: bytes, enter: Any = None, **debug: Any) -> int:
    """The first exit of a scratch guest running `code` (real mode at _PROBE_LOAD, or wherever
    `enter(vcpu, ram)` put it: the loaders sit above this floor) under KVM_SET_GUEST_DEBUG `debug`."""
    from harness import layout
    from harness.kvm.vm import Vm
    from harness.memory import GuestRam
    ram = GuestRam(2 * layout.MiB)
    vm = Vm(ram, irqchip=False)     # no in-kernel LAPIC: a HLT exits to user space
    try:
        vcpu = vm.create_vcpu()
        if enter is None:
            ram.write(_PROBE_LOAD, code)
            _enter_real_mode_at(vcpu, _PROBE_LOAD)
        else:
            enter(vcpu, ram)
        set_guest_debug(vcpu.fd, **debug)
        ioctl(vcpu.fd, k.KVM_RUN, 0, what="KVM_RUN")
        return int(vcpu.run.exit_reason)
    finally:
        vm.close()
