"""A whole arm64 built-in VM: Aarch64Vm + vCPU threads, driven like the x86 Machine.

The builtin_vm child drives it through the same interface as harness.kvm.machine.Machine
(start / wait / stop / exit_counts / summary / close, set_irq for devices), and most of that
interface is Machine's own code: only construction, start and the summary differ.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from harness.errors import ConfigError
from harness.kvm.arch.aarch64.runloop import BLIND_SPOTS, Aarch64VcpuLoop, kick_until_powered_on
from harness.kvm.arch.aarch64.vm import Aarch64Vm
from harness.kvm.flight import FlightRecorder
from harness.kvm.machine import Machine, serial_coalescing
from harness.kvm.runloop import RunConfig, StopInfo, install_kick_handler
from harness.kvm.system import KVM_PATH
from harness.memory import GuestRam
from harness.model import events as ev
from harness.model.gap import GapRecord
from harness.model.gapsink import GapSink

@dataclass
class Aarch64MachineConfig:
    vcpus: int = 1
    gap_policy: str = "emulate"     # recorded for reports; arm64 has no MSR policy to apply
    cpu_profile: str = "default"
    kvm_path: str = KVM_PATH
    # PL011 DR writes through KVM's coalesced MMIO ring: one exit per console byte (the FR poll)
    # instead of two, but a DR write's effect on the TX interrupt shows only at the next exit or
    # drain, so it is an option (coalesce_serial, as on x86), off by default. "polled" batches
    # only while the guest masks the TX interrupt (IMSC.TXIM clear: Linux's console writes), so
    # interrupt-driven transmission (a tty) sees every DR write.
    coalesce_serial: bool | str = False
    serial_data_register: int | None = None      # guest-physical address of the UART's DR


class Aarch64KvmMachine(Machine):
    def __init__(self, ram: GuestRam, mmio_bus: Any, config: Aarch64MachineConfig | None = None,
                 emit: Callable[[ev.VmEvent], None] | None = None) -> None:
        self.config = cfg = config or Aarch64MachineConfig()
        if cfg.vcpus < 1:
            raise ConfigError(f"{cfg.vcpus} vCPUs", "use at least one vCPU")
        self.emit = emit or (lambda event: None)
        self.ram, self.io_bus, self.mmio_bus = ram, None, mmio_bus
        self.vm = Aarch64Vm(ram, cfg.vcpus, kvm_path=cfg.kvm_path)
        self.gaps = GapSink(self._on_new_gap)
        self.recorder = FlightRecorder()
        self.masked: list[str] = []
        self.msr_status: dict[str, Any] = {}
        self._init_serial_batching()
        self.run_cfg = RunConfig(io_bus=None, mmio_bus=mmio_bus, msr=None, gaps=self.gaps,  # type: ignore[arg-type]
                                 recorder=self.recorder, emit=self.emit, rescue=False)
        self.loops = [Aarch64VcpuLoop(self.vm, vcpu, self.run_cfg, self._on_power_on) for vcpu in self.vm.vcpus]
        self.powered_on: dict[int, float] = {}
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        self._stop_info: StopInfo | None = None
        self._lock = threading.Lock()
        self.started_at: float | None = None

    def _init_serial_batching(self) -> None:
        cfg = self.config
        self.serial_mode = serial_coalescing(cfg.coalesce_serial)
        if self.serial_mode != "off" and (cfg.serial_data_register is None
                                          or not self.vm.coalesce_mmio(cfg.serial_data_register, 4)):
            self.serial_mode = "off"   # no UART to batch, or this KVM has no coalesced MMIO
        self.coalesced_serial = self.serial_mode != "off"
        self._serial_batched = self.coalesced_serial   # polled starts batching: IMSC resets to 0
        self.serial_batch_toggles = 0

    def _on_power_on(self, index: int) -> None:
        t = time.monotonic()
        self.powered_on[index] = t
        self.emit(ev.VmEvent(ev.CPU_ON, t, {"vcpu": index, "source": "psci-cpu-on"}))

    def _on_new_gap(self, gap: GapRecord) -> None:
        self.emit(ev.VmEvent(ev.GAP, time.monotonic(), gap.to_json()))

    @property
    def set_irq(self) -> Callable[[int, int], None]:
        return self.vm.set_irq

    def start(self) -> None:
        install_kick_handler()
        self.started_at = time.monotonic()
        for loop in self.loops:
            t = threading.Thread(target=self._vcpu_thread, args=(loop,), name=f"vcpu{loop.vcpu.index}", daemon=True)
            self._threads.append(t)
            t.start()
        if len(self.loops) > 1:
            threading.Thread(target=kick_until_powered_on, args=(self.loops[1:], self._done),
                             name="cpu-on-watch", daemon=True).start()
        if self.coalesced_serial:      # a guest that writes and then idles (WFI) exits no more
            threading.Thread(target=self._drainer, name="serial-drain", daemon=True).start()

    def drain(self) -> None:
        self.vm.drain_ring(self.mmio_bus.write)

    def batch_serial(self, on: bool) -> None:
        """"polled" mode: the guest masked the PL011's TX interrupt (batch DR writes) or unmasked
        it (every write exits again). Called from the vCPU thread handling the IMSC write; the
        ring was drained before that exit was handled, so no batched byte comes after it."""
        if self.serial_mode != "polled" or on == self._serial_batched:
            return
        dr = self.config.serial_data_register
        assert dr is not None          # polled mode is on only with a UART to batch
        if on:
            self.vm.coalesce_mmio(dr, 4)
        else:
            self.vm.uncoalesce_mmio(dr, 4)
        self._serial_batched = on
        self.serial_batch_toggles += 1

    def summary(self) -> dict[str, Any]:
        info = self._stop_info
        return {"stop": {"reason": info.reason, "vcpu": info.vcpu, "detail": info.detail} if info else None,
                "exit_counts": self.exit_counts(), "flight_recorder": self.recorder.dump(),
                "gaps": [g.to_json() for g in self.gaps.records()], "masked_cpuid": [],
                "cpu_profile": self.config.cpu_profile, "gap_policy": self.config.gap_policy,
                "msr_routing": {}, "coalesced_serial": self.coalesced_serial, "serial_mode": self.serial_mode,
                "serial_batch_toggles": self.serial_batch_toggles, "user_time_s": self.user_time_s(),
                "arch": "aarch64", "ipa_bits": self.vm.ipa_bits or 40, "blind_spots": list(BLIND_SPOTS),
                "cpu_on": {str(i): t - (self.started_at or t) for i, t in self.powered_on.items()}}
