"""The vCPU run loop: KVM_RUN, then answer the exit, until the VM stops.

Hot path: port I/O. It reads the exit with one struct.unpack_from on the kvm_run page (no
cffi attribute walks), dispatches to the IoBus and loops. Everything else (MMIO, MSRs,
failures) is colder and written for clarity. Every way a run can end becomes a StopInfo;
nothing in here may hang or raise to the caller for a guest-caused reason.
"""
from __future__ import annotations

import errno
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from harness.arch.x86_64.regs import STAC, with_ac
from harness.kvm import ffi as k
from harness.kvm import insn
from harness.kvm.debugregs import TRAP_PORT
from harness.kvm.ffi import EXIT_NAMES, libc, ffi
from harness.kvm.flight import FlightRecorder
from harness.kvm.msr import MsrPolicy
from harness.kvm.rescue import FAST_PATH, RESCUES, Rescuer
from harness.kvm.vcpu import Vcpu
from harness.kvm.vm import Vm
from harness.model import events as ev
from harness.model import gap as gaps
from harness.model.gap import GapRecord
from harness.model.gapsink import GapSink

_HEAD = struct.Struct("<I")             # exit_reason at offset 8
_IO = struct.Struct("<BBHIQ")           # direction, size, port, count, data_offset at offset 32
_RIP_OFFSET = 304 + 16 * 8              # kvm_run.s.regs.regs.rip (sync regs)
_U64 = struct.Struct("<Q")
_RING = struct.Struct("<II")             # kvm_coalesced_mmio_ring.first, .last
_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
MAX_REP_COUNT = 4096                    # a REP INS/OUTS exit never carries more than one page of data


# The signal a debugger sees for a failure held for it (gdb numbering: SIGSEGV, SIGILL, SIGABRT).
_FAILURE_SIGNALS = {"triple-fault": 11, "host-emulation-failure": 4, "fail-entry": 6, "unknown-exit": 6}


class Bus(Protocol):
    def read(self, addr: int, size: int) -> int | None: ...
    def write(self, addr: int, size: int, value: int) -> bool: ...


# How a run ended.
STOP_REQUESTED = "stopped"            # stop() from outside
STOP_HALT = "halt"                    # HLT with no in-kernel irqchip to wake it
STOP_SHUTDOWN = "shutdown"            # guest powered off (system event)
STOP_RESET = "reset"                  # guest asked for a reset
STOP_TRIPLE_FAULT = "triple-fault"
STOP_EMULATION_FAILURE = "host-emulation-failure"
STOP_FAIL_ENTRY = "fail-entry"
STOP_UNKNOWN_EXIT = "unknown-exit"
STOP_ERROR = "error"                  # KVM_RUN itself failed


@dataclass
class StopInfo:
    reason: str
    vcpu: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """What a run loop needs beside its vCPU; shared by all vCPUs of one VM."""
    io_bus: Bus
    mmio_bus: Bus
    msr: MsrPolicy
    gaps: GapSink
    recorder: FlightRecorder
    emit: Callable[[ev.VmEvent], None] = lambda event: None
    rescue: bool = True                  # emulate what the host emulator failed on, where we can
    cpuid_entries: list[dict[str, int]] = field(default_factory=list)  # XSAVE layout for rescues
    debugger: Any = None                 # harness.kvm.debugger.Debugger when a gdb stub is attached


class VcpuLoop:
    def __init__(self, vm: Vm, vcpu: Vcpu, cfg: RunConfig) -> None:
        self.vm, self.vcpu, self.cfg = vm, vcpu, cfg
        self.counts = [0] * 64
        self.stop_requested = False
        self.terminating = False             # a real stop: never turned into a debugger pause
        self.pause_requested = False
        self.stopped_by: StopInfo | None = None
        self._rep_ports: set[tuple[int, int]] = set()
        # RIPs of port-I/O instructions already classified. KVM may deliver REP OUTS one element
        # per exit (count == 1, as kvm_pvm does), so the instruction itself tells a string op apart.
        self._io_rips: set[int] = set()
        self.rescuer = Rescuer(vcpu, vm.ram, cfg.cpuid_entries, cfg.msr) if cfg.rescue else None

    # -- control ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Make KVM_RUN return soon: immediate_exit for the next entry, a signal for the current one."""
        self.terminating = True
        self._kick()

    def request_pause(self) -> None:
        """Leave KVM_RUN and park in the debugger (harness.kvm.debugger)."""
        self.pause_requested = True
        self._kick()

    def clear_pause(self) -> None:
        if not self.terminating:
            self.pause_requested = self.stop_requested = False

    def _kick(self) -> None:
        self.stop_requested = True
        run = self.vcpu.run
        if run is not None:
            run.immediate_exit = 1
        ident = self.vcpu.thread_ident
        if ident is not None:
            import signal
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass

    def exit_counts(self) -> dict[str, int]:
        return {EXIT_NAMES.get(i, f"exit-{i}"): n for i, n in enumerate(self.counts) if n}

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> StopInfo:
        self.vcpu.thread_ident = threading.get_ident()
        try:
            if self.cfg.debugger is not None:
                self.cfg.debugger.at_start(self)
            info = self._loop()
        except Exception as exc:  # a bug here must still end as a structured stop, not a hang
            info = StopInfo(STOP_ERROR, self.vcpu.index, {"message": f"{type(exc).__name__}: {exc}"})
        self.stopped_by = info
        return info

    def _loop(self) -> StopInfo:
        vm, vcpu, cfg = self.vm, self.vcpu, self.cfg
        fd = vcpu.fd
        buf = vcpu.run_buffer
        ioctl = libc.ioctl
        kvm_run = ffi.cast("unsigned long", k.KVM_RUN)
        zero = ffi.cast("unsigned long", 0)
        head, io_unpack, u64 = _HEAD.unpack_from, _IO.unpack_from, _U64.unpack_from
        counts = self.counts
        record = cfg.recorder.ring.append
        monotonic = time.monotonic
        io_read, io_write = cfg.io_bus.read, cfg.io_bus.write
        index = vcpu.index
        sync = vcpu.sync_regs
        drain = vm.drain_ring
        has_ring = bool(vm.coalesced)
        ring_words = vm.ring_view if has_ring else None   # first, last of the coalesced ring as one read
        ring_unpack = _RING.unpack_from
        mmio_write = cfg.mmio_bus.write
        io_rips = self._io_rips
        exit_io = k.KVM_EXIT_IO                           # a local: the loop compares it every exit
        while True:
            if self.stop_requested:
                if self.pause_requested and not self.terminating and cfg.debugger is not None:
                    cfg.debugger.paused(self)
                    continue
                return StopInfo(STOP_REQUESTED, index)
            if ioctl(fd, kvm_run, zero) < 0:
                err = ffi.errno
                if err in (errno.EINTR, errno.EAGAIN):
                    buf[1] = 0  # immediate_exit back to 0 so a later run is not cut short
                    if has_ring:
                        drain(io_write, mmio_write)
                    continue
                return StopInfo(STOP_ERROR, index, {"message": f"KVM_RUN failed: errno {err}"})
            reason = head(buf, 8)[0]
            counts[reason] += 1
            # Coalesced UART writes happened before this exit: replay them first, in order.
            if has_ring:
                first, last = ring_unpack(ring_words, 0)
                if first != last:
                    drain(io_write, mmio_write)
            if reason == exit_io:
                direction, size, port, count, off = io_unpack(buf, 32)
                if port == TRAP_PORT and cfg.debugger is not None and cfg.debugger.io_trap(self):
                    continue   # a debugger's breakpoint where INT3 never exits (harness.kvm.debugregs)
                rip = u64(buf, _RIP_OFFSET)[0] if sync else 0
                record((exit_io, port, rip, monotonic(), index))
                if rip not in io_rips:  # first exit from this instruction: is it REP INS/OUTS?
                    self._classify_io_instruction(rip, direction, size, port, count)
                if count == 1:
                    if direction:
                        value = buf[off] if size == 1 else int.from_bytes(buf[off:off + size], "little")
                        if not io_write(port, size, value):
                            self._unclaimed_port(port, size, "write", value)
                    else:
                        value = io_read(port, size)
                        if value is None:
                            value = _ONES.get(size, 0xFF)
                            self._unclaimed_port(port, size, "read", value)
                        if size == 1:
                            buf[off] = value & 0xFF
                        else:
                            buf[off:off + size] = (value & _ONES.get(size, 0xFF)).to_bytes(size, "little")
                else:
                    self._string_io(direction, size, port, count, off)
                continue
            stop = self._cold_exit(reason)
            if stop is not None:
                return stop

    # -- port I/O beyond the hot path ---------------------------------------------------------
    def _unclaimed_port(self, port: int, size: int, access: str, value: int) -> None:
        self.cfg.gaps.record(GapRecord(kind=gaps.IO_PORT, key=f"{port:#x}", first_rip=self.vcpu.current_rip(),
                                       values=[value], access=access, vcpu=self.vcpu.index,
                                       detail={"size": size}))

    def _classify_io_instruction(self, rip: int, direction: int, size: int, port: int, count: int) -> None:
        self._io_rips.add(rip)
        if count > 1 or not self.vcpu.sync_regs:
            return  # _string_io records it / without synced registers the RIP is not known
        try:
            code, _ = insn.fetch(self.vcpu, self.vm.ram, rip, self.vcpu.get_sregs())
        except Exception:  # a failed fetch must never stop the guest: the instruction just stays unclassified
            return
        if insn.is_rep_string_io(code):
            self._record_rep_string_io(direction, size, port, count, rip)

    def _record_rep_string_io(self, direction: int, size: int, port: int, count: int, rip: int) -> None:
        if (port, direction) in self._rep_ports:  # once per port and direction
            return
        self._rep_ports.add((port, direction))
        self.cfg.gaps.record(GapRecord(kind=gaps.REP_STRING_IO, key=f"{port:#x}", first_rip=rip,
                                       access="write" if direction else "read", vcpu=self.vcpu.index,
                                       detail={"size": size, "count": count}))

    def _string_io(self, direction: int, size: int, port: int, count: int, off: int) -> None:
        buf = self.vcpu.run_buffer
        if size not in _ONES or count > MAX_REP_COUNT or off + count * size > len(buf):
            return  # not a shape KVM produces; never index past the page for it
        self._record_rep_string_io(direction, size, port, count, self.vcpu.current_rip())
        io_read, io_write = self.cfg.io_bus.read, self.cfg.io_bus.write
        for i in range(count):
            at = off + i * size
            if direction:
                value = int.from_bytes(buf[at:at + size], "little")
                if not io_write(port, size, value):
                    self._unclaimed_port(port, size, "write", value)
            else:
                value = io_read(port, size)
                if value is None:
                    value = _ONES[size]
                    self._unclaimed_port(port, size, "read", value)
                buf[at:at + size] = (value & _ONES[size]).to_bytes(size, "little")

    # -- everything else -------------------------------------------------------------------------
    def _cold_exit(self, reason: int) -> StopInfo | None:
        run, vcpu = self.vcpu.run, self.vcpu
        rip = vcpu.current_rip()
        t = time.monotonic()
        if reason == k.KVM_EXIT_MMIO:
            addr = int(run.mmio.phys_addr)
            self.cfg.recorder.record(reason, addr, rip, t, vcpu.index)
            self._mmio(addr, int(run.mmio.len), bool(run.mmio.is_write), rip)
            return None
        if reason in (k.KVM_EXIT_X86_RDMSR, k.KVM_EXIT_X86_WRMSR):
            self.cfg.recorder.record(reason, int(run.msr.index), rip, t, vcpu.index)
            self._msr(reason == k.KVM_EXIT_X86_WRMSR, rip)
            return None
        self.cfg.recorder.record(reason, 0, rip, t, vcpu.index)
        if reason == k.KVM_EXIT_INTR:
            return None
        if reason == k.KVM_EXIT_DEBUG and self.cfg.debugger is not None:
            self.cfg.debugger.debug_exit(self)
            return None
        if reason == k.KVM_EXIT_HLT:
            return StopInfo(STOP_HALT, vcpu.index, {"rip": f"{rip:#x}"})
        if reason == k.KVM_EXIT_SYSTEM_EVENT:
            return self._system_event(rip)
        if reason == k.KVM_EXIT_INTERNAL_ERROR and self.cfg.debugger is not None \
                and self.cfg.debugger.owns_breakpoint(self, rip):
            return None      # kvm_pvm: our INT3 ends in an emulation failure, not KVM_EXIT_DEBUG
        if reason == k.KVM_EXIT_SHUTDOWN:
            stop = self._triple_fault(rip)
        elif reason == k.KVM_EXIT_INTERNAL_ERROR:
            stop = self._internal_error(rip)
        elif reason == k.KVM_EXIT_FAIL_ENTRY:
            stop = self._fail_entry(rip)
        else:
            stop = self._unknown_exit(reason, rip)
        if stop is not None and self.cfg.debugger is not None:
            self.cfg.debugger.failure(self, stop.reason, _FAILURE_SIGNALS.get(stop.reason, 6))
        return stop

    def _mmio(self, addr: int, length: int, is_write: bool, rip: int) -> None:
        run, bus = self.vcpu.run, self.cfg.mmio_bus
        length = min(max(length, 1), 8)
        if is_write:
            value = int.from_bytes(bytes(run.mmio.data[0:length]), "little")
            if not bus.write(addr, length, value):
                self._mmio_gap(addr, length, "write", value, rip)
            return
        value = bus.read(addr, length)
        if value is None:
            value = (1 << (8 * length)) - 1
            self._mmio_gap(addr, length, "read", value, rip)
        data = (value & ((1 << (8 * length)) - 1)).to_bytes(length, "little")
        for i, b in enumerate(data):
            run.mmio.data[i] = b

    def _mmio_gap(self, addr: int, size: int, access: str, value: int, rip: int) -> None:
        self.cfg.gaps.record(GapRecord(kind=gaps.MMIO, key=f"{addr:#x}", first_rip=rip, values=[value],
                                       access=access, vcpu=self.vcpu.index, detail={"size": size}))

    def _msr(self, write: bool, rip: int) -> None:
        run, policy = self.vcpu.run, self.cfg.msr
        index, reason = int(run.msr.index), int(run.msr.reason)
        if write:
            value = int(run.msr.data)
            ok = policy.write(self.vcpu, index, value)
        else:
            answer = policy.read(self.vcpu, index)
            ok = answer is not None
            value = answer if answer is not None else 0
            run.msr.data = value & 0xFFFF_FFFF_FFFF_FFFF
        run.msr.error = 0 if ok else 1
        self.cfg.gaps.record(policy.gap(index, write, value, ok, rip, self.vcpu.index, reason))

    # -- terminal exits ----------------------------------------------------------------------------
    def _registers(self) -> dict[str, Any]:
        try:
            regs = {name: f"{v:#x}" for name, v in self.vcpu.get_regs().items()}
            sregs = self.vcpu.sregs_dict()
        except OSError as exc:
            return {"error": str(exc)}
        regs.update({name: (f"{v:#x}" if isinstance(v, int) else v) for name, v in sregs.items()})
        return regs

    def state(self) -> dict[str, Any]:
        """Registers and the decoded instruction at RIP, for a result (call only when out of KVM_RUN)."""
        out: dict[str, Any] = {"vcpu": self.vcpu.index, "registers": self._registers()}
        try:
            regs, sregs = self.vcpu.get_regs(), self.vcpu.get_sregs()
            code, source = insn.fetch(self.vcpu, self.vm.ram, regs["rip"], sregs)
            decoded = insn.decode(code, insn.cpu_mode_bits(sregs), regs["rip"]) if code else None
            out["mp_state"] = self.vcpu.get_mp_state()
        except OSError as exc:
            out["error"] = str(exc)
            return out
        out["insn"] = {"text": decoded["text"], "bytes": decoded["bytes"], "bits": decoded["bits"],
                       "source": source} if decoded else {"text": "", "bytes": "", "source": source}
        return out

    def _triple_fault(self, rip: int) -> StopInfo:
        data = {"rip": f"{rip:#x}", "vcpu": self.vcpu.index, "registers": self._registers(),
                "flight_recorder": self.cfg.recorder.dump()}
        self.cfg.emit(ev.VmEvent(ev.TRIPLE_FAULT, time.monotonic(), data))
        self.cfg.gaps.record(GapRecord(kind=gaps.TRIPLE_FAULT, key=f"{rip:#x}", first_rip=rip,
                                       fate=gaps.FATE_STOPPED, vcpu=self.vcpu.index))
        return StopInfo(STOP_TRIPLE_FAULT, self.vcpu.index, {"rip": f"{rip:#x}"})

    def _failed_instruction(self, rip: int) -> tuple[bytes, dict[str, Any], str]:
        run = self.vcpu.run
        sregs = self.vcpu.get_sregs()
        bits = insn.cpu_mode_bits(sregs)
        code, source = b"", ""
        ef = run.emulation_failure
        if (int(run.internal.suberror) == k.KVM_INTERNAL_ERROR_EMULATION and int(ef.ndata) >= 3
                and int(ef.flags) & k.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES and 0 < ef.insn_size <= 15):
            code, source = bytes(ef.insn_bytes[0:ef.insn_size]), "kvm emulation_failure payload"
        if not code:
            code, source = insn.fetch(self.vcpu, self.vm.ram, rip, sregs)
        return code, insn.decode(code, bits, rip), source

    def _internal_error(self, rip: int) -> StopInfo | None:
        run = self.vcpu.run
        suberror = int(run.internal.suberror)
        if self.cfg.rescue and suberror == k.KVM_INTERNAL_ERROR_EMULATION and self._fast_rescue(rip):
            return None
        ndata = min(int(run.internal.ndata), 16)
        data_words = [f"{int(run.internal.data[i]):#x}" for i in range(ndata)]
        code, decoded, source = self._failed_instruction(rip)
        if self.cfg.rescue and suberror == k.KVM_INTERNAL_ERROR_EMULATION:
            rescued = self._rescue(code, decoded, rip)
            if rescued:
                return None
        detail = {"suberror": suberror, "suberror_name": k.INTERNAL_SUBERRORS.get(suberror, "other"),
                  "insn": decoded["text"], "bytes": code.hex(), "bytes_source": source, "bits": decoded["bits"],
                  "data": data_words, "rescue_declined": self.rescuer.declined if self.rescuer else "",
                  "rip": f"{rip:#x}", "vcpu": self.vcpu.index, "registers": self._registers(),
                  "flight_recorder": self.cfg.recorder.dump()}
        self.cfg.emit(ev.VmEvent(ev.HOST_EMULATION_FAILURE, time.monotonic(), detail))
        self.cfg.gaps.record(GapRecord(kind=gaps.HOST_EMULATION_FAILURE, key=decoded["mnemonic"], first_rip=rip,
                                       fate=gaps.FATE_STOPPED, vcpu=self.vcpu.index,
                                       detail={k_: detail[k_] for k_ in ("suberror", "suberror_name", "insn",
                                                                          "bytes", "bits", "registers")}))
        return StopInfo(STOP_EMULATION_FAILURE, self.vcpu.index,
                        {"insn": decoded["text"], "rip": f"{rip:#x}", "suberror": suberror})

    def _fast_rescue(self, rip: int) -> bool:
        """clac/stac without an ioctl: edit the synced registers, mark them dirty, KVM loads them on entry.
        (Linux executes them on every user access once SMAP alternatives are patched in.)"""
        run = self.vcpu.run
        ef = run.emulation_failure
        if not (self.vcpu.sync_regs and int(ef.ndata) >= 3 and int(ef.flags) & 1 and ef.insn_size >= 3):
            return False
        op = bytes(ef.insn_bytes[0:3])
        name = FAST_PATH.get(op)
        if name is None:
            return False
        regs = run.s.regs.regs
        regs.rflags = with_ac(regs.rflags, op == STAC)
        regs.rip = rip + len(op)
        run.kvm_dirty_regs |= k.KVM_SYNC_X86_REGS
        self.cfg.gaps.record(GapRecord(kind=gaps.RESCUED_INSTRUCTION, key=name, first_rip=rip, vcpu=self.vcpu.index,
                                       detail={"bytes": op.hex(), "insn": name, "how": RESCUES[name].how}))
        return True

    def _rescue(self, code: bytes, decoded: dict[str, Any], rip: int) -> bool:
        """Do in user space what the host emulator could not; True when the guest may go on."""
        if self.rescuer is None:
            return False
        self.rescuer.declined = ""
        done = self.rescuer.rescue(code, rip, decoded["bits"])
        if done is None:
            return False
        self.cfg.gaps.record(GapRecord(kind=gaps.RESCUED_INSTRUCTION, key=done, first_rip=rip,
                                       vcpu=self.vcpu.index, detail={"bytes": decoded["bytes"],
                                                                     "insn": decoded["text"],
                                                                     "how": RESCUES[done].how}))
        return True

    def _fail_entry(self, rip: int) -> StopInfo:
        run = self.vcpu.run
        detail = {"hardware_entry_failure_reason": f"{int(run.fail_entry.hardware_entry_failure_reason):#x}",
                  "cpu": int(run.fail_entry.cpu), "rip": f"{rip:#x}", "registers": self._registers(),
                  "flight_recorder": self.cfg.recorder.dump()}
        self.cfg.gaps.record(GapRecord(kind=gaps.FAIL_ENTRY, key=detail["hardware_entry_failure_reason"],
                                       first_rip=rip, fate=gaps.FATE_STOPPED, vcpu=self.vcpu.index,
                                       detail={"registers": detail["registers"]}))
        self.cfg.emit(ev.VmEvent(ev.BACKEND_ERROR, time.monotonic(), {"message": "KVM_EXIT_FAIL_ENTRY", **detail}))
        return StopInfo(STOP_FAIL_ENTRY, self.vcpu.index, detail)

    def _system_event(self, rip: int) -> StopInfo:
        kind = int(self.vcpu.run.system_event.type)
        if kind == k.KVM_SYSTEM_EVENT_RESET:
            self.cfg.emit(ev.VmEvent(ev.RESET, time.monotonic(), {"source": "kvm-system-event", "rip": f"{rip:#x}"}))
            return StopInfo(STOP_RESET, self.vcpu.index, {"rip": f"{rip:#x}"})
        self.cfg.emit(ev.VmEvent(ev.SHUTDOWN, time.monotonic(), {"source": "kvm-system-event", "type": kind}))
        return StopInfo(STOP_SHUTDOWN, self.vcpu.index, {"type": kind})

    def _unknown_exit(self, reason: int, rip: int) -> StopInfo:
        name = EXIT_NAMES.get(reason, f"exit-{reason}")
        self.cfg.gaps.record(GapRecord(kind=gaps.UNKNOWN_EXIT, key=name, first_rip=rip, fate=gaps.FATE_STOPPED,
                                       vcpu=self.vcpu.index, detail={"exit_reason": reason}))
        return StopInfo(STOP_UNKNOWN_EXIT, self.vcpu.index, {"exit_reason": reason, "name": name,
                                                             "rip": f"{rip:#x}"})


KICK_SIGNAL = __import__("signal").SIGUSR1


def install_kick_handler() -> bool:
    """SIGUSR1 must have a handler (not SIG_DFL, which kills) for request_stop to interrupt KVM_RUN.
    Only the main thread may install one; returns whether a handler is in place."""
    import signal
    current = signal.getsignal(KICK_SIGNAL)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, lambda signum, frame: None)
    return True
