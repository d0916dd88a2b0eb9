"""Host quirks: the probe that finds them and the Machine's work-around (harness.hosts.quirks,
harness.kvm.machine.XSETBV_NOT_SEEN). The lab, where the quirk is real, is tested in
tests/hosts/test_lab_boot.py; here the work-around runs on this host's KVM, which sees XSETBV."""
from __future__ import annotations

import pytest

from kvm_guests import HAVE_AS, HAVE_KVM, FakeBus, FakeDevice, host_label, run_guest

pytestmark = [pytest.mark.skipif(not HAVE_KVM, reason="needs a usable /dev/kvm (absent or no permission)"),
              pytest.mark.skipif(not HAVE_AS, reason="needs GNU as/ld (binutils) to assemble test guests")]

# XCR0 as the guest finds it (OSXSAVE on, xgetbv), then CPUID.(0xD,0) EBX: the XSAVE size KVM states.
READ_XCR0_AND_SIZE = """
    mov rax, cr4
    or eax, 0x40600
    mov cr4, rax
    xor ecx, ecx
    xgetbv
    mov dx, 0x10
    out dx, eax
    mov eax, 0xd
    xor ecx, ecx
    cpuid
    mov eax, ebx
    mov dx, 0x10
    out dx, eax
    hlt
"""


def _xsave_size(entries: list[dict[str, int]], xcr0: int) -> int:
    """The standard-format size for `xcr0` from the per-component leaves, as Linux computes it."""
    size = 576
    for e in entries:
        if e["function"] == 0xD and e["index"] >= 2 and xcr0 >> e["index"] & 1:
            size = max(size, e["ebx"] + e["eax"])
    return size


def _run(**config):
    from harness.kvm import cpuid
    from harness.kvm.system import KVM_PATH
    import os
    fd = os.open(KVM_PATH, os.O_RDWR)
    try:
        offered = cpuid.supported(fd)
    finally:
        os.close(fd)
    bus, dev = FakeBus(), FakeDevice()
    bus.register(0x10, 4, dev)
    run = run_guest(READ_XCR0_AND_SIZE, 64, io=bus, **config)
    assert run.stop.reason == "halt", f"{run.stop} on {host_label()}"
    return run, [w[2] for w in dev.writes], offered


def test_this_hosts_kvm_sees_the_guests_xsetbv():
    from harness.hosts.quirks import probe_host_quirks, xsetbv_reaches_kvm
    assert xsetbv_reaches_kvm() is True, host_label()
    assert probe_host_quirks() == [], host_label()


def test_without_the_quirk_xcr0_starts_at_its_reset_value():
    run, (xcr0, size), _ = _run()
    assert xcr0 == 0x1 and size == 576, f"{xcr0:#x} {size} on {host_label()}"
    assert run.summary["host_workarounds"] == {}


def test_the_workaround_presets_xcr0_to_the_offer_and_cpuid_sizes_the_area_for_it():
    from harness.arch.x86_64.cpuid import offered_xcr0
    from harness.kvm.machine import XSETBV_NOT_SEEN
    run, (xcr0, size), entries = _run(host_quirks=(XSETBV_NOT_SEEN,))
    offered = offered_xcr0(entries) & 0xFFFFFFFF
    assert offered & 0x3 == 0x3, f"this host offers no SSE state: {offered:#x}"
    assert xcr0 == offered, f"{xcr0:#x} != {offered:#x} on {host_label()}"
    assert size == _xsave_size(entries, offered) > 576, f"{size} on {host_label()}"
    assert run.summary["host_workarounds"] == {XSETBV_NOT_SEEN: f"XCR0 preset to {offered:#x} (the guest's CPUID offer)"}


def test_offered_xcr0_reads_leaf_0xd_and_is_zero_without_it():
    from harness.arch.x86_64.cpuid import offered_xcr0
    assert offered_xcr0([{"function": 0xD, "index": 0, "eax": 0x207, "edx": 0x1, "ebx": 0, "ecx": 0}]) == 0x1_0000_0207
    assert offered_xcr0([{"function": 0xD, "index": 1, "eax": 0xF, "edx": 0, "ebx": 0, "ecx": 0}]) == 0
    assert offered_xcr0([]) == 0


def test_a_probe_that_cannot_run_leaves_the_lab_usable_and_says_why(monkeypatch):
    from harness.hosts import agent, quirks

    def broken(kvm_path=None):
        raise OSError("KVM_CREATE_VM: no such device")
    monkeypatch.setattr(quirks, "probe_host_quirks", broken)
    monkeypatch.setattr(agent.os, "uname", lambda: type("U", (), {"machine": "x86_64"})())
    assert agent.host_quirks() == ([], "failed: OSError: KVM_CREATE_VM: no such device")
