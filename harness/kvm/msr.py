"""MSR gap policy: which MSR accesses exit to user space, and what the guest gets back.

KVM_CAP_X86_USER_SPACE_MSR (reasons INVAL | UNKNOWN | FILTER) sends MSRs KVM does not know
to us, and KVM_X86_SET_MSR_FILTER denies the watched ones (TSC, MTRRcap, the MTRR/PAT block)
in the kernel so they exit too. Policies:
  gp       inject #GP, as a CPU without the MSR would
  zero     reads return 0, writes are dropped
  emulate  answer as hardware: the real guest TSC (read through KVM_GET_MSRS, which the filter
           does not apply to), MTRRcap 0x508, stored MTRR/PAT/defType values; unknown MSRs read 0
Every access becomes a GapRecord (tsc-msr / mtrr-probe / msr-read / msr-write).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from harness.arch.x86_64 import regs
from harness.errors import lookup
from harness.kvm import ffi as k
from harness.kvm.ffi import ffi
from harness.kvm.system import ioctl
from harness.model.gap import (FATE_CONTINUED, FATE_GP_INJECTED, GAP_POLICIES, MSR_READ, MSR_WRITE, MTRR_PROBE,
                               TSC_MSR, GapRecord)

if TYPE_CHECKING:
    from harness.kvm.vcpu import Vcpu
    from harness.kvm.vm import Vm

POLICIES = tuple(GAP_POLICIES)
MTRRCAP_VALUE = 0x508                  # 8 variable ranges, fixed ranges supported, WC supported
PAT_RESET_VALUE = 0x0007040600070406
# Ranges the filter denies in the kernel, so the guest's access exits to us: (first index, count).
WATCHED_RANGES = ((regs.MSR_TSC, 1), (regs.MSR_MTRRCAP, 1),
                  (regs.MSR_MTRR_FIRST, regs.MSR_MTRR_LAST - regs.MSR_MTRR_FIRST + 1))


def check_policy(policy: str) -> str:
    lookup(GAP_POLICIES, policy, "gap policy")
    return policy


def gap_kind(index: int, write: bool) -> str:
    if index == regs.MSR_TSC:
        return TSC_MSR
    if index == regs.MSR_MTRRCAP or regs.MSR_MTRR_FIRST <= index <= regs.MSR_MTRR_LAST:
        return MTRR_PROBE
    return MSR_WRITE if write else MSR_READ


def install(vm: "Vm") -> dict[str, bool]:
    """Route unknown and watched MSRs to user space. Returns what the host accepted."""
    status = {"user_space_msr": False, "filter": False}
    if not vm.caps.get("X86_USER_SPACE_MSR"):
        return status
    cap = ffi.new("struct kvm_enable_cap *")
    cap.cap = k.KVM_CAP_X86_USER_SPACE_MSR
    cap.args[0] = k.KVM_MSR_EXIT_REASON_INVAL | k.KVM_MSR_EXIT_REASON_UNKNOWN | k.KVM_MSR_EXIT_REASON_FILTER
    ioctl(vm.fd, k.KVM_ENABLE_CAP, cap, what="KVM_ENABLE_CAP(X86_USER_SPACE_MSR)")
    status["user_space_msr"] = True
    if not vm.caps.get("X86_MSR_FILTER"):
        return status
    filt = ffi.new("struct kvm_msr_filter *")
    filt.flags = k.KVM_MSR_FILTER_DEFAULT_ALLOW
    keep = []
    for i, (base, count) in enumerate(WATCHED_RANGES):
        bitmap = ffi.new("uint8_t[]", (count + 7) // 8)  # all zero: deny -> exit with reason FILTER
        keep.append(bitmap)
        rng = filt.ranges[i]
        rng.flags = k.KVM_MSR_FILTER_READ | k.KVM_MSR_FILTER_WRITE
        rng.nmsrs, rng.base, rng.bitmap = count, base, bitmap
    ioctl(vm.fd, k.KVM_X86_SET_MSR_FILTER, filt, what="KVM_X86_SET_MSR_FILTER")  # KVM copies the bitmaps
    status["filter"] = True
    return status


class MsrPolicy:
    """Answers MSR exits by policy; state (stored MTRRs) is per VM.

    `overrides` gives single MSRs another policy than the VM's (index -> policy): how gap
    bisection (harness.gaps.bisect) changes one gap at a time.
    """

    def __init__(self, policy: str, overrides: dict[int, str] | None = None) -> None:
        self.policy = check_policy(policy)
        self.overrides = {int(i): check_policy(p) for i, p in (overrides or {}).items()}
        self._stored: dict[int, int] = {regs.MSR_PAT: PAT_RESET_VALUE}
        self._written: set[int] = set()   # MSRs the guest wrote through a user-space exit
        self._lock = threading.Lock()

    def policy_for(self, index: int) -> str:
        return self.overrides.get(index, self.policy)

    def read(self, vcpu: "Vcpu", index: int) -> int | None:
        """The value the guest reads, or None to inject #GP."""
        policy = self.policy_for(index)
        if policy == "gp":
            return None
        if policy == "zero":
            return 0
        if index == regs.MSR_TSC:
            return _host_msr(vcpu, index, 0)
        if index == regs.MSR_MTRRCAP:
            return MTRRCAP_VALUE
        with self._lock:
            return self._stored.get(index, 0)

    def write(self, vcpu: "Vcpu", index: int, value: int) -> bool:
        """Apply a guest write; False to inject #GP."""
        policy = self.policy_for(index)
        if policy == "gp":
            return False
        if policy == "zero":
            return True
        if index == regs.MSR_TSC:
            _host_set_msr(vcpu, index, value)   # host-initiated: KVM moves the TSC offset
        elif index == regs.MSR_MTRRCAP:
            return False                         # read-only on hardware too
        else:
            with self._lock:
                self._stored[index] = value
                self._written.add(index)
        return True

    def guest_value(self, vcpu: "Vcpu", index: int) -> int | None:
        """What the guest's own RDMSR of `index` would return now, for rescues that read an MSR
        (rdtscp: TSC_AUX). A guest write that exited to user space (KVM refused the MSR, as kvm_pvm
        does TSC_AUX) lives here, and so do the reads that follow it; otherwise KVM holds the MSR."""
        with self._lock:
            if index in self._written:
                return self._stored[index]
        return read_host_msr(vcpu, index)

    def gap(self, index: int, write: bool, value: int, ok: bool, rip: int, vcpu: int, reason: int) -> GapRecord:
        return GapRecord(kind=gap_kind(index, write), key=f"{index:#x}", first_rip=rip, values=[value],
                         policy=self.policy_for(index), fate=FATE_CONTINUED if ok else FATE_GP_INJECTED,
                         access="write" if write else "read", vcpu=vcpu,
                         detail={"exit_reason": _REASONS.get(reason, reason)})


_REASONS = {k.KVM_MSR_EXIT_REASON_INVAL: "inval", k.KVM_MSR_EXIT_REASON_UNKNOWN: "unknown",
            k.KVM_MSR_EXIT_REASON_FILTER: "filter"}


def _msrs_buffer(index: int, value: int = 0):
    buf = ffi.new("char[]", ffi.sizeof("struct kvm_msrs") + ffi.sizeof("struct kvm_msr_entry"))
    msrs = ffi.cast("struct kvm_msrs *", buf)
    msrs.nmsrs = 1
    msrs.entries[0].index = index
    msrs.entries[0].data = value
    return buf, msrs


def read_host_msr(vcpu: "Vcpu", index: int) -> int | None:
    """The MSR's value through KVM_GET_MSRS (host-initiated), None when KVM cannot read it."""
    buf, msrs = _msrs_buffer(index)
    try:
        n = ioctl(vcpu.fd, k.KVM_GET_MSRS, msrs, what="KVM_GET_MSRS")
    except OSError:
        return None
    return int(msrs.entries[0].data) if n == 1 else None


def _host_msr(vcpu: "Vcpu", index: int, default: int) -> int:
    value = read_host_msr(vcpu, index)
    return default if value is None else value


def _host_set_msr(vcpu: "Vcpu", index: int, value: int) -> None:
    buf, msrs = _msrs_buffer(index, value)
    try:
        ioctl(vcpu.fd, k.KVM_SET_MSRS, msrs, what="KVM_SET_MSRS")
    except OSError:
        pass  # the guest's write is then dropped; the gap record still shows it
