"""Tiny test guests, assembled with GNU as at test time, and a fake device bus.

Guests are raw flat binaries loaded at GUEST_LOAD and entered in real mode (or 32-bit
protected mode through the flat GDT that `protected_entry` writes).
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.boot.raw import GUEST_LOAD, real_mode_entry  # noqa: F401  (re-exported for tests)

HAVE_AS = shutil.which("as") is not None and shutil.which("objcopy") is not None


@functools.lru_cache(maxsize=None)
def assemble(source: str, bits: int = 16, origin: int | None = None) -> bytes:
    """Flat binary of `source` (GNU as, Intel syntax), linked at `origin`: 0 for real mode (CS base is
    GUEST_LOAD, so labels are CS offsets), GUEST_LOAD for flat 32-bit code."""
    if origin is None:
        origin = 0 if bits == 16 else GUEST_LOAD
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        head = f".intel_syntax noprefix\n.code{bits}\n.org 0\n"
        (d / "g.s").write_text(head + source + "\n")
        _run(["as", "--64" if bits == 64 else "--32", "-o", str(d / "g.o"), str(d / "g.s")])
        _run(["ld", "-m", "elf_x86_64" if bits == 64 else "elf_i386", "-Ttext", hex(origin), "--oformat", "binary", "-e", "0",
                        "-o", str(d / "g.bin"), str(d / "g.o")])
        return (d / "g.bin").read_bytes()


# 64-bit guests: SSE and XSAVE enabled, XCR0 = x87 | SSE.
SSE_ON = """
    mov rax, cr4
    or eax, 0x40600                 # OSXSAVE | OSFXSR | OSXMMEXCPT
    mov cr4, rax
    xor ecx, ecx
    mov eax, 3                      # XCR0 = x87 | SSE
    xor edx, edx
    xsetbv
"""

# 64-bit guests: vector 3 (#BP) of an IDT at 0x3000 -> label `handler`; the guest defines `handler` and `idtr`.
IDT64 = """
    lea rax, [rip + handler]
    mov rdi, 0x3000 + 3 * 16
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x10
    mov word ptr [rdi + 4], 0x8e00
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    lidt [rip + idtr]
"""


@dataclass
class FakeDevice:
    """Remembers writes, answers reads with a fixed value."""
    answer: int = 0x5A
    writes: list[tuple[int, int, int]] = field(default_factory=list)
    reads: list[tuple[int, int]] = field(default_factory=list)

    def read(self, offset: int, size: int) -> int:
        self.reads.append((offset, size))
        return self.answer

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


class FakeBus:
    """The harness.devices.bus.Bus interface, minimal: (base, length) -> device."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int, object]] = []

    def register(self, base: int, length: int, device: object, name: str = "") -> None:
        self.ranges.append((base, length, device))

    def find(self, addr: int):
        for base, length, dev in self.ranges:
            if base <= addr < base + length:
                return base, dev
        return None

    def read(self, addr: int, size: int) -> int | None:
        hit = self.find(addr)
        return None if hit is None else hit[1].read(addr - hit[0], size)

    def write(self, addr: int, size: int, value: int) -> bool:
        hit = self.find(addr)
        if hit is None:
            return False
        hit[1].write(addr - hit[0], size, value)
        return True


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.strip()}")


HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)
needs_kvm = pytest.mark.skipif(not HAVE_KVM, reason="needs a usable /dev/kvm (absent or no permission)")
needs_as = pytest.mark.skipif(not HAVE_AS, reason="needs GNU as/ld (binutils) to assemble test guests")


@dataclass
class GuestRun:
    stop: Any
    summary: dict[str, Any]
    events: list[Any] = field(default_factory=list)
    io: FakeBus | None = None
    mmio: FakeBus | None = None

    def gaps(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [g for g in self.summary["gaps"] if kind is None or g["kind"] == kind]

    def event_types(self) -> list[str]:
        return [e.type for e in self.events]


def run_guest(source: str, bits: int = 16, *, io: FakeBus | None = None, mmio: FakeBus | None = None,
              timeout: float = 10.0, memory: int = 4 << 20, **config: Any) -> GuestRun:
    from harness.kvm.machine import Machine, MachineConfig
    from harness.boot.raw import load_raw
    from harness.memory import GuestRam
    config.setdefault("irqchip", False)
    config.setdefault("pit", config["irqchip"])
    io, mmio = io or FakeBus(), mmio or FakeBus()
    ram = GuestRam(memory)
    events: list[Any] = []
    machine = Machine(ram, io, mmio, MachineConfig(**config), emit=events.append)
    try:
        entry, _ = load_raw(ram, assemble(source, bits), mode={16: "real16", 32: "protected32", 64: "long64"}[bits])
        machine.set_entry(entry)
        machine.start()
        stop = machine.wait(timeout)
        if stop is None:
            stop = machine.stop()
        return GuestRun(stop, machine.summary(), events, io, mmio)
    finally:
        machine.close()
        ram.close()


@dataclass
class DrillRun(GuestRun):
    drilled: list[str] = field(default_factory=list)   # the mnemonics handed to the rescuer, in order

    def rescued(self) -> list[str]:
        return [g["key"] for g in self.gaps("rescued-instruction")]


def drill_guest(source: str, bits: int = 64, *, io: FakeBus | None = None, payload: bool = True,
                timeout: float = 10.0, memory: int = 4 << 20) -> DrillRun:
    """Run a guest in which every `hlt` hands the instruction after it to the rescuer, as if the host's
    emulator had failed on it: the run loop's own KVM_EXIT_INTERNAL_ERROR handling is called with an
    emulation-failure payload holding that instruction (`payload=False`: no bytes, the run loop fetches
    them from guest memory, and clac/stac take the ioctl path instead of the synced-register one).

    Which instructions a host's emulator fails on differs between hosts of one kind (kvm_pvm), so
    the tests that run an instruction natively cannot promise to exercise its rescue; a drill does,
    on every host, and the guest itself then checks the architectural result with instructions
    that do not involve the rescue of the drilled one. A `hlt` followed by anything the rescuer does
    not know ends the drill."""
    import threading

    from harness.kvm import ffi as k
    from harness.kvm import insn
    from harness.kvm.machine import Machine, MachineConfig
    from harness.boot.raw import load_raw
    from harness.kvm.rescue import RESCUABLE
    from harness.kvm.runloop import STOP_HALT, install_kick_handler
    from harness.memory import GuestRam
    io = io or FakeBus()
    ram = GuestRam(memory)
    events: list[Any] = []
    machine = Machine(ram, io, FakeBus(), MachineConfig(irqchip=False, pit=False), emit=events.append)
    drilled: list[str] = []
    try:
        entry, _ = load_raw(ram, assemble(source, bits), mode={16: "real16", 32: "protected32", 64: "long64"}[bits])
        machine.set_entry(entry)
        install_kick_handler()
        loop = machine.loops[0]
        watchdog = threading.Timer(timeout, loop.request_stop)
        watchdog.start()
        try:
            while True:
                stop = loop.run()
                if stop.reason != STOP_HALT:
                    break
                vcpu = loop.vcpu
                rip = vcpu.get_regs()["rip"]
                sregs = vcpu.get_sregs()
                code, _ = insn.fetch(vcpu, ram, rip, sregs)
                decoded = insn.decode(code, insn.cpu_mode_bits(sregs), rip)
                if decoded["mnemonic"] not in RESCUABLE:
                    break
                drilled.append(decoded["mnemonic"])
                _fake_emulation_failure(vcpu.run, code[:decoded["size"]] if payload else b"", k)
                stop = loop._cold_exit(k.KVM_EXIT_INTERNAL_ERROR)   # the run loop's handling of that exit
                if stop is not None:
                    break
        finally:
            watchdog.cancel()
        return DrillRun(stop, machine.summary(), events, io, drilled=drilled)
    finally:
        machine.close()
        ram.close()


def _fake_emulation_failure(run: Any, code: bytes, k: Any) -> None:
    """Fill kvm_run as KVM does for an emulation failure (suberror 1, flags, instruction bytes)."""
    run.exit_reason = k.KVM_EXIT_INTERNAL_ERROR
    ef = run.emulation_failure
    ef.suberror = k.KVM_INTERNAL_ERROR_EMULATION
    ef.ndata = 3 if code else 0
    ef.flags = k.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES if code else 0
    ef.insn_size = len(code)
    for i, byte in enumerate(code):
        ef.insn_bytes[i] = byte


@functools.lru_cache(maxsize=None)
def host_label() -> str:
    """Which host a host-dependent result was proven on (KVM module, kernel, CPU model)."""
    from harness.kvm.system import host_info
    info = host_info()
    return f"{info['kvm_module']} on Linux {info['kernel_release']}, {info['cpu_model'] or 'unknown CPU'}"


@contextlib.contextmanager
def running_machine(code: bytes, mode: str = "protected32", *, io: Any = None, mmio: Any = None,
                    ram: Any = None, memory: int = 4 << 20, **config: Any):
    """A started Machine (in-kernel irqchip + PIT by default) running `code`; stopped and closed
    on exit. Yields the machine; the caller polls its fake devices."""
    from harness.kvm.machine import Machine, MachineConfig
    from harness.boot.raw import load_raw
    from harness.memory import GuestRam
    config.setdefault("irqchip", True)
    config.setdefault("pit", True)
    own_ram = ram is None
    ram = ram if ram is not None else GuestRam(memory)
    machine = Machine(ram, io or FakeBus(), mmio or FakeBus(), MachineConfig(**config))
    try:
        entry, _ = load_raw(ram, code, mode=mode)
        machine.set_entry(entry)
        machine.start()
        yield machine
    finally:
        machine.stop()
        machine.close()
        if own_ram:
            ram.close()


def wait_for(predicate, timeout: float = 20.0) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass."""
    import time
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())
