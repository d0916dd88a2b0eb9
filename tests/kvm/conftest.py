"""Shared fixtures for the KVM core tests: run a tiny assembled guest on a Machine."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from guests import HAVE_AS, FakeBus, assemble  # noqa: E402

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


@pytest.fixture
def guest():
    if not HAVE_KVM:
        pytest.skip("needs a usable /dev/kvm (absent or no permission)")
    if not HAVE_AS:
        pytest.skip("needs GNU as/ld (binutils) to assemble test guests")
    return run_guest
