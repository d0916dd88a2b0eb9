"""A whole built-in VM: KVM VM + CPUID + MSR policy + vCPU threads + coalesced serial replay.

`Machine` is what the builtin_vm child (and the tests) drive: give it guest RAM, the I/O
and MMIO buses, an entry state; `start()`, then `wait()` for the first vCPU that stops the
VM (halt, shutdown, triple fault, emulation failure, ...) or `stop()` it from outside.
"""
from __future__ import annotations

import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from harness import layout
from harness.arch.x86_64 import cpuid as profiles
from harness.errors import ConfigError
from harness.kvm import cpuid, msr
from harness.kvm.flight import FlightRecorder
from harness.kvm.runloop import RunConfig, StopInfo, VcpuLoop, install_kick_handler
from harness.kvm.system import KVM_PATH
from harness.kvm.vm import Vm
from harness.memory import GuestRam
from harness.model import events as ev
from harness.model import gap as gaps
from harness.model.builtin_options import SERIAL_MODES
from harness.model.gap import GapRecord
from harness.model.gapsink import GapSink

DRAIN_PERIOD_S = 0.02      # coalesced serial output is replayed at least this often

# Host quirks a Machine works around (MachineConfig.host_quirks; found by harness.hosts.quirks).
# The guest's XSETBV never exits to KVM (measured in the lab: QEMU 7.2's TCG SVM does not deliver
# the XSETBV intercept to the nested kvm_amd), so KVM keeps XCR0 at its reset value 0x1: it sizes
# CPUID.(0xD,0).EBX for x87 only (Linux: "XSAVE consistency problem: size 2696 != kernel_size 576")
# and loads XCR0=0x1 on every entry. Work-around: preset KVM's XCR0 to every user component the
# guest's CPUID offers, the XCR0 an OS that enables all it is offered (Linux does) then writes.
XSETBV_NOT_SEEN = "xsetbv-not-seen-by-kvm"


def serial_coalescing(value: bool | str) -> str:
    try:
        return SERIAL_MODES[value]
    except (KeyError, TypeError):
        raise ConfigError(f"coalesce_serial {value!r} is not a serial batching mode",
                          "use true, false or polled") from None


@dataclass
class MachineConfig:
    vcpus: int = 1
    cpu_profile: str = "default"
    gap_policy: str = "emulate"
    irqchip: bool = True
    pit: bool = True
    # COM1 THR writes through the coalesced PIO ring: far fewer exits, but the guest's REP OUTS to
    # the UART and its THRE interrupts become invisible/late, so the backend turns it on per guest
    # (option coalesce_serial) rather than by default. Without it output is one exit per byte.
    # "polled": batch only while the guest has the THR-empty interrupt off (a kernel's polled
    # console, e.g. Linux's printk), and let every write exit while it transmits by interrupt,
    # so THRE timing stays exact where a driver waits for it. True = "on", False = "off".
    coalesce_serial: bool | str = True
    rescue: bool = True
    kvm_path: str = KVM_PATH
    gap_overrides: dict[int, str] = field(default_factory=dict)   # MSR index -> policy, beside gap_policy
    host_quirks: tuple[str, ...] = ()   # of the host this VM runs on, worked around here (XSETBV_NOT_SEEN)


class Machine:
    def __init__(self, ram: GuestRam, io_bus: Any, mmio_bus: Any, config: MachineConfig | None = None,
                 emit: Callable[[ev.VmEvent], None] | None = None) -> None:
        self.config = cfg = config or MachineConfig()
        profiles.check_profile(cfg.cpu_profile)
        msr.check_policy(cfg.gap_policy)
        if cfg.vcpus < 1 or (cfg.vcpus > 1 and not cfg.irqchip):
            raise ConfigError(f"{cfg.vcpus} vCPUs without an in-kernel irqchip",
                              "use 1..N vCPUs; more than one needs the irqchip (APs wait for INIT/SIPI)")
        self.emit = emit or (lambda event: None)
        self.ram = ram
        self.io_bus, self.mmio_bus = io_bus, mmio_bus
        self.vm = Vm(ram, kvm_path=cfg.kvm_path, irqchip=cfg.irqchip, pit=cfg.pit)
        max_vcpus = self.vm.caps.get("MAX_VCPUS") or self.vm.caps.get("NR_VCPUS") or 1
        if cfg.vcpus > max_vcpus:
            self.vm.close()
            raise ConfigError(f"{cfg.vcpus} vCPUs asked, this KVM allows {max_vcpus}", f"use at most {max_vcpus}")
        self.gaps = GapSink(self._on_new_gap)
        self.recorder = FlightRecorder()
        self.msr_policy = msr.MsrPolicy(cfg.gap_policy, cfg.gap_overrides)
        self.msr_status = msr.install(self.vm)
        self.serial_mode = serial_coalescing(cfg.coalesce_serial)
        if self.serial_mode != "off" and not self.vm.coalesce(layout.COM1_PORT, 1, pio=True):
            self.serial_mode = "off"   # this KVM has no coalesced PIO
        self.coalesced_serial = self.serial_mode != "off"   # (the aarch64 machine sets its own)
        self.serial_batch_toggles = 0   # "polled": how often the guest switched its TX mode
        self.cpuid_entries, self.masked = self._cpuid_table()
        self.run_cfg = RunConfig(io_bus=io_bus, mmio_bus=mmio_bus, msr=self.msr_policy, gaps=self.gaps,
                                 recorder=self.recorder, emit=self.emit, rescue=cfg.rescue,
                                 cpuid_entries=self.cpuid_entries)
        self.loops: list[VcpuLoop] = []
        self.workarounds: dict[str, str] = {}   # host quirk -> what this VM did about it (summary)
        for i in range(cfg.vcpus):
            vcpu = self.vm.create_vcpu()
            entries, _ = profiles.apply_profile(self.cpuid_entries, cfg.cpu_profile, vcpu_index=i)
            vcpu.set_cpuid(entries)
            self._work_around_host(vcpu, entries)
            self.loops.append(VcpuLoop(self.vm, vcpu, self.run_cfg))
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        self._stop_info: StopInfo | None = None
        self._lock = threading.Lock()
        self.started_at: float | None = None

    # -- setup ------------------------------------------------------------------------------------
    def _cpuid_table(self) -> tuple[list[dict[str, int]], list[str]]:
        base = cpuid.supported(self.vm.kvm_fd)
        _, masked = profiles.apply_profile(base, self.config.cpu_profile)
        return base, masked

    def _work_around_host(self, vcpu: Any, entries: list[dict[str, int]]) -> None:
        if XSETBV_NOT_SEEN not in self.config.host_quirks:
            return
        offered = profiles.offered_xcr0(entries)
        if offered > 0x1:   # no XSAVE in the guest's CPUID: XCR0 stays at its reset value
            vcpu.set_xcr0(offered)
            self.workarounds[XSETBV_NOT_SEEN] = f"XCR0 preset to {offered:#x} (the guest's CPUID offer)"

    def _on_new_gap(self, gap: GapRecord) -> None:
        self.emit(ev.VmEvent(ev.GAP, time.monotonic(), gap.to_json()))

    def set_entry(self, entry: Any) -> None:
        """Boot CPU state from a loader's EntryState; APs stay in wait-for-SIPI."""
        self.loops[0].vcpu.set_entry(entry)

    @property
    def set_irq(self) -> Callable[[int, int], None]:
        return self.vm.set_irq

    # -- run ---------------------------------------------------------------------------------------
    def start(self) -> None:
        install_kick_handler()
        for gap in self.masked:
            self.gaps.record(GapRecord(kind=gaps.MASKED_CPUID, key=gap, policy=self.config.cpu_profile,
                                       detail={"profile": self.config.cpu_profile}))
        self.started_at = time.monotonic()
        for loop in self.loops:
            t = threading.Thread(target=self._vcpu_thread, args=(loop,), name=f"vcpu{loop.vcpu.index}", daemon=True)
            self._threads.append(t)
            t.start()
        if self.coalesced_serial:
            threading.Thread(target=self._drainer, name="serial-drain", daemon=True).start()

    def _vcpu_thread(self, loop: VcpuLoop) -> None:
        info = loop.run()
        if self.run_cfg.debugger is not None:
            self.run_cfg.debugger.end()   # parked vCPUs must not wait for a debugger any more
        with self._lock:
            if self._stop_info is None:
                self._stop_info = info  # the first vCPU to stop names the reason
        # The first vCPU that stops ends the VM: the others are kicked out of KVM_RUN.
        for other in self.loops:
            if other is not loop and other.stopped_by is None:
                other.request_stop()
        if all(lp.stopped_by is not None for lp in self.loops):
            self.drain()
            self._done.set()

    def _drainer(self) -> None:
        while not self._done.wait(DRAIN_PERIOD_S):
            self.drain()

    def drain(self) -> None:
        self.vm.drain_ring(self.io_bus.write, self.mmio_bus.write)

    def batch_serial(self, on: bool) -> None:
        """"polled" mode: the UART's THRE interrupt went off (batch THR writes) or on (every write
        exits again). Called from the vCPU thread handling the IER write; the ring was drained
        before that exit was handled, so no batched byte is replayed after a later write."""
        if self.serial_mode != "polled":
            return
        registered = (layout.COM1_PORT, 1, True) in self.vm.coalesced
        if on and not registered:
            self.vm.coalesce(layout.COM1_PORT, 1, pio=True)
        elif not on and registered:
            self.vm.uncoalesce(layout.COM1_PORT, 1, pio=True)
        else:
            return
        self.serial_batch_toggles += 1

    def wait(self, timeout: float | None = None) -> StopInfo | None:
        """The StopInfo of the vCPU that ended the run, or None if still running after `timeout`."""
        if not self._done.wait(timeout):
            return None
        return self._stop_info

    def stop(self, timeout: float = 5.0) -> StopInfo | None:
        if self.run_cfg.debugger is not None:
            self.run_cfg.debugger.end()
        for loop in self.loops:
            loop.request_stop()
        deadline = time.monotonic() + timeout
        while not self._done.is_set() and time.monotonic() < deadline:
            for loop in self.loops:  # repeat the kick: a signal can land just before KVM_RUN
                if loop.stopped_by is None:
                    loop.request_stop()
            self._done.wait(0.05)
        return self._stop_info

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._done.is_set()

    # -- results ------------------------------------------------------------------------------------
    def exit_counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for loop in self.loops:
            for name, n in loop.exit_counts().items():
                total[name] = total.get(name, 0) + n
        return total

    @staticmethod
    def user_time_s() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_utime

    def vcpu_state(self) -> list[dict[str, Any]]:
        """Every stopped vCPU's registers and instruction at RIP (one still inside KVM_RUN is skipped:
        its state ioctls would wait for it). Nothing when the VM never ran."""
        if not self._threads:
            return []
        return [loop.state() if loop.stopped_by is not None else {"vcpu": loop.vcpu.index, "error": "still running"}
                for loop in self.loops]

    def summary(self) -> dict[str, Any]:
        info = self._stop_info
        return {"stop": {"reason": info.reason, "vcpu": info.vcpu, "detail": info.detail} if info else None,
                "exit_counts": self.exit_counts(), "flight_recorder": self.recorder.dump(),
                "gaps": [g.to_json() for g in self.gaps.records()],
                "masked_cpuid": list(self.masked), "cpu_profile": self.config.cpu_profile,
                "gap_policy": self.config.gap_policy, "msr_routing": dict(self.msr_status),
                "coalesced_serial": self.coalesced_serial, "serial_mode": self.serial_mode,
                "serial_batch_toggles": self.serial_batch_toggles, "user_time_s": self.user_time_s(),
                "vcpus": self.vcpu_state(), "host_workarounds": dict(self.workarounds)}

    def close(self) -> None:
        if self.running:
            self.stop()
        for t in self._threads:
            t.join(1.0)
        if any(t.is_alive() for t in self._threads):
            return  # a vCPU thread still inside KVM_RUN: leave the fds to process exit rather than pull them
        self.vm.close()
