"""One KVM vCPU: its fd, the shared kvm_run page, and register / event / MP-state access.

The run loop lives in harness.kvm.runloop; this module only wraps the ioctls so that the
loop reads like the exit handling it is.
"""
from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING, Any

from harness.kvm import ffi as k
from harness.kvm.ffi import ffi
from harness.kvm.system import ioctl

if TYPE_CHECKING:
    from harness.kvm.vm import Vm

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
SEGMENT_FIELDS = ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable")


class Vcpu:
    def __init__(self, vm: "Vm", index: int) -> None:
        self.vm = vm
        self.index = index
        self.fd = ioctl(vm.fd, k.KVM_CREATE_VCPU, index, what="KVM_CREATE_VCPU")
        self._map = mmap.mmap(self.fd, vm.vcpu_mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_buffer = memoryview(self._map)
        self.run = ffi.from_buffer("struct kvm_run *", self._map)
        self.thread_ident: int | None = None
        # Sync registers after every exit: the flight recorder gets RIP without an extra ioctl.
        self.sync_regs = bool(vm.caps.get("SYNC_REGS_OK"))
        if self.sync_regs:
            self.run.kvm_valid_regs = k.KVM_SYNC_X86_REGS

    # -- registers -------------------------------------------------------------------------
    def get_regs(self) -> dict[str, int]:
        regs = ffi.new("struct kvm_regs *")
        ioctl(self.fd, k.KVM_GET_REGS, regs, what="KVM_GET_REGS")
        return {name: getattr(regs, name) for name in GPRS}

    def set_regs(self, values: dict[str, int]) -> None:
        regs = ffi.new("struct kvm_regs *")
        ioctl(self.fd, k.KVM_GET_REGS, regs, what="KVM_GET_REGS")
        for name, value in values.items():
            setattr(regs, name, value & 0xFFFF_FFFF_FFFF_FFFF)
        ioctl(self.fd, k.KVM_SET_REGS, regs, what="KVM_SET_REGS")

    def get_sregs(self) -> Any:
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self.fd, k.KVM_GET_SREGS, sregs, what="KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: Any) -> None:
        ioctl(self.fd, k.KVM_SET_SREGS, sregs, what="KVM_SET_SREGS")

    def sregs_dict(self) -> dict[str, Any]:
        s = self.get_sregs()
        out: dict[str, Any] = {name: getattr(s, name) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer",
                                                                   "apic_base")}
        for seg in SEGMENTS:
            out[seg] = {f: getattr(getattr(s, seg), f) for f in ("base", "limit", "selector", "type", "db", "l")}
        out["gdt"] = {"base": s.gdt.base, "limit": s.gdt.limit}
        out["idt"] = {"base": s.idt.base, "limit": s.idt.limit}
        return out

    def current_rip(self) -> int:
        if self.sync_regs:
            return int(self.run.s.regs.regs.rip)
        return self.get_regs()["rip"]

    def set_entry(self, entry: Any) -> None:
        """Load an EntryState (harness.boot.entry) into kvm_sregs / kvm_regs: the loader decided it all."""
        sregs = self.get_sregs()
        for name in SEGMENTS:
            seg = entry.segments.get(name)
            if seg is None:
                continue
            target = getattr(sregs, name)
            for field in SEGMENT_FIELDS:
                setattr(target, field, int(getattr(seg, field, 0)))
        sregs.gdt.base, sregs.gdt.limit = entry.gdt_base, entry.gdt_limit
        sregs.idt.base, sregs.idt.limit = entry.idt_base, entry.idt_limit
        sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = entry.cr0, entry.cr3, entry.cr4, entry.efer
        self.set_sregs(sregs)
        regs = {name: 0 for name in GPRS}
        regs["rflags"] = 0x2  # bit 1 is reserved-as-one; KVM refuses entry without it
        regs.update(entry.gprs)
        regs["rip"] = entry.rip
        self.set_regs(regs)

    # -- translation, events, MP state ---------------------------------------------------
    def translate(self, linear: int) -> int | None:
        """Guest-physical address of `linear` under the vCPU's current paging, None when unmapped."""
        tr = ffi.new("struct kvm_translation *")
        tr.linear_address = linear
        try:
            ioctl(self.fd, k.KVM_TRANSLATE, tr, what="KVM_TRANSLATE")
        except OSError:
            return None
        return int(tr.physical_address) if tr.valid else None

    def get_events(self) -> Any:
        ev = ffi.new("struct kvm_vcpu_events *")
        ioctl(self.fd, k.KVM_GET_VCPU_EVENTS, ev, what="KVM_GET_VCPU_EVENTS")
        return ev

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        """Queue exception `vector` for delivery at the next KVM_RUN (used by instruction rescues)."""
        ev = self.get_events()
        ev.exception.injected = 1
        ev.exception.nr = vector
        ev.exception.has_error_code = 0 if error_code is None else 1
        ev.exception.error_code = error_code or 0
        ev.exception.pending = 0
        ev.flags = 0  # leave NMI / SIPI / SMM state as it is
        ioctl(self.fd, k.KVM_SET_VCPU_EVENTS, ev, what="KVM_SET_VCPU_EVENTS")

    def get_mp_state(self) -> int:
        st = ffi.new("struct kvm_mp_state *")
        ioctl(self.fd, k.KVM_GET_MP_STATE, st, what="KVM_GET_MP_STATE")
        return int(st.mp_state)

    def set_mp_state(self, state: int) -> None:
        st = ffi.new("struct kvm_mp_state *")
        st.mp_state = state
        ioctl(self.fd, k.KVM_SET_MP_STATE, st, what="KVM_SET_MP_STATE")

    def get_xcr0(self) -> int:
        """XCR0 as KVM holds it for this vCPU (what it loads on entry and sizes CPUID.(0xD,0) by)."""
        xcrs = ffi.new("struct kvm_xcrs *")
        ioctl(self.fd, k.KVM_GET_XCRS, xcrs, what="KVM_GET_XCRS")
        for i in range(min(xcrs.nr_xcrs, 16)):
            if xcrs.xcrs[i].xcr == 0:
                return int(xcrs.xcrs[i].value)
        return 0x3

    def set_xcr0(self, value: int) -> None:
        """KVM refuses (EINVAL) a value the vCPU's CPUID does not allow: set CPUID first."""
        xcrs = ffi.new("struct kvm_xcrs *")
        xcrs.nr_xcrs = 1
        xcrs.xcrs[0].xcr = 0
        xcrs.xcrs[0].value = value
        ioctl(self.fd, k.KVM_SET_XCRS, xcrs, what="KVM_SET_XCRS")

    def set_cpuid(self, entries: list[dict[str, int]]) -> None:
        buf = ffi.new("char[]", ffi.sizeof("struct kvm_cpuid2") + len(entries) * ffi.sizeof("struct kvm_cpuid_entry2"))
        cpuid = ffi.cast("struct kvm_cpuid2 *", buf)
        cpuid.nent = len(entries)
        for i, e in enumerate(entries):
            dst = cpuid.entries[i]
            for field in ("function", "index", "flags", "eax", "ebx", "ecx", "edx"):
                setattr(dst, field, e.get(field, 0))
        ioctl(self.fd, k.KVM_SET_CPUID2, cpuid, what="KVM_SET_CPUID2")

    def close(self) -> None:
        self.run = None
        try:
            self.run_buffer.release()
            self._map.close()
        except (BufferError, ValueError):
            pass  # a cffi view still references the page; the mapping goes with the process
        os.close(self.fd)
