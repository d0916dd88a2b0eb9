"""Stopping, inspecting and resuming the vCPUs of a running Machine: what a gdb stub drives.

All-stop model (like gdb's default): when one vCPU stops (a breakpoint, a single step, a watched
write, a failure held for the debugger, a debugger's interrupt), every other vCPU is kicked out of
KVM_RUN and parks too. A parked vCPU thread waits in `park()` until the debugger resumes it with
an action: continue, step, or stay parked while another vCPU steps. Registers and memory are read
and written from the debugger's thread only while every vCPU is parked (no ioctl races KVM_RUN).

Breakpoints:
  software   0xCC planted in guest RAM (originals kept and shown on reads); KVM_GUESTDBG_USE_SW_BP.
             kvm_pvm cannot emulate INT3 in ring 0 and ends KVM_RUN with an emulation failure on it
             instead of KVM_EXIT_DEBUG: an emulation failure on one of our planted 0xCC bytes is
             taken as that breakpoint (the run loop asks `owns_breakpoint`).
  hardware   DR0-DR3 through KVM_SET_GUEST_DEBUG (execute, write, access). On a host whose
             execute breakpoints never fire (measured: debugregs.exec_breakpoints_work; the lab)
             a hardware breakpoint is an INT3 like a software one, so it needs mapped memory.
  watch      a write watchpoint on a host that reports no data breakpoints (measured by
             debugregs.data_breakpoints_work) is served by single-stepping and comparing the
             watched bytes after every instruction: slow, but it stops right after the write, as
             the hardware would. Read/access watchpoints cannot be done that way and are refused.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from harness.errors import GuestMemoryError
from harness.kvm import debugregs as dr
from harness.kvm.ffi import KVM_EXIT_DEBUG  # noqa: F401  (the exit the run loop hands to debug_exit)

if TYPE_CHECKING:
    from harness.kvm.runloop import VcpuLoop
    from harness.memory import GuestRam

# Signals in stop replies (gdb's numbering).
SIGINT, SIGILL, SIGTRAP, SIGABRT, SIGSEGV = 2, 4, 5, 6, 11
CONTINUE, STEP, STAY = "c", "s", "stay"
INT3 = b"\xcc"
PAGE = 4096


@dataclass
class StopEvent:
    signal: int
    vcpu: int
    why: str = ""                    # swbreak | hwbreak | watch | step | interrupt | start | failure: ...
    addr: int | None = None          # the watched address of a watch stop
    final: bool = False              # a failure: resuming ends the VM


@dataclass
class SoftBreakpoint:
    linear: int
    phys: int
    original: bytes


@dataclass
class SteppedWatch:
    addr: int
    length: int
    last: bytes


@dataclass
class _VcpuState:
    parked: bool = False
    action: str = CONTINUE
    stepping_for_watch: bool = False


class Debugger:
    def __init__(self, loops: list["VcpuLoop"], ram: "GuestRam", *, wait_at_start: bool = False,
                 hold_failures: bool = False, data_breakpoints: bool | None = None,
                 exec_breakpoints: bool | None = None, int3_breakpoints: bool = True,
                 on_stop: Callable[[StopEvent], None] | None = None,
                 on_resume: Callable[[], None] | None = None) -> None:
        self.loops = loops
        self.ram = ram
        self.wait_at_start = wait_at_start
        self.hold_failures = hold_failures
        self.data_breakpoints = dr.data_breakpoints_work() if data_breakpoints is None else data_breakpoints
        self.exec_breakpoints = dr.exec_breakpoints_work() if exec_breakpoints is None else exec_breakpoints
        # what a software breakpoint plants: INT3 where it exits (measured by the caller, whose
        # floor has the long-mode loader: harness.backends.builtin_gdb.int3_breakpoints_work)
        self.patch = INT3 if int3_breakpoints else dr.TRAP_INSN
        self.on_stop = on_stop or (lambda event: None)
        self.on_resume = on_resume or (lambda: None)
        self._interrupt_event = (SIGINT, "interrupt", False)
        self.cond = threading.Condition()
        self.state = {loop.vcpu.index: _VcpuState() for loop in loops}
        self.generation = 0
        self.stop: StopEvent | None = None          # the event that stopped the VM, until resumed
        self.ended = False
        self.interrupting = False
        self.software: dict[int, SoftBreakpoint] = {}
        self.hardware: list[dr.HwSlot | None] = [None] * dr.SLOTS
        self.stepped: list[SteppedWatch] = []
        self.phys_mode = False                      # memory packets address guest-physical memory

    # -- called on vCPU threads (from the run loop) ------------------------------------------------
    def at_start(self, loop: "VcpuLoop") -> None:
        if self.wait_at_start:
            self.park(loop, StopEvent(SIGTRAP, loop.vcpu.index, "start"))
        else:
            self._program(loop, single_step=False)

    def paused(self, loop: "VcpuLoop") -> None:
        """The loop saw a pause request (another vCPU stopped, or the debugger interrupted)."""
        signal, why, final = self._interrupt_event
        self.park(loop, StopEvent(signal, loop.vcpu.index, why, final=final))

    def debug_exit(self, loop: "VcpuLoop") -> None:
        """KVM_EXIT_DEBUG: a single step, a hardware breakpoint/watchpoint or a software breakpoint."""
        arch = loop.vcpu.run.debug.arch
        index, dr6, pc = loop.vcpu.index, int(arch.dr6), int(arch.pc)
        if int(arch.exception) == dr.BP_VECTOR:
            self.park(loop, StopEvent(SIGTRAP, index, "swbreak"))
            return
        fired = dr6 & dr.DR6_SLOT_MASK
        slot = next((self.hardware[i] for i in range(dr.SLOTS) if fired >> i & 1 and self.hardware[i]), None)
        if slot is not None:
            why = "hwbreak" if slot.rw == dr.RW_EXEC else "watch"
            self.park(loop, StopEvent(SIGTRAP, index, why, None if slot.rw == dr.RW_EXEC else slot.addr))
            return
        if self.state[index].stepping_for_watch:
            hit = self._stepped_watch_hit()
            if hit is None:
                return                      # keep stepping: KVM_GUESTDBG_SINGLESTEP stays on
            self.park(loop, StopEvent(SIGTRAP, index, "watch", hit.addr))
            return
        self.park(loop, StopEvent(SIGTRAP, index, "step", pc))

    def io_trap(self, loop: "VcpuLoop") -> bool:
        """Port I/O at TRAP_PORT: one of our trap breakpoints (where INT3 never exits)? Then stop
        there; on resume, drop the port read KVM still means to complete (AL, RIP + 2)."""
        if self.patch != dr.TRAP_INSN or not self.software:
            return False
        rip = loop.vcpu.get_regs()["rip"]
        linear = self._linear_rip(loop, rip)
        phys = loop.vcpu.translate(linear)      # a breakpoint set by either address
        if not any(bp.phys == phys for bp in self.software.values()):
            return False
        # gdb resumes silently from a "swbreak" where it knows no breakpoint: one set by physical
        # address (before the guest mapped the code) stops as a plain SIGTRAP at the virtual one.
        why = "swbreak" if linear in self.software else "trap"
        self.park(loop, StopEvent(SIGTRAP, loop.vcpu.index, why))
        self._drop_pending_io(loop, rip)
        return True

    def owns_breakpoint(self, loop: "VcpuLoop", rip: int) -> bool:
        """An emulation failure at `rip`: is it one of our INT3s (kvm_pvm's way of reporting them)?"""
        linear = self._linear_rip(loop, rip)
        bp = self.software.get(linear)
        if bp is None:
            return False
        self.park(loop, StopEvent(SIGTRAP, loop.vcpu.index, "swbreak"))
        return True

    def failure(self, loop: "VcpuLoop", what: str, signal: int) -> None:
        """A terminal stop (triple fault, emulation failure): hold it for the debugger if asked."""
        if self.hold_failures:
            self.park(loop, StopEvent(signal, loop.vcpu.index, f"failure: {what}", final=True))

    def park(self, loop: "VcpuLoop", event: StopEvent) -> None:
        index = loop.vcpu.index
        loop.clear_pause()      # whatever parks it now satisfies a pause asked for meanwhile
        with self.cond:
            if self.ended:
                return
            state = self.state[index]
            state.parked, state.stepping_for_watch = True, False
            if self.stop is None:
                self.stop = event
                self.interrupting = False
                self._interrupt_event = (SIGINT, "interrupt", False)
                self._pause_others(index)
                self.on_stop(event)
            self.cond.notify_all()
            generation = self.generation
            while not self.ended:
                self.cond.wait()
                if self.generation != generation and state.action != STAY:
                    break
                generation = self.generation
            state.parked = False
            action = state.action
        if not self.ended:
            self._program(loop, single_step=action == STEP or self._needs_stepping(action),
                          stepping_for_watch=action == CONTINUE and self._needs_stepping(action))

    # -- called on the debugger's thread -----------------------------------------------------------
    def interrupt(self, signal: int = SIGINT, why: str = "interrupt") -> None:
        """Stop every vCPU (gdb's Ctrl-C, a new connection, a failure the runner saw)."""
        with self.cond:
            if self.stop is not None or self.ended:
                return
            if self.interrupting and self._interrupt_event[2]:
                return   # a failure hold is on its way to the vCPUs: it, not a new connection, names the stop
            self.interrupting = True
            self._interrupt_event = (signal, why, why.startswith("failure"))
            self._pause_others(None)

    def wait_stopped(self, timeout: float | None = None) -> StopEvent | None:
        """The stop event once the VM is stopped with every running vCPU parked; None on timeout or end."""
        with self.cond:
            stopped = self.cond.wait_for(lambda: self.ended or (self.stop is not None and self._all_parked()),
                                         timeout)
            return self.stop if stopped and not self.ended else None

    def resume(self, actions: dict[int, str], default: str = CONTINUE) -> None:
        with self.cond:
            for index, state in self.state.items():
                state.action = actions.get(index, default)
            self.stop = None
            self.generation += 1
            self.cond.notify_all()
        self.on_resume()

    def end(self) -> None:
        """The VM is going away: release every parked vCPU and never park again."""
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def vcpu_indexes(self) -> list[int]:
        return sorted(self.state)

    def loop_of(self, index: int) -> "VcpuLoop":
        return next(lp for lp in self.loops if lp.vcpu.index == index)

    # breakpoints and watchpoints (linear addresses, as gdb gives them)
    def add_software(self, index: int, linear: int) -> bool:
        if linear in self.software:
            return True
        if (linear & (PAGE - 1)) + len(self.patch) > PAGE:
            return False          # a 2-byte trap across a page: its halves may be anywhere
        phys = self.translate(index, linear)
        if phys is None:
            return False
        original = self.ram.read(phys, len(self.patch))
        self.ram.write(phys, self.patch)
        self.software[linear] = SoftBreakpoint(linear, phys, original)
        return True

    def remove_software(self, linear: int) -> bool:
        bp = self.software.pop(linear, None)
        if bp is not None:
            self.ram.write(bp.phys, bp.original)
        return True

    def add_hardware(self, index: int, addr: int, rw: int, length: int) -> bool:
        if rw == dr.RW_EXEC and not self.exec_breakpoints:
            return self.add_software(index, addr)   # an INT3 (hidden from reads) where DR0-DR3 never fire
        if rw != dr.RW_EXEC and not self.data_breakpoints:
            if rw != dr.RW_WRITE:
                return False          # a read can't be seen by comparing memory: refused, not faked
            data = self.read_memory(index, addr, length)
            self.stepped.append(SteppedWatch(addr, length, data))
            return True
        if length not in dr.LEN_BITS or addr % length:
            return False
        for i, slot in enumerate(self.hardware):
            if slot is None:
                self.hardware[i] = dr.HwSlot(addr, rw, 1 if rw == dr.RW_EXEC else length)
                return True
        return False

    def remove_hardware(self, addr: int, rw: int, length: int) -> bool:
        if rw == dr.RW_EXEC and not self.exec_breakpoints:
            return self.remove_software(addr)
        for watch in list(self.stepped):
            if rw == dr.RW_WRITE and watch.addr == addr and watch.length == length:
                self.stepped.remove(watch)
                return True
        for i, slot in enumerate(self.hardware):
            if slot is not None and slot.addr == addr and slot.rw == rw:
                self.hardware[i] = None
                return True
        return False

    def clear_all(self) -> None:
        for linear in list(self.software):
            self.remove_software(linear)
        self.hardware = [None] * dr.SLOTS
        self.stepped.clear()

    # memory (guest-virtual through the vCPU's page tables, or guest-physical)
    def translate(self, index: int, addr: int) -> int | None:
        if self.phys_mode:
            return addr
        return self.loop_of(index).vcpu.translate(addr)

    def read_memory(self, index: int, addr: int, length: int) -> bytes:
        out = bytearray()
        for at, size in _pages(addr, length):
            phys = self.translate(index, at)
            if phys is None:
                break
            try:
                out += self.ram.read(phys, size)
            except GuestMemoryError:
                break
        if not out:
            raise GuestMemoryError(f"{addr:#x} is not mapped guest memory", "")
        return self._unplant(addr, bytes(out))

    def write_memory(self, index: int, addr: int, data: bytes) -> None:
        done = 0
        for at, size in _pages(addr, len(data)):
            phys = self.translate(index, at)
            if phys is None:
                raise GuestMemoryError(f"{at:#x} is not mapped guest memory", "")
            chunk = data[done:done + size]
            self.ram.write(phys, chunk)
            for bp in self.software.values():   # a write over a planted breakpoint updates its original
                self._rewrite_original(bp, at, chunk)
            done += size

    # -- internals ---------------------------------------------------------------------------------
    def _pause_others(self, stopped: int | None) -> None:
        for loop in self.loops:
            if loop.vcpu.index != stopped and not self.state[loop.vcpu.index].parked:
                loop.request_pause()

    def _all_parked(self) -> bool:
        return all(st.parked or lp.stopped_by is not None for lp, st in
                   ((lp, self.state[lp.vcpu.index]) for lp in self.loops))

    def _needs_stepping(self, action: str) -> bool:
        return action == CONTINUE and bool(self.stepped)

    def _program(self, loop: "VcpuLoop", single_step: bool, stepping_for_watch: bool = False) -> None:
        self.state[loop.vcpu.index].stepping_for_watch = stepping_for_watch
        dr.set_guest_debug(loop.vcpu.fd, single_step=single_step, sw_breakpoints=bool(self.software),
                           hw_slots=self.hardware)

    def _stepped_watch_hit(self) -> SteppedWatch | None:
        index = self.loops[0].vcpu.index
        for watch in self.stepped:
            try:
                now = self.read_memory(index, watch.addr, watch.length)
            except GuestMemoryError:
                continue
            if now != watch.last:
                watch.last = now
                return watch
        return None

    def _linear_rip(self, loop: "VcpuLoop", rip: int) -> int:
        return (int(loop.vcpu.get_sregs().cs.base) + rip) & 0xFFFF_FFFF_FFFF_FFFF

    def _unplant(self, addr: int, data: bytes) -> bytes:
        if not self.software:
            return data
        out = bytearray(data)
        for linear, bp in self.software.items():
            for i, byte in enumerate(bp.original):
                if addr <= linear + i < addr + len(out):
                    out[linear + i - addr] = byte
        return bytes(out)

    def _rewrite_original(self, bp: SoftBreakpoint, addr: int, chunk: bytes) -> None:
        """`chunk` was written at `addr`: the bytes of it under `bp` are its original now; the patch stays."""
        covered = [i for i in range(len(bp.original)) if addr <= bp.linear + i < addr + len(chunk)]
        if covered:
            original = bytearray(bp.original)
            for i in covered:
                original[i] = chunk[bp.linear + i - addr]
            bp.original = bytes(original)
            self.ram.write(bp.phys, self.patch)

    def _drop_pending_io(self, loop: "VcpuLoop", trap_rip: int) -> None:
        """KVM completes a port read at the next KVM_RUN (AL, RIP past the instruction) unless RIP
        moved meanwhile: move it, enter with immediate_exit (the completion is dropped, nothing
        runs), and put back the RIP the debugger left (gdb may have set one)."""
        from harness.kvm import ffi as k
        from harness.kvm.system import ioctl
        vcpu = loop.vcpu
        rip = vcpu.get_regs()["rip"]
        vcpu.set_regs({"rip": trap_rip + len(self.patch)})
        vcpu.run.immediate_exit = 1
        try:
            ioctl(vcpu.fd, k.KVM_RUN, 0, what="KVM_RUN")
        except OSError:
            pass            # EINTR: the entry was cut short, as asked
        vcpu.run.immediate_exit = 0
        vcpu.set_regs({"rip": rip})


def _pages(addr: int, length: int) -> list[tuple[int, int]]:
    """(address, size) pieces of [addr, addr+length) that do not cross a 4 KiB page."""
    out = []
    while length > 0:
        size = min(length, PAGE - (addr & (PAGE - 1)))
        out.append((addr, size))
        addr, length = addr + size, length - size
    return out
