"""SMP on the in-kernel APIC: the BSP wakes the AP with INIT-SIPI-SIPI, as every OS does.

The AP's real-mode trampoline sits at 0x8000 (SIPI vector 0x08); it writes its own marker to a
port and sets a flag in RAM the BSP waits for. Proves KVM's in-kernel LAPIC delivers INIT/SIPI
to the AP thread our run loop keeps in KVM_RUN (KVM_MP_STATE_UNINITIALIZED until then).
"""
from __future__ import annotations

from kvm_guests import FakeBus, FakeDevice, assemble, needs_as, needs_kvm, running_machine, wait_for

pytestmark = [needs_kvm, needs_as]

TRAMPOLINE = 0x8000
FLAG = 0x7000
AP_CODE = f"""
xor ax, ax
mov ds, ax
mov dx, 0x11
mov al, 0xA1
out dx, al
mov byte ptr ds:[{FLAG:#x}], 1
1: hlt
jmp 1b
"""


def bsp_code(ap: bytes) -> str:
    blob = ", ".join(str(b) for b in ap)
    return f"""
    mov esi, offset ap_start
    mov edi, {TRAMPOLINE:#x}
    mov ecx, {len(ap)}
    rep movsb
    mov dword ptr ds:[0xFEE00310], 0          # ICR high: destination by shorthand
    mov dword ptr ds:[0xFEE00300], 0x000C4500 # INIT, level assert, all excluding self
    mov ecx, 100000
2:  loop 2b
    mov dword ptr ds:[0xFEE00300], 0x000C4608 # STARTUP, vector 0x08 -> 0x8000
    mov ecx, 100000
3:  loop 3b
    mov dword ptr ds:[0xFEE00300], 0x000C4608 # the second SIPI of the MP spec's sequence
4:  cmp byte ptr ds:[{FLAG:#x}], 1
    jne 4b
    mov dx, 0x10
    mov al, 0xB0
    out dx, al
5:  jmp 5b
ap_start:
    .byte {blob}
    """


def test_bsp_starts_the_ap_with_init_sipi():
    io, bsp_port, ap_port = FakeBus(), FakeDevice(), FakeDevice()
    io.register(0x10, 1, bsp_port)
    io.register(0x11, 1, ap_port)
    with running_machine(assemble(bsp_code(assemble(AP_CODE, 16)), 32), io=io, vcpus=2) as m:
        wait_for(lambda: bsp_port.writes, 30)
        assert ap_port.writes == [(0, 1, 0xA1)], "the AP never ran its trampoline"
        assert bsp_port.writes == [(0, 1, 0xB0)]
        counts = [loop.exit_counts().get("io", 0) for loop in m.loops]
        assert counts[0] >= 1 and counts[1] >= 1            # each vCPU exited on its own thread


def test_ioapic_id_register_matches_the_tables():
    """The guest reads the IOAPIC's ID register (index 0 via IOREGSEL/IOWIN) and its version
    register (24 pins); both must be what the MADT and the MP table say."""
    from harness.firmware import describe, mptable
    io, port = FakeBus(), FakeDevice()
    io.register(0x10, 4, port)
    code = """
    mov dword ptr ds:[0xFEC00000], 0
    mov eax, dword ptr ds:[0xFEC00010]
    shr eax, 24
    mov dx, 0x10
    out dx, eax
    mov dword ptr ds:[0xFEC00000], 1
    mov eax, dword ptr ds:[0xFEC00010]
    out dx, eax
1:  jmp 1b
    """
    with running_machine(assemble(code, 32), io=io):
        wait_for(lambda: len(port.writes) >= 2)
    desc = describe(2)
    (_, _, ioapic_id), (_, _, version) = port.writes[:2]
    assert ioapic_id == desc.ioapic.apic_id
    assert ((version >> 16) & 0xFF) + 1 == desc.ioapic.pins
    assert version & 0xFF == mptable.IOAPIC_VERSION
