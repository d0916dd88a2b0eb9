"""Probes for host KVM behaviour a VMM must work around, run once per host (the lab agent at start).

Each probe runs a few guest instructions on the host's /dev/kvm and checks what KVM saw; its quirk
name is what the Machine knows how to work around (harness.kvm.machine.XSETBV_NOT_SEEN). The
result is a host fact: it travels in the lab's `ready` message into every result made there
(result.host.lab.quirks) and into every cell spec the lab runs (BootRequest.host_quirks).
"""
from __future__ import annotations

from harness.kvm.machine import XSETBV_NOT_SEEN

# Real mode, CPL 0:  mov eax, cr4 / or eax, 0x40000 (OSXSAVE) / mov cr4, eax / xor ecx, ecx /
#                    mov eax, 3 / xor edx, edx / xsetbv (XCR0 = x87 | SSE) / hlt
XSETBV_PROBE = bytes.fromhex("0f20e0660d000004000f22e06631c966b8030000006631d20f01d1f4")
PROBE_TIMEOUT_S = 20.0     # a TCG lab under load; natively it takes milliseconds
PROBE_MEMORY = 2 << 20      # the smallest GuestRam


def xsetbv_reaches_kvm(kvm_path: str | None = None) -> bool | None:
    """Does a guest's XSETBV reach KVM (KVM_GET_XCRS afterwards = what the guest wrote)?
    None where the question does not arise: the host offers no XSAVE, or the probe did not halt."""
    from harness.arch.x86_64.cpuid import offered_xcr0
    from harness.boot.raw import load_raw
    from harness.devices.bus import Bus
    from harness.kvm.machine import Machine, MachineConfig
    from harness.kvm.system import KVM_PATH
    from harness.memory import GuestRam
    ram = GuestRam(PROBE_MEMORY)
    machine = Machine(ram, Bus("io"), Bus("mmio"),   # empty buses: the probe touches no device
                      MachineConfig(irqchip=False, pit=False, rescue=False, kvm_path=kvm_path or KVM_PATH))
    try:
        if offered_xcr0(machine.cpuid_entries) & 0x3 != 0x3:
            return None
        entry, _ = load_raw(ram, XSETBV_PROBE, mode="real16")
        machine.set_entry(entry)
        machine.start()
        stop = machine.wait(PROBE_TIMEOUT_S) or machine.stop()
        if stop is None or stop.reason != "halt":
            return None
        return machine.loops[0].vcpu.get_xcr0() == 0x3
    finally:
        machine.close()
        ram.close()


def probe_host_quirks(kvm_path: str | None = None) -> list[str]:
    return [] if xsetbv_reaches_kvm(kvm_path) in (True, None) else [XSETBV_NOT_SEEN]

