"""The built-in VMM child: `python -m harness.backends.builtin_vm SPEC.json`.

SPEC.json holds a BootRequest (request_to_json). The child builds guest RAM, the x86 devices,
runs the loader and the vCPUs, and talks to its parent the way every backend does:
  stdout  the guest console, unbuffered (os.write(1, ...))
  stdin   bytes for the guest UART's receiver
  request.events_path   VmEvents (VM_START, GAP per new gap, EXIT_COUNTS every 100 ms, failures...)
  request.summary_path  SessionSummary fields as JSON, written when the VM stops or on SIGTERM
A bad kernel or setup problem: one line on stderr, a BACKEND_ERROR event, exit code 2.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness import layout
from harness.backends.vmm_warm import imports_in_child, mark_child_start
from harness.errors import BackendUnavailable, HarnessError
from harness.model import events as ev
from harness.model.files import write_json_atomic
from harness.model.session import BootRequest, SessionSummary

SNAPSHOT_PERIOD_S = 0.1
EXIT_OK, EXIT_VM_ERROR, EXIT_SETUP_ERROR = 0, 1, 2
GAP_OVERRIDES_OPTION = "gap_overrides"   # spec option set by the runner (gap bisection), not a guest-file key


# -- spec ---------------------------------------------------------------------------------------
def request_to_json(request: BootRequest) -> str:
    return json.dumps(request.to_json(), indent=1, default=str)


def request_from_json(text: str) -> BootRequest:
    return BootRequest.from_json(json.loads(text))


# -- the child ----------------------------------------------------------------------------------------
class ChildVm:
    def __init__(self, request: BootRequest, events: ev.EventWriter) -> None:
        self.request = request
        self.events = events
        self.machine: Any = None
        self.devices: Any = None
        self.ram: Any = None
        self.boot_info: dict[str, Any] = {}
        self.host: dict[str, Any] = {}
        self.terminated = threading.Event()
        self.guest_stop_event: str | None = None
        self.debug: Any = None                 # builtin_gdb.ChildDebugger with --gdb / --gdb-on-failure
        self.unbootable: Any = None            # a GapRecord that stops the VM before it starts (firmware-boot)

    # events from any thread (vCPUs, device timers): write, and stop the VM on reset / power-off
    def emit(self, event: ev.VmEvent) -> None:
        self.events.emit(event)
        if event.type in (ev.RESET, ev.SHUTDOWN) and self.guest_stop_event is None:
            self.guest_stop_event = event.type
            self.terminated.set()

    def build(self) -> None:
        if self.request.arch == "aarch64":
            self._build_aarch64()
            return
        from harness.kvm.machine import Machine, MachineConfig
        from harness.kvm.system import host_info
        from harness.memory import GuestRam
        req = self.request
        self.host = host_info()
        self.ram = GuestRam(req.memory_mib * layout.MiB)
        self.devices = build_devices(self)
        opts = req.options or {}
        cfg = MachineConfig(vcpus=req.vcpus, cpu_profile=req.cpu_profile, gap_policy=req.gap_policy,
                            coalesce_serial=opts.get("coalesce_serial", False),
                            rescue=bool(opts.get("rescue", True)),
                            gap_overrides=gap_overrides(opts), host_quirks=tuple(req.host_quirks))
        self.machine = Machine(self.ram, self.devices.io_bus, self.devices.mmio_bus, cfg, emit=self.emit)
        if self.machine.serial_mode == "polled":   # batching follows the guest's TX mode
            self.devices.uart.on_tx_interrupt_enable = lambda enabled: self.machine.batch_serial(not enabled)
        firmware = install_firmware(req, self.ram, self.devices, self.machine)
        entry, self.boot_info = load_guest(req, self.ram, firmware.rsdp_address, self.devices)
        self.boot_info["firmware"] = firmware.info()
        self.machine.set_entry(entry)
        from harness.backends.debugopts import DebugOptions
        debug = DebugOptions.from_options(opts)
        if debug.enabled:
            from harness.backends.builtin_gdb import ChildDebugger
            self.debug = ChildDebugger(self, debug)

    def _build_aarch64(self) -> None:
        """arm64 host: PL011/PL031 on the MMIO bus, the DTB from the same machine description."""
        if self.request.boot == "firmware":
            self.unbootable = firmware_boot_gap(self.request)
            return
        from harness.boot.arm64 import load_aarch64
        from harness.boot.fdt import Aarch64Machine
        from harness.kvm.arch.aarch64.machine import Aarch64KvmMachine, Aarch64MachineConfig
        from harness.kvm.system import host_info
        from harness.memory import GuestRam
        req = self.request
        self.host = host_info()
        memory = req.memory_mib * layout.MiB
        self.ram = GuestRam.aarch64(memory)
        from harness.devices.virtio import VirtioSetup
        virtio = VirtioSetup.from_guest(req.options, req.disk, req.workdir, transports=("mmio",))
        description = Aarch64Machine(memory, vcpus=req.vcpus, cmdline=req.cmdline, virtio_slots=len(virtio.devices))
        self.devices = build_aarch64_device_set(self, description, virtio)
        from harness.devices.pl011 import DR
        cfg = Aarch64MachineConfig(vcpus=req.vcpus, gap_policy=req.gap_policy, cpu_profile=req.cpu_profile,
                                   coalesce_serial=(req.options or {}).get("coalesce_serial", False),
                                   serial_data_register=description.uart.base + DR)
        self.machine = Aarch64KvmMachine(self.ram, self.devices.mmio_bus, cfg, emit=self.emit)
        if self.machine.serial_mode == "polled":   # batching follows the guest's TX interrupt mask
            self.devices.uart.on_tx_interrupt_enable = lambda enabled: self.machine.batch_serial(not enabled)
        if req.kernel is None:
            raise BackendUnavailable(f"cell {req.cell_id}: the built-in backend needs a kernel",
                                     "give the guest a kernel file")
        boot = load_aarch64(req.boot, self.ram, req.kernel, req.initrd, description)
        self.machine.loops[0].vcpu.set_entry(boot.plan.entry)
        self.boot_info = dict(boot.plan.info)

    def run(self) -> int:
        if self.unbootable is not None:
            return self._refuse(self.unbootable)
        m = self.machine
        self.emit(ev.VmEvent(ev.VM_START, time.monotonic(), {
            "host": self.host, "boot": self.boot_info, "cpu_profile": m.config.cpu_profile,
            "masked_cpuid": m.masked, "gap_policy": m.config.gap_policy, "vcpus": m.config.vcpus,
            "msr_routing": m.msr_status, "coalesced_serial": m.coalesced_serial,
            "startup_cpu_s": round(time.process_time(), 6)}))   # the child's CPU until now (bench/vmm_start)
        threading.Thread(target=self._stdin_reader, name="stdin", daemon=True).start()
        if self.debug is not None:
            self.debug.start()
        m.start()
        # Sleep on the termination event (the SIGTERM handler sets it, which wakes this wait at
        # once) rather than on the machine, so the runner's stop costs no snapshot period.
        while not self.terminated.wait(SNAPSHOT_PERIOD_S) and m.wait(0) is None:
            self._snapshot()
        info = m.wait(0) if not self.terminated.is_set() else m.stop()
        self._snapshot()
        reason = info.reason if info else "stopped"
        code = EXIT_VM_ERROR if reason == "error" else EXIT_OK
        if reason == "error":  # the VMM itself failed (KVM_RUN error, a bug): say so beside the console
            self.emit(ev.VmEvent(ev.BACKEND_ERROR, time.monotonic(), {"message": info.detail.get("message", "")}))
        self.emit(ev.VmEvent(ev.VM_EXIT, time.monotonic(), {"reason": self.guest_stop_event or reason,
                                                           "code": code, "detail": info.detail if info else {}}))
        self.write_summary(code)
        return code

    def _refuse(self, gap: Any) -> int:
        """The VM cannot start (gap.fate stopped): VM_START, the gap, VM_EXIT, a summary with it."""
        now = time.monotonic()
        self.emit(ev.VmEvent(ev.VM_START, now, {"host": self.host, "boot": {"method": self.request.boot},
                                                 "vcpus": self.request.vcpus}))
        self.emit(ev.VmEvent(ev.GAP, now, gap.to_json()))
        self.emit(ev.VmEvent(ev.VM_EXIT, time.monotonic(), {"reason": "gap", "code": EXIT_OK,
                                                           "detail": {"gap": gap.kind}}))
        self.write_summary(EXIT_OK)
        return EXIT_OK

    def _snapshot(self) -> None:
        m = self.machine
        self.events.emit(ev.VmEvent(ev.EXIT_COUNTS, time.monotonic(),
                                    {"counts": m.exit_counts(), "user_time_s": m.user_time_s()}))

    def _stdin_reader(self) -> None:
        while True:
            try:
                data = os.read(0, 4096)
            except OSError:
                return
            if not data:
                return
            self.devices.uart.feed(data)

    def write_summary(self, code: int | None, error: str | None = None) -> None:
        m = self.machine
        ms = m.summary() if m is not None else {}
        gaps = ms.get("gaps", []) + ([self.unbootable.to_json()] if self.unbootable is not None else [])
        extra = {"gaps": gaps, "masked_cpuid": ms.get("masked_cpuid", []),
                 "boot": self.boot_info, "stop": ms.get("stop"), "cpu_profile": self.request.cpu_profile,
                 "gap_policy": self.request.gap_policy, "msr_routing": ms.get("msr_routing"),
                 "coalesced_serial": ms.get("coalesced_serial"), "serial_mode": ms.get("serial_mode"),
                 "serial_batch_toggles": ms.get("serial_batch_toggles"), "user_time_s": ms.get("user_time_s"),
                 "guest_stop_event": self.guest_stop_event, "vcpus": ms.get("vcpus", []),
                 "imports_in_child": imports_in_child()}
        if error:
            extra["error"] = error
        summary = SessionSummary(exit_code=code, exit_counts=ms.get("exit_counts", {}),
                                 flight_recorder=ms.get("flight_recorder", []),
                                 host={**self.host, "workarounds": ms.get("host_workarounds", {})},
                                 command=[sys.executable, "-m", "harness.backends.builtin_vm"] + sys.argv[1:],
                                 extra=extra)
        # One line: json's C encoder runs only without indent (the pure-Python one took 0.18 s of
        # a lab cell's stop under TCG); the runner reads this file, a person reads the result.
        write_json_atomic(self.request.summary_path, summary.to_json(), indent=None)

    def close(self) -> None:
        if self.debug is not None:
            self.debug.close()
        if self.machine is not None:
            self.machine.close()
        if self.devices is not None:
            self.devices.close()


def firmware_boot_gap(req: BootRequest) -> Any:
    """The record of a UEFI boot asked of the built-in aarch64 VMM (FreeBSD/aarch64 wants an EFI
    loader): it has no flash emulation for QEMU_EFI.fd yet, so the boot stops before it starts."""
    from harness.model.gap import FATE_STOPPED, FIRMWARE_BOOT, GapRecord
    firmware = (req.options or {}).get("firmware")
    return GapRecord(kind=FIRMWARE_BOOT, key=f"{req.arch}/uefi", fate=FATE_STOPPED,
                     detail={"why": "the built-in aarch64 VMM has no UEFI firmware (pflash) emulation",
                             "firmware": str(firmware) if firmware else None,
                             "disk": req.disk.name if req.disk is not None else None,
                             "instead": "boot the guest's kernel directly (boot: image / netbsd), or use qemu-tcg"})


def gap_overrides(options: dict[str, Any]) -> dict[int, str]:
    """The spec's `gap_overrides` ({"0x4b564dfe": "emulate"}: MSR key as in gap records -> policy)."""
    out = {}
    for key, policy in (options.get(GAP_OVERRIDES_OPTION) or {}).items():
        try:
            out[int(str(key), 0)] = str(policy)
        except ValueError:
            raise HarnessError(f"gap override key {key!r} is not an MSR index", "give MSR indexes like 0x4b564dfe") from None
    return out


# -- devices and loaders -------------------------------------------------------------------------------
def console_write(data: bytes) -> None:
    try:
        os.write(1, data)
    except OSError:
        pass  # the parent closed the console; the guest keeps running until stopped


def _device_context(child: ChildVm) -> Any:
    from harness.devices.context import DeviceContext
    return DeviceContext(set_irq=lambda gsi, level: child.machine.set_irq(gsi, level) if child.machine else None,
                         emit=child.emit,
                         gap=lambda gap: child.machine.gaps.record(gap) if child.machine else None)


def build_devices(child: ChildVm) -> Any:
    from harness.devices import build_x86_devices
    from harness.devices.virtio import VirtioSetup, attach
    req = child.request
    ctx = _device_context(child)
    devices = build_x86_devices(ctx, console_write, memory_bytes=req.memory_mib * layout.MiB)
    setup = VirtioSetup.from_guest(req.options, req.disk, req.workdir)
    msi = None
    if child.host.get("caps", {}).get("SIGNAL_MSI"):
        msi = lambda address, data: bool(child.machine) and child.machine.vm.signal_msi(address, data)  # noqa: E731
    attach(devices, ctx, child.ram, setup, sinks={"hvc0": SecondConsole(req.workdir / HVC_LOG).write}, msi=msi)
    return devices


def build_aarch64_device_set(child: ChildVm, description: Any, virtio: Any = None) -> Any:
    from harness.devices.aarch64 import build_aarch64_devices
    sinks = {"hvc0": SecondConsole(child.request.workdir / HVC_LOG).write}
    return build_aarch64_devices(_device_context(child), description, console_write, child.ram, virtio, sinks)


HVC_LOG = "console-hvc0.log"


class SecondConsole:
    """The virtio console's output, recorded beside the UART's: raw bytes in console-hvc0.log and
    a CLOCK_MONOTONIC timestamp per chunk in console-hvc0.timing.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log: Any = None
        self.timing: Any = None
        self.offset = 0

    def write(self, data: bytes) -> None:
        if self.log is None:               # opened on the first byte: no empty files without a console
            self.log = open(self.path, "ab", buffering=0)
            self.timing = open(self.path.with_suffix(".timing.jsonl"), "a", buffering=1)
        self.timing.write(json.dumps({"t": time.monotonic(), "offset": self.offset, "n": len(data)}) + "\n")
        self.log.write(data)
        self.offset += len(data)


def install_firmware(req: BootRequest, ram: Any, devices: Any, machine: Any) -> Any:
    """ACPI + MP tables for this VM's CPUs and devices; each table left out is a gap record."""
    from harness import firmware
    from harness.model.gap import FIRMWARE_TABLE_MISSING, GapRecord
    opts = firmware.FirmwareOptions.from_guest(req.options)
    desc = firmware.describe(req.vcpus, mmio=devices.mmio_descriptions(), pci=devices.pci_descriptions(),
                             second_uart=devices.uart2 is not None,
                             msi_supported=any(getattr(t, "msix_vectors", 0) for t in devices.virtio))
    installed = firmware.install(ram, desc, opts)
    if installed.watched:
        from harness.devices.table_rom import TableRom
        rom = TableRom(devices.ctx, layout.ACPI_WATCH_ADDR, layout.ACPI_WATCH_SIZE, installed.watched)
        devices.mmio_bus.register(layout.ACPI_WATCH_ADDR, layout.ACPI_WATCH_SIZE, rom, "acpi-tables")
    for table in installed.omitted:
        machine.gaps.record(GapRecord(kind=FIRMWARE_TABLE_MISSING, key=table, access="omitted",
                                      detail={"why": "turned off by the guest's builtin options"}))
    return installed


def kernel_cmdline(req: BootRequest, devices: Any) -> str:
    """The guest's command line, plus virtio_mmio.device= hints when the guest asks for them
    (kernels built with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES; the DSDT announces them either way)."""
    if devices is None or not (req.options or {}).get("virtio_mmio_cmdline"):
        return req.cmdline
    hints = [t.cmdline_hint() for t in devices.virtio if t.transport == "mmio"]
    return " ".join([req.cmdline, *hints]).strip()


def load_guest(req: BootRequest, ram: Any, rsdp: int | None = None, devices: Any = None) -> tuple[Any, dict[str, Any]]:
    if req.kernel is None:
        raise BackendUnavailable(f"cell {req.cell_id}: the built-in backend needs a kernel",
                                 "give the guest a kernel file")
    from harness.boot import load
    plan = load(req.boot, ram, req.kernel, req.initrd, kernel_cmdline(req, devices), req.vcpus,
                options=req.options, rsdp=rsdp)
    return plan.entry, dict(plan.info)


# -- main ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    mark_child_start()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m harness.backends.builtin_vm SPEC.json", file=sys.stderr)
        return EXIT_SETUP_ERROR
    try:
        request = request_from_json(Path(argv[0]).read_text())
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: cannot read spec {argv[0]}: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    events = ev.EventWriter(request.events_path)
    child = ChildVm(request, events)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.terminated.set())
    try:
        child.build()
    except HarnessError as exc:
        return _setup_failed(child, events, exc.one_line())
    except OSError as exc:  # a KVM ioctl refused during setup
        return _setup_failed(child, events, f"error: VM setup failed: {exc} (fix: check host_info / dmesg)")
    try:
        return child.run()
    finally:
        child.close()
        events.close()


def _setup_failed(child: ChildVm, events: ev.EventWriter, line: str) -> int:
    print(line, file=sys.stderr, flush=True)
    events.emit(ev.VmEvent(ev.BACKEND_ERROR, time.monotonic(), {"message": line}))
    child.write_summary(EXIT_SETUP_ERROR, error=line)
    child.close()
    events.close()
    return EXIT_SETUP_ERROR


if __name__ == "__main__":
    sys.exit(main())
