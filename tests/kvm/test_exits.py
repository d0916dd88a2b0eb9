"""Each exit path of the run loop, driven by a tiny assembled guest."""
from __future__ import annotations

import pytest

from kvm_guests import IDT64, SSE_ON, FakeBus, FakeDevice, host_label
from harness import layout
from harness.errors import ConfigError
from harness.kvm.msr import MTRRCAP_VALUE, PAT_RESET_VALUE

HALT = "mov dx, 0x10\nhlt"


def _bus(port=0x10, length=4, answer=0x5A):
    bus, dev = FakeBus(), FakeDevice(answer=answer)
    bus.register(port, length, dev)
    return bus, dev


def test_port_out_and_in_all_sizes(guest):
    io, dev = _bus(answer=0x89ABCDEF)
    run = guest("""
        mov dx, 0x10
        mov al, 0x41
        out dx, al
        mov ax, 0x1234
        out dx, ax
        mov eax, 0xdeadbeef
        out dx, eax
        in al, dx
        mov dx, 0x11
        out dx, al
        mov dx, 0x10
        in ax, dx
        out dx, ax
        in eax, dx
        out dx, eax
        hlt""", io=io)
    assert run.stop.reason == "halt"
    assert dev.writes == [(0, 1, 0x41), (0, 2, 0x1234), (0, 4, 0xDEADBEEF), (1, 1, 0xEF), (0, 2, 0xCDEF),
                          (0, 4, 0x89ABCDEF)]
    assert dev.reads == [(0, 1), (0, 2), (0, 4)]
    assert run.summary["exit_counts"]["io"] == 9
    assert run.summary["exit_counts"]["hlt"] == 1


def test_string_io_rep_outs_and_ins(guest):
    io, dev = _bus(answer=0x33)
    run = guest("""
        mov ax, cs
        mov ds, ax
        mov es, ax
        mov si, offset src
        mov cx, 5
        mov dx, 0x10
        cld
        rep outsb
        mov di, offset dst
        mov cx, 3
        rep insw
        mov ax, [dst + 4]
        out dx, ax
        hlt
    src: .ascii "ABCDE"
    dst: .word 0, 0, 0""", io=io)
    assert run.stop.reason == "halt"
    assert [w[2] for w in dev.writes[:5]] == list(b"ABCDE")
    assert dev.reads == [(0, 2)] * 3
    assert dev.writes[-1] == (0, 2, 0x33)  # what rep insw stored, read back by the guest
    rep = run.gaps("rep-string-io")
    # KVM batches REP INS into one exit (count > 1); REP OUTS it may deliver one element per exit,
    # which the run loop recognises by decoding the instruction: both directions are recorded, once.
    by_access = {g["access"]: g for g in rep}
    assert set(by_access) == {"read", "write"}
    assert all(g["count"] == 1 for g in rep)
    assert by_access["read"]["detail"]["count"] > 1


def test_unclaimed_port_reads_all_ones_and_is_a_gap(guest):
    io, dev = _bus()
    run = guest("""
        mov dx, 0x2e9
        in al, dx
        mov dx, 0x10
        out dx, al
        mov dx, 0x2e9
        in ax, dx
        mov dx, 0x10
        out dx, ax
        mov dx, 0x2ea
        out dx, al
        hlt""", io=io)
    assert [w[2] for w in dev.writes] == [0xFF, 0xFFFF]
    gaps = {(g["key"], g["access"]): g for g in run.gaps("io-port")}
    assert set(gaps) == {("0x2e9", "read"), ("0x2ea", "write")}
    assert gaps[("0x2e9", "read")]["count"] == 2
    assert gaps[("0x2e9", "read")]["first_rip"] is not None
    assert [e.data["key"] for e in run.events if e.type == "gap"] == ["0x2e9", "0x2ea"]  # first occurrence only


def test_mmio_read_write_and_unclaimed(guest):
    io, dev = _bus()
    mmio, mdev = FakeBus(), FakeDevice(answer=0xCAFEF00D)
    mmio.register(layout.VIRTIO_MMIO_START, 0x1000, mdev)
    run = guest(f"""
        mov dword ptr [{layout.VIRTIO_MMIO_START + 8:#x}], 0x12345678
        mov eax, dword ptr [{layout.VIRTIO_MMIO_START + 4:#x}]
        mov dx, 0x10
        out dx, eax
        mov eax, dword ptr [{layout.VIRTIO_MMIO_START + 0x10000:#x}]
        out dx, eax
        mov byte ptr [{layout.VIRTIO_MMIO_START + 0x10000:#x}], 7
        hlt""", bits=32, io=io, mmio=mmio)
    assert run.stop.reason == "halt"
    assert mdev.writes == [(8, 4, 0x12345678)] and mdev.reads == [(4, 4)]
    assert [w[2] for w in dev.writes] == [0xCAFEF00D, 0xFFFFFFFF]
    keys = {(g["key"], g["access"]) for g in run.gaps("mmio")}
    assert keys == {(hex(layout.VIRTIO_MMIO_START + 0x10000), "read"), (hex(layout.VIRTIO_MMIO_START + 0x10000),
                                                                         "write")}
    assert run.summary["exit_counts"]["mmio"] == 4


def test_hlt_without_irqchip_ends_run(guest):
    run = guest("nop\nhlt")
    assert run.stop.reason == "halt"
    assert run.summary["flight_recorder"][-1]["reason"] == "hlt"


def test_triple_fault_event_with_flight_recorder(guest):
    io, _ = _bus()
    run = guest("""
        mov dx, 0x10
        out dx, al
        lidt [idt]
        ud2
    idt: .word 0
         .long 0""", bits=32, io=io)
    assert run.stop.reason == "triple-fault"
    tf = [e for e in run.events if e.type == "triple-fault"]
    assert len(tf) == 1
    assert tf[0].data["flight_recorder"][-2]["port"] == "0x10"
    assert tf[0].data["flight_recorder"][-1]["reason"] == "shutdown"
    assert "cs" in tf[0].data["registers"]
    assert run.gaps("triple-fault")[0]["fate"] == "stopped"


def test_flight_recorder_keeps_last_256_in_order(guest):
    io, _ = _bus(length=0x20)
    run = guest("""
        mov cx, 300
        xor bx, bx
    1:  mov dx, bx
        and dx, 0x0f
        add dx, 0x10
        out dx, al
        inc bx
        loop 1b
        hlt""", io=io)
    fr = run.summary["flight_recorder"]
    assert len(fr) == 256
    ios = [e for e in fr if e["reason"] == "io"]
    assert [int(e["port"], 16) for e in ios] == [0x10 + (i & 0xF) for i in range(300 - len(ios), 300)]
    assert all(fr[i]["t"] <= fr[i + 1]["t"] for i in range(len(fr) - 1))
    assert len({e["rip"] for e in ios}) == 1  # the same out instruction every time


MSR_GUEST = """
    xor ax, ax
    mov ds, ax
    mov word ptr [13*4], offset gp
    mov word ptr [13*4+2], 0x1000
    mov ecx, 0xfe
    rdmsr
    mov dx, 0x10
    out dx, eax
    mov ecx, 0x277
    rdmsr
    mov dx, 0x10
    out dx, eax
    mov ecx, 0x277
    mov eax, 0x06060606
    mov edx, 0x06060606
    wrmsr
    rdmsr
    mov dx, 0x10
    out dx, eax
    mov ecx, 0x10
    rdmsr
    or eax, edx
    mov dx, 0x10
    out dx, eax
    mov ecx, 0xc0011234
    rdmsr
    mov dx, 0x10
    out dx, eax
    hlt
gp: mov dx, 0x11
    out dx, al
    hlt
"""


def test_msr_policy_emulate(guest):
    io, dev = _bus()
    run = guest(MSR_GUEST, io=io, gap_policy="emulate")
    assert run.stop.reason == "halt"
    values = [w[2] for w in dev.writes]
    assert values[0] == MTRRCAP_VALUE
    assert values[1] == PAT_RESET_VALUE & 0xFFFFFFFF
    assert values[2] == 0x06060606
    assert values[3] != 0                 # a real TSC
    assert values[4] == 0                 # unknown MSR reads 0
    kinds = {(g["kind"], g["key"], g["access"]) for g in run.gaps()}
    assert {("mtrr-probe", "0xfe", "read"), ("mtrr-probe", "0x277", "read"), ("mtrr-probe", "0x277", "write"),
            ("tsc-msr", "0x10", "read"), ("msr-read", "0xc0011234", "read")} <= kinds
    pat_read = next(g for g in run.gaps("mtrr-probe") if g["key"] == "0x277" and g["access"] == "read")
    assert pat_read["count"] == 2 and pat_read["policy"] == "emulate" and pat_read["fate"] == "continued"


def test_msr_policy_zero(guest):
    io, dev = _bus()
    run = guest(MSR_GUEST, io=io, gap_policy="zero")
    assert [w[2] for w in dev.writes] == [0, 0, 0, 0, 0]
    assert all(g["policy"] == "zero" for g in run.gaps() if g["kind"] in ("mtrr-probe", "tsc-msr", "msr-read"))


def test_msr_policy_gp_injects_fault(guest):
    io, dev = _bus()
    run = guest(MSR_GUEST, io=io, gap_policy="gp")
    assert run.stop.reason == "halt"
    assert dev.writes[0][0] == 1          # the #GP handler wrote to port 0x11, nothing reached 0x10 first
    gap = run.gaps("mtrr-probe")[0]
    assert gap["key"] == "0xfe" and gap["fate"] == "gp-injected" and gap["policy"] == "gp"


def test_unknown_policy_and_profile_are_config_errors():
    from harness.arch.x86_64.cpuid import check_profile
    from harness.kvm.msr import check_policy
    with pytest.raises(ConfigError) as exc:
        check_policy("ignore")
    assert "gp" in exc.value.fix and "emulate" in exc.value.fix
    with pytest.raises(ConfigError) as exc:
        check_profile("fast")
    assert "pvm-safe" in exc.value.fix and "minimal" in exc.value.fix


@pytest.mark.parametrize("profile", ["default", "pvm-safe"])
def test_cpuid_profile_reaches_guest(guest, profile):
    io, dev = _bus()
    run = guest("""
        mov eax, 1
        cpuid
        mov dx, 0x10
        mov eax, ecx
        out dx, eax
        hlt""", io=io, cpu_profile=profile)
    ecx = dev.writes[0][2]
    assert ecx >> 31 & 1                  # hypervisor bit
    if profile == "pvm-safe":
        assert not ecx >> 13 & 1          # cx16 hidden
        # (kvm_pvm passes host CPUID bits that KVM does not itself report, e.g. xsave; see README)
    assert set(run.summary["masked_cpuid"]) == {g["key"] for g in run.gaps("masked-cpuid")}




def test_int3_reaches_guest_handler_rescued_if_host_cannot(guest):
    io, dev = _bus()
    run = guest(IDT64 + """
        int3
        mov dx, 0x10
        mov al, 2
        out dx, al
        hlt
    handler:
        mov dx, 0x10
        mov al, 1
        out dx, al
        iretq
    idtr: .word 0xfff
          .quad 0x3000""", bits=64, io=io)
    assert run.stop.reason == "halt"
    assert [w[2] for w in dev.writes] == [1, 2]
    rescued = run.gaps("rescued-instruction")
    if rescued:  # kvm_pvm: its emulator fails on int3, the run loop injected #BP
        assert rescued[0]["key"] == "int3" and rescued[0]["fate"] == "continued"


def test_emulation_failure_is_structured(guest):
    io, dev = _bus()
    run = guest("""
        mov rsi, 0x4000
        xor eax, eax
        xor edx, edx
        lock cmpxchg16b [rsi]
        mov dx, 0x10
        out dx, al
        hlt""", bits=64, io=io)
    if run.stop.reason == "halt":
        pytest.skip("this host executes lock cmpxchg16b (hardware virtualization): no failure to record")
    assert run.stop.reason == "host-emulation-failure"
    ev = next(e for e in run.events if e.type == "host-emulation-failure")
    assert ev.data["insn"].startswith("lock cmpxchg16b")
    assert ev.data["bytes"].startswith("f0480fc70e")
    assert ev.data["bits"] == 64 and ev.data["suberror"] == 1
    assert ev.data["registers"]["rsi"] == "0x4000"
    assert ev.data["flight_recorder"][-1]["reason"] == "internal-error"
    gap = run.gaps("host-emulation-failure")[0]
    assert gap["key"] == "lock cmpxchg16b"           # capstone keeps the prefix in the mnemonic
    assert gap["fate"] == "stopped" and gap["detail"]["insn"] == ev.data["insn"]


def test_memory_is_shared_with_guest(guest):
    from harness.kvm.machine import Machine, MachineConfig
    from harness.boot.raw import load_raw
    from harness.memory import GuestRam
    from kvm_guests import assemble
    ram = GuestRam(4 << 20)
    ram.write(0x5000, b"\x11\x22\x33\x44")
    io, dev = _bus()
    m = Machine(ram, io, FakeBus(), MachineConfig(irqchip=False, pit=False))
    entry, _ = load_raw(ram, assemble("""
        mov eax, dword ptr [0x5000]
        mov dx, 0x10
        out dx, eax
        mov dword ptr [0x300000], 0xfeedface
        hlt""", 32), mode="protected32")
    m.set_entry(entry)
    m.start()
    assert m.wait(10).reason == "halt"
    m.close()
    assert dev.writes[0][2] == 0x44332211
    assert ram.read_u32(0x300000) == 0xFEEDFACE


def test_ram_above_the_hole_gets_its_own_slot():
    import os
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/kvm")
    from harness.kvm.vm import Vm
    from harness.memory import GuestRam
    ram = GuestRam(layout.MMIO_HOLE_START + 64 * layout.MiB)  # lazily backed: costs nothing until touched
    vm = Vm(ram, irqchip=False)
    try:
        assert [r.guest_addr for r in ram.regions()] == [0, layout.RAM_ABOVE_4G_START]
    finally:
        vm.close()
        ram.close()


XSAVE_GUEST = SSE_ON + """
    xor ecx, ecx
    xgetbv
    mov dx, 0x10
    out dx, eax                     # 3
    mov rsi, 0x5000                 # xsave area (64-byte aligned)
    movdqu xmm0, [rip + pattern]
    mov eax, 0xffffffff
    mov edx, 0xffffffff
    xsave [rsi]
    mov eax, dword ptr [rsi + 160]  # XMM0 low dword as saved
    mov dx, 0x10
    out dx, eax
    mov eax, dword ptr [rsi + 512]  # XSTATE_BV
    out dx, eax
    mov dword ptr [rsi + 160], 0x55667788
    mov eax, 0xffffffff
    mov edx, 0xffffffff
    xrstor [rsi]
    movdqu [rsi + 0x1000], xmm0
    mov eax, dword ptr [rsi + 0x1000]
    mov dx, 0x10
    out dx, eax                     # what xrstor put into XMM0
    hlt
    .balign 16
pattern: .long 0x11223344, 0, 0, 0
"""


def test_xsave_family_runs_or_is_rescued(guest):
    io, dev = _bus()
    run = guest(XSAVE_GUEST, bits=64, io=io)
    assert run.stop.reason == "halt", run.stop
    values = [w[2] for w in dev.writes]
    assert values[0] == 3
    assert values[1] == 0x11223344
    assert values[2] & 0x2                       # SSE state marked as saved
    assert values[3] == 0x55667788
    rescued = {g["key"] for g in run.gaps("rescued-instruction")}
    assert rescued <= {"xsetbv", "xgetbv", "xsave", "xrstor"}


def test_smap_clac_stac_run_or_are_rescued(guest):
    io, dev = _bus()
    run = guest("""
        stac
        pushfq
        pop rax
        shr eax, 18
        and eax, 1
        mov dx, 0x10
        out dx, eax
        clac
        pushfq
        pop rax
        shr eax, 18
        and eax, 1
        mov dx, 0x10
        out dx, eax
        hlt""", bits=64, io=io)
    if run.stop.reason != "halt":
        pytest.skip(f"this CPU lacks SMAP (stac/clac #UD): {run.stop} on {host_label()}")
    assert [w[2] for w in dev.writes] == [1, 0]
    assert {g["key"] for g in run.gaps("rescued-instruction")} <= {"clac", "stac"}


def test_xsavec_compacted_round_trip(guest):
    io, dev = _bus()
    run = guest(XSAVE_GUEST.replace("xsave [rsi]", "xsavec [rsi]").replace(
        "mov eax, dword ptr [rsi + 512]  # XSTATE_BV", "mov eax, dword ptr [rsi + 524]  # XCOMP_BV high"),
        bits=64, io=io)
    if run.stop.reason != "halt":
        pytest.skip(f"no XSAVEC here and not rescued: {run.stop} on {host_label()}")
    values = [w[2] for w in dev.writes]
    assert values[1] == 0x11223344 and values[2] >> 31 == 1 and values[3] == 0x55667788


def test_popcnt_and_rdtscp_run_or_are_rescued(guest):
    io, dev = _bus()
    run = guest("""
        mov rdi, 0xf0f0000000000001
        popcnt rax, rdi
        mov dx, 0x10
        out dx, eax
        mov dword ptr [0x5000], 0x7
        popcnt ebx, dword ptr [0x5000]
        mov eax, ebx
        out dx, eax
        xor edi, edi
        popcnt rax, rdi
        pushfq
        pop rax
        shr eax, 6
        and eax, 1
        out dx, eax
        rdtscp
        or eax, edx
        mov dx, 0x10
        out dx, eax
        hlt""", bits=64, io=io)
    if run.stop.reason != "halt":
        pytest.skip(f"this CPU lacks popcnt/rdtscp: {run.stop} on {host_label()}")
    values = [w[2] for w in dev.writes]
    assert values[:3] == [9, 3, 1]        # counts, then ZF for a zero source
    assert values[3] != 0                 # a TSC
    assert {g["key"] for g in run.gaps("rescued-instruction")} <= {"popcnt", "rdtscp"}


def test_x87_control_words_run_or_are_rescued(guest):
    io, dev = _bus()
    run = guest("""
        fninit
        fwait
        fnstcw word ptr [0x5000]
        movzx eax, word ptr [0x5000]
        mov dx, 0x10
        out dx, eax
        mov word ptr [0x5002], 0x027f
        fldcw word ptr [0x5002]
        fnstcw word ptr [0x5004]
        movzx eax, word ptr [0x5004]
        mov dx, 0x10
        out dx, eax
        fnstsw ax
        and eax, 0xffff
        mov dx, 0x10
        out dx, eax
        hlt""", bits=64, io=io)
    assert run.stop.reason == "halt", f"{run.stop} on {host_label()}"
    # Whichever of these the host's emulator ran and whichever the run loop rescued (it differs between
    # hosts of one kind), the guest must read back what it loaded; test_rescue_drills.py drives each rescue.
    assert [w[2] for w in dev.writes] == [0x37F, 0x27F, 0], f"rescued {run.gaps('rescued-instruction')} on {host_label()}"
    assert {g["key"] for g in run.gaps("rescued-instruction")} <= {"wait", "fninit", "fnstsw", "fnstcw", "fldcw"}
