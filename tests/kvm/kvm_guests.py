"""Tiny test guests, assembled with GNU as at test time, and a fake device bus.

Guests are raw flat binaries loaded at GUEST_LOAD and entered in real mode (or 32-bit
protected mode through the flat GDT that `protected_entry` writes).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.kvm.rawboot import GUEST_LOAD, real_mode_entry  # noqa: F401  (re-exported for tests)

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
    from harness.kvm.rawboot import load_raw
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
