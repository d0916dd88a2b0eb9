"""KVM_SIGNAL_MSI reaches a guest's interrupt handler through KVM's in-kernel LAPIC: the path a
virtio-pci device with MSI-X uses when the host has it (kvm_pvm reports the capability)."""
from __future__ import annotations

import time

import pytest

from kvm_guests import FakeBus, FakeDevice, assemble, needs_as, needs_kvm, running_machine, wait_for

pytestmark = [needs_kvm, needs_as]

VECTOR = 0x40
IDT = 0x3000
GUEST = f"""
    mov edi, {IDT:#x}                 # an interrupt gate for VECTOR -> handler
    mov eax, offset handler
    mov word ptr ds:[edi + {VECTOR * 8}], ax
    mov word ptr ds:[edi + {VECTOR * 8 + 2}], 0x08
    mov word ptr ds:[edi + {VECTOR * 8 + 4}], 0x8E00
    shr eax, 16
    mov word ptr ds:[edi + {VECTOR * 8 + 6}], ax
    lidt [idtr]
    or dword ptr ds:[0xFEE000F0], 0x100   # LAPIC software enable (SVR)
    mov dx, 0x11
    out dx, al                            # ready
    sti
1:  hlt
    jmp 1b
handler:
    mov dx, 0x10
    mov al, {VECTOR}
    out dx, al
    mov dword ptr ds:[0xFEE000B0], 0      # EOI
    iretd
idtr:
    .word 0x7FF
    .long {IDT:#x}
"""


def test_signal_msi_runs_the_guest_handler():
    io, handler_port, ready = FakeBus(), FakeDevice(), FakeDevice()
    io.register(0x10, 1, handler_port)
    io.register(0x11, 1, ready)
    with running_machine(assemble(GUEST, 32), io=io) as m:
        if not m.vm.caps.get("SIGNAL_MSI"):
            pytest.skip("this KVM has no KVM_SIGNAL_MSI")
        wait_for(lambda: ready.writes)
        time.sleep(0.1)                                        # past sti into hlt
        delivered = m.vm.signal_msi(0xFEE0_0000, VECTOR)      # destination LAPIC 0, fixed, edge
        wait_for(lambda: handler_port.writes)
    assert delivered
    assert handler_port.writes == [(0, 1, VECTOR)]
