"""The arm64 vCPU run loop: KVM_RUN, then answer the exit, until the VM stops.

It is the x86 VcpuLoop's structure (harness.kvm.runloop) with arm64's exits: the stop control
(immediate_exit + kick signal), the MMIO dispatch and its gap records, PSCI SYSTEM_OFF /
SYSTEM_RESET as KVM_EXIT_SYSTEM_EVENT, FAIL_ENTRY and unknown exits are inherited, not copied.
What differs: no port I/O, no MSRs, no x86 rescues; registers come from KVM_GET_ONE_REG; a data
abort KVM cannot decode (no ISV in the syndrome: a load/store pair or writeback to MMIO) is
KVM_EXIT_ARM_NISV, an `mmio-no-syndrome` gap that stops the VM; an internal error is a
host-emulation failure with the vCPU's registers.

Blind spots, by KVM design on Linux 6.1: an unknown system-register access is answered in the
kernel (UNDEF injected into the guest, never a user-space exit), and an HVC/SMC outside PSCI and
the SMCCC architecture calls is answered in the kernel with NOT_SUPPORTED. Neither can become a
gap record here; the machine summary lists them under `blind_spots`.
"""
from __future__ import annotations

import errno
import struct
import threading
import time
from typing import Any

from harness.kvm.arch.aarch64 import ffi as a
from harness.kvm.arch.aarch64.ffi import EXIT_NAMES
from harness.kvm.ffi import libc
from harness.kvm.ffi import ffi as x86_ffi
from harness.kvm.runloop import (STOP_EMULATION_FAILURE, STOP_ERROR, STOP_REQUESTED, RunConfig, StopInfo,
                                 VcpuLoop)
from harness.model import events as ev
from harness.model import gap as gaps
from harness.model.gap import GapRecord

BLIND_SPOTS = ("unknown system-register traps (KVM injects UNDEF in the kernel)",
               "HVC/SMC outside PSCI and SMCCC arch calls (KVM answers NOT_SUPPORTED in the kernel)")
_HEAD = struct.Struct("<I")
MMIO_NO_SYNDROME = "mmio-no-syndrome"
PC_NOT_READ = -1          # an MMIO exit's PC is read only when the access becomes a gap


class Aarch64VcpuLoop(VcpuLoop):
    """One arm64 vCPU's loop; `vcpu` is a harness.kvm.arch.aarch64.vm.Aarch64Vcpu."""

    def __init__(self, vm: Any, vcpu: Any, cfg: RunConfig, on_power_on: Any = None) -> None:
        self.vm, self.vcpu, self.cfg = vm, vcpu, cfg
        self.counts = [0] * 64
        self.stop_requested = False
        self.stopped_by: StopInfo | None = None
        self.rescuer = None
        self.powered_on = vcpu.index == 0       # secondaries start in POWER_OFF (wait for CPU_ON)
        self._on_power_on = on_power_on

    def exit_counts(self) -> dict[str, int]:
        return {EXIT_NAMES.get(i, f"exit-{i}"): n for i, n in enumerate(self.counts) if n}

    def _loop(self) -> StopInfo:
        fd, buf, index = self.vcpu.fd, self.vcpu.run_buffer, self.vcpu.index
        kvm_run = x86_ffi.cast("unsigned long", a.KVM_RUN)
        zero = x86_ffi.cast("unsigned long", 0)
        ioctl, head, counts = libc.ioctl, _HEAD.unpack_from, self.counts
        ring, drain, mmio_write = self.vm.ring, self.vm.drain_ring, self.cfg.mmio_bus.write
        while True:
            if self.stop_requested:
                return StopInfo(STOP_REQUESTED, index)
            ret = ioctl(fd, kvm_run, zero)
            if not self.powered_on:
                self._check_power_on()
            # Coalesced writes (the PL011's DR, option coalesce_serial) came before this exit:
            # replay them first, so the access that exited sees the device they left behind.
            if ring is not None and ring.first != ring.last:
                drain(mmio_write)
            if ret < 0:
                err = x86_ffi.errno
                if err in (errno.EINTR, errno.EAGAIN):
                    buf[1] = 0          # immediate_exit back to 0 so a later run is not cut short
                    continue
                if err == errno.ENOSYS:     # a data abort KVM could not decode, NISV not routed to us
                    return self._no_syndrome(None)
                return StopInfo(STOP_ERROR, index, {"message": f"KVM_RUN failed: errno {err}"})
            reason = head(buf, 8)[0]
            counts[reason & 63] += 1
            stop = self._exit(reason)
            if stop is not None:
                return stop

    def _check_power_on(self) -> None:
        """A secondary left POWER_OFF: the guest's PSCI CPU_ON reached it (KVM handled the call)."""
        try:
            state = self.vcpu.mp_state()
        except OSError:
            return
        if state != a.KVM_MP_STATE_STOPPED:
            self.powered_on = True
            if self._on_power_on is not None:
                self._on_power_on(self.vcpu.index)

    def _exit(self, reason: int) -> StopInfo | None:
        run, vcpu = self.vcpu.run, self.vcpu
        t = time.monotonic()
        if reason == a.KVM_EXIT_MMIO:
            # No PC here: on arm64 it costs a KVM_GET_ONE_REG, i.e. a vcpu_load/vcpu_put of the
            # whole EL1 context, on every console byte. The entry keeps the address; a gap reads PC.
            mmio = run.mmio
            addr = int(mmio.phys_addr)
            self.cfg.recorder.record(reason, addr, PC_NOT_READ, t, vcpu.index)
            self._mmio(addr, int(mmio.len), bool(mmio.is_write), PC_NOT_READ)
            return None
        pc = vcpu.current_pc()
        self.cfg.recorder.record(reason, 0, pc, t, vcpu.index)
        if reason == a.KVM_EXIT_INTR:
            return None
        if reason == a.KVM_EXIT_SYSTEM_EVENT:
            return self._system_event(pc)
        if reason == a.KVM_EXIT_ARM_NISV:
            return self._no_syndrome(pc)
        if reason == a.KVM_EXIT_INTERNAL_ERROR:
            return self._internal_error(pc)
        if reason == a.KVM_EXIT_FAIL_ENTRY:
            return self._fail_entry(pc)
        return self._unknown_exit(reason, pc)

    def _registers(self) -> dict[str, Any]:
        return {name: f"{value:#x}" for name, value in self.vcpu.registers().items()}

    def _mmio_gap(self, addr: int, size: int, access: str, value: int, rip: int) -> None:
        super()._mmio_gap(addr, size, access, value, self.vcpu.current_pc() if rip == PC_NOT_READ else rip)

    def _no_syndrome(self, pc: int | None) -> StopInfo:
        run = self.vcpu.run
        pc = self.vcpu.current_pc() if pc is None else pc
        ipa = int(run.arm_nisv.fault_ipa)
        detail = {"fault_ipa": f"{ipa:#x}", "esr_iss": f"{int(run.arm_nisv.esr_iss):#x}", "pc": f"{pc:#x}",
                  "registers": self._registers()}
        self.cfg.gaps.record(GapRecord(kind=gaps.MMIO, key=f"{ipa:#x}", first_rip=pc, fate=gaps.FATE_STOPPED,
                                       access=MMIO_NO_SYNDROME, vcpu=self.vcpu.index, detail=detail))
        return StopInfo(STOP_EMULATION_FAILURE, self.vcpu.index, {"insn": MMIO_NO_SYNDROME, **detail})

    def _internal_error(self, pc: int) -> StopInfo:
        run = self.vcpu.run
        suberror = int(run.internal.suberror)
        data = [f"{int(run.internal.data[i]):#x}" for i in range(min(int(run.internal.ndata), 16))]
        word = self._instruction_word(pc)
        detail = {"suberror": suberror, "data": data, "insn": word, "pc": f"{pc:#x}", "vcpu": self.vcpu.index,
                  "registers": self._registers(), "flight_recorder": self.cfg.recorder.dump()}
        self.cfg.emit(ev.VmEvent(ev.HOST_EMULATION_FAILURE, time.monotonic(), detail))
        self.cfg.gaps.record(GapRecord(kind=gaps.HOST_EMULATION_FAILURE, key=word, first_rip=pc,
                                       fate=gaps.FATE_STOPPED, vcpu=self.vcpu.index,
                                       detail={k_: detail[k_] for k_ in ("suberror", "insn", "registers")}))
        return StopInfo(STOP_EMULATION_FAILURE, self.vcpu.index, {"insn": word, "rip": f"{pc:#x}",
                                                                  "suberror": suberror})

    def _instruction_word(self, pc: int) -> str:
        """The A64 instruction at PC when the MMU is off (PC is then a guest-physical address)."""
        if self.vm.ram.contains(pc, 4):
            return f"{self.vm.ram.read_u32(pc):08x}"
        return "unknown (pc not in RAM / MMU on)"


def kick_until_powered_on(loops: list[Aarch64VcpuLoop], done: threading.Event, period_s: float = 0.05) -> None:
    """Secondaries sleep inside KVM_RUN until CPU_ON; a periodic kick lets each look at its own
    MP state (another thread cannot: KVM_GET_MP_STATE waits for the vCPU's KVM_RUN to return)."""
    while not done.wait(period_s):
        waiting = [lp for lp in loops if not lp.powered_on and lp.stopped_by is None]
        if not waiting:
            return
        for loop in waiting:
            ident = loop.vcpu.thread_ident
            if ident is not None:
                import signal
                from harness.kvm.runloop import KICK_SIGNAL
                try:
                    signal.pthread_kill(ident, KICK_SIGNAL)
                except (ProcessLookupError, OSError):
                    pass
