"""The built-in VMM child's side of debugging: a gdb stub on its Machine, events for the runner.

Events (events.jsonl): DEBUG_LISTEN {host, port} once the stub listens (port 0 asked: the port the
kernel gave), DEBUG_STOP {vcpu, why, signal} whenever the VM stops for the debugger and
DEBUG_RESUME when it runs again: the runner's watcher stops its clocks in between, so time spent
in gdb is not a hang. SIGUSR2 from the runner holds the guest for the debugger (a failure the
console showed: panic pattern, hang); detaching or killing in gdb then ends the VM.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from typing import Any

from harness.backends.debugopts import DebugOptions, listen_error
from harness.model import events as ev

HOLD_SIGNAL = signal.SIGUSR2


@functools.lru_cache(maxsize=1)
def int3_breakpoints_work() -> bool:
    """Does an INT3 under KVM_GUESTDBG_USE_SW_BP in 64-bit ring 0 (as in a kernel) leave KVM_RUN
    as a #BP exit, or as kvm_pvm's emulation failure (which the stub takes as its breakpoint),
    rather than reach the guest (whose missing IDT then makes it a triple fault)? Measured on a
    scratch VM (harness.kvm.debugregs.probe; the long-mode entry is the raw loader's)."""
    from harness.boot.raw import load_raw
    from harness.kvm import ffi as k
    from harness.kvm.debugregs import probe
    code = b"\x90\xcc\xf4"                # nop; int3; hlt
    reason = probe(code, enter=lambda vcpu, ram: vcpu.set_entry(load_raw(ram, code, mode="long64")[0]),
                   sw_breakpoints=True)
    return reason in (k.KVM_EXIT_DEBUG, k.KVM_EXIT_INTERNAL_ERROR)


class ChildDebugger:
    def __init__(self, child: Any, options: DebugOptions) -> None:
        from harness.kvm.debugger import SIGABRT, Debugger
        from harness.kvm.gdbstub import GdbServer, Hooks
        self.child = child
        self.held = False
        machine = child.machine
        # HARNESS_GDB_BREAKPOINTS=trap: software breakpoints as the lab must plant them (a port-read
        # trap, harness.kvm.debugregs.TRAP_INSN) on any host: for tests, and hosts whose INT3 misbehaves.
        int3 = os.environ.get("HARNESS_GDB_BREAKPOINTS") != "trap" and int3_breakpoints_work()
        self.debugger = Debugger(machine.loops, child.ram, wait_at_start=options.wait, int3_breakpoints=int3,
                                 hold_failures=options.on_failure, on_stop=self._stopped, on_resume=self._resumed)
        machine.run_cfg.debugger = self.debugger
        host, port = options.address()
        try:
            self.server = GdbServer(self.debugger, host, port, Hooks(kill=self._end, detach=self._detached))
        except OSError as exc:
            raise listen_error(host, port, exc) from None
        self._sigabrt = SIGABRT

    def start(self) -> None:
        host, port = self.server.address
        self.server.start()
        print(f"gdb stub listening on {host}:{port}", file=sys.stderr, flush=True)
        self.child.emit(ev.VmEvent(ev.DEBUG_LISTEN, time.monotonic(),
                                   {"host": host, "port": port, "data_breakpoints": self.debugger.data_breakpoints,
                                    "exec_breakpoints": self.debugger.exec_breakpoints}))
        signal.signal(HOLD_SIGNAL, lambda signum, frame: self.hold())

    def hold(self) -> None:
        """The runner saw a failure on the console: stop the guest and keep it for a debugger."""
        self.held = True
        threading.Thread(target=self.debugger.interrupt, kwargs={"signal": self._sigabrt, "why": "failure: runner"},
                         daemon=True).start()

    def close(self) -> None:
        self.debugger.end()
        self.server.shutdown()

    def _stopped(self, event: Any) -> None:
        self.child.emit(ev.VmEvent(ev.DEBUG_STOP, time.monotonic(),
                                   {"vcpu": event.vcpu, "why": event.why, "signal": event.signal}))

    def _resumed(self) -> None:
        self.child.emit(ev.VmEvent(ev.DEBUG_RESUME, time.monotonic(), {}))

    def _detached(self) -> None:
        if self.held or (self.debugger.stop is not None and self.debugger.stop.final):
            self._end()

    def _end(self) -> None:
        self.debugger.end()
        self.child.terminated.set()
