"""Every instruction rescue, driven on every host: the guest halts before the instruction, the test
hands it to the run loop as an emulation failure (kvm_guests.drill_guest), and the guest itself then
checks the architectural result with instructions that do not use that rescue (fxsave/fxrstor,
pushfq, cpuid, rdtsc run in every KVM's emulator, kvm_pvm's included).

Whether a host's emulator can run an instruction differs between hosts of one kind, so the tests in
test_exits.py that run instructions natively cannot promise that a rescue ran; these can. Assertion
messages name the host (KVM module, kernel, CPU) the result was obtained on."""
from __future__ import annotations

import pytest

from kvm_guests import HAVE_AS, HAVE_KVM, IDT64, SSE_ON, FakeBus, FakeDevice, drill_guest, host_label

pytestmark = [pytest.mark.skipif(not HAVE_KVM, reason="needs a usable /dev/kvm (absent or no permission)"),
              pytest.mark.skipif(not HAVE_AS, reason="needs GNU as/ld (binutils) to assemble test guests")]

# Drilled restore of the area at 0x7000 (RFBM x87 | SSE), then the emulator's own fxsave to 0x6000.
RESTORE_THEN_FXSAVE = """
        mov rsi, 0x7000
        mov eax, 3
        xor edx, edx
        hlt
        MNEMONIC [rsi]
        fxsave [0x6000]
"""
# Load x87/SSE state with the emulator's own fxrstor: FCW, FSW, XMM0 low dword.
SET_X87 = """
    fxsave [0x6000]
    mov word ptr [0x6000], {fcw}
    mov word ptr [0x6002], {fsw}
    mov dword ptr [0x6000 + 160], {xmm0}
    fxrstor [0x6000]
"""
OUT = "    mov dx, 0x10\n    out dx, eax\n"


def _drill(source: str, mnemonic: str = "", **kw):
    """Run `source` as a drill (MNEMONIC in it replaced by `mnemonic`); the values it wrote to port 0x10."""
    bus, dev = FakeBus(), FakeDevice()
    bus.register(0x10, 4, dev)
    run = drill_guest(source.replace("MNEMONIC", mnemonic), io=bus, **kw)
    return run, [w[2] for w in dev.writes]


def _declined(run) -> str:
    return next((e.data.get("rescue_declined", "") for e in run.events if e.type == "host-emulation-failure"), "")


def _assert_ran(run, values, expected, drilled):
    where = f"on {host_label()}"
    assert run.stop.reason == "halt", f"{run.stop} {_declined(run)} {where}"
    assert run.drilled == drilled, where
    assert set(drilled) <= set(run.rescued()), f"rescued {run.rescued()} {where}"
    assert values == expected, f"{[hex(v) for v in values]} {where}"


def test_fldcw_reaches_the_guest_x87_state():
    run, values = _drill(SSE_ON + """
        fninit
        mov word ptr [0x5002], 0x0e7f   # RC chop, PC 53-bit, all exceptions masked
        hlt
        fldcw word ptr [0x5002]
        fxsave [0x6200]
        movzx eax, word ptr [0x6200]
    """ + OUT + """
        fnstcw word ptr [0x5004]
        movzx eax, word ptr [0x5004]
    """ + OUT + "hlt")
    _assert_ran(run, values, [0x0E7F, 0x0E7F], ["fldcw"])


def test_fldcw_when_x87_is_in_its_init_state():
    """The issue-8 case, made deterministic: x87 in init state (XSTATE_BV bit 0 clear, put there by a
    rescued xrstor with XSTATE_BV = SSE only), then a rescued fldcw must still reach the guest."""
    run, values = _drill(SSE_ON + """
        mov dword ptr [0x7000 + 24], 0x1f80
        mov qword ptr [0x7000 + 512], 2  # XSTATE_BV: SSE only, x87 in its init state
        mov rsi, 0x7000
        mov eax, 3
        xor edx, edx
        hlt
        xrstor [rsi]
        hlt
        xrstor [rsi]
        mov rsi, 0x7400
        mov eax, 3
        xor edx, edx
        hlt
        xsave [rsi]
        mov eax, dword ptr [0x7400 + 512]
        and eax, 1
    """ + OUT + """
        mov word ptr [0x5002], 0x027f
        hlt
        fldcw word ptr [0x5002]
        fxsave [0x6200]
        movzx eax, word ptr [0x6200]
    """ + OUT + "hlt")
    # 0: the precondition (x87 recorded as init), then the control word the guest reads back.
    _assert_ran(run, values, [0, 0x027F], ["xrstor", "xrstor", "xsave", "fldcw"])


def test_fninit_resets_control_status_and_tag_words():
    run, values = _drill(SSE_ON + SET_X87.format(fcw="0x027f", fsw="0x4100", xmm0="0") + """
        mov byte ptr [0x6004], 0xff
        fxrstor [0x6000]
        hlt
        fninit
        fxsave [0x6200]
        movzx eax, word ptr [0x6200]
    """ + OUT + """
        movzx eax, word ptr [0x6202]
    """ + OUT + """
        movzx eax, byte ptr [0x6204]
    """ + OUT + "hlt")
    _assert_ran(run, values, [0x037F, 0, 0], ["fninit"])


def test_fnstcw_and_fnstsw_store_what_the_guest_loaded():
    run, values = _drill(SSE_ON + SET_X87.format(fcw="0x037b", fsw="0x4500", xmm0="0") + """
        hlt
        fnstcw word ptr [0x5000]
        movzx eax, word ptr [0x5000]
    """ + OUT + """
        mov eax, 0xdead0000
        hlt
        fnstsw ax                       # writes AX only
    """ + OUT + """
        hlt
        fnstsw word ptr [0x5002]
        movzx eax, word ptr [0x5002]
    """ + OUT + "hlt")
    _assert_ran(run, values, [0x037B, 0xDEAD4500, 0x4500], ["fnstcw", "fnstsw", "fnstsw"])


def test_wait_goes_on_without_a_pending_exception():
    run, values = _drill(SSE_ON + """
        fninit
        hlt
        wait
        mov eax, 1
    """ + OUT + "hlt")
    _assert_ran(run, values, [1], ["wait"])


def test_wait_with_a_pending_unmasked_exception_is_not_rescued():
    """#MF is due (FSW.ES with IM unmasked): the rescuer cannot deliver it, so the run stops as a
    host-emulation-failure naming why, instead of skipping the exception."""
    run, values = _drill(SSE_ON + SET_X87.format(fcw="0x037e", fsw="0x0081", xmm0="0") + """
        hlt
        wait
        mov eax, 1
    """ + OUT + "hlt")
    assert run.stop.reason == "host-emulation-failure", f"{run.stop} on {host_label()}"
    assert _declined(run) == "wait: pending x87 exception"
    assert values == [] and run.drilled == ["wait"]


def test_int3_is_a_trap_delivered_to_the_guest_handler():
    run, values = _drill(IDT64 + """
        hlt
        int3
    after:
        mov eax, 2
    """ + OUT + """
        hlt
    handler:
        mov rax, [rsp]                  # the pushed RIP: the instruction after int3
        lea rbx, [rip + after]
        cmp rax, rbx
        sete al
        movzx eax, al
    """ + OUT + """
        iretq
    idtr: .word 0xfff
          .quad 0x3000""")
    _assert_ran(run, values, [1, 2], ["int3"])


@pytest.mark.parametrize("payload", [True, False], ids=["synced-registers", "fetched-ioctl"])
def test_stac_and_clac_set_and_clear_rflags_ac(payload):
    flag_ac = "    pushfq\n    pop rax\n    shr eax, 18\n    and eax, 1\n"
    run, values = _drill("hlt\nstac\n" + flag_ac + OUT + "hlt\nclac\n" + flag_ac + OUT + "hlt", payload=payload)
    _assert_ran(run, values, [1, 0], ["stac", "clac"])


def test_popcnt_register_memory_and_flags():
    run, values = _drill("""
        mov rdi, 0xf0f0000000000001
        hlt
        popcnt rax, rdi
    """ + OUT + """
        mov dword ptr [0x5000], 7
        mov rbx, -1
        hlt
        popcnt ebx, dword ptr [0x5000]  # a 32-bit write zero-extends
        mov rax, rbx
        shr rax, 32
    """ + OUT + """
        mov eax, ebx
    """ + OUT + """
        mov rcx, 0xffffffffffff0000
        mov si, 0x00ff
        hlt
        popcnt cx, si                   # a 16-bit write keeps the upper bits
        mov eax, ecx
    """ + OUT + """
        xor edi, edi
        stc
        hlt
        popcnt rax, rdi
        pushfq
        pop rax
        and eax, 0x8d5                  # OF SF ZF AF PF CF
    """ + OUT + "hlt")
    _assert_ran(run, values, [9, 0, 3, 0xFFFF0008, 0x40], ["popcnt"] * 4)


def test_rdtscp_returns_the_guest_tsc_and_tsc_aux():
    run, values = _drill("""
        mov ecx, 0xc0000103             # IA32_TSC_AUX
        mov eax, 5
        xor edx, edx
        wrmsr
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r8, rax
        hlt
        rdtscp
        shl rdx, 32
        or rax, rdx
        mov r9, rax
        mov r10, rcx
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r11, rax
        mov eax, r10d
    """ + OUT + """
        xor eax, eax
        cmp r8, r9
        setbe al
    """ + OUT + """
        xor eax, eax
        cmp r9, r11
        setbe al
    """ + OUT + "hlt")
    _assert_ran(run, values, [5, 1, 1], ["rdtscp"])


XSETBV_THEN_CPUID = """
        xor ecx, ecx
        mov eax, VALUE
        xor edx, edx
        hlt
        xsetbv
        mov eax, 0xd
        xor ecx, ecx
        cpuid
        mov eax, ebx
""" + OUT


def test_xsetbv_changes_what_cpuid_reports_and_xgetbv_reads_it():
    """CPUID.(EAX=0xD,ECX=0).EBX is the XSAVE size for the features enabled in XCR0: KVM computes it
    from the XCR0 the rescue wrote, so the guest sees the write through an independent path."""
    run, values = _drill("""
        mov rax, cr4
        or eax, 0x40600
        mov cr4, rax
        mov eax, 0xd
        xor ecx, ecx
        cpuid
    """ + OUT + """
        mov r12d, eax
        and r12d, 7                     # x87 | SSE | AVX where supported
        mov r13d, 1
    """ + XSETBV_THEN_CPUID.replace("VALUE", "r13d") + XSETBV_THEN_CPUID.replace("VALUE", "r12d") + """
        xor ecx, ecx
        hlt
        xgetbv
    """ + OUT + "hlt")
    supported = values[0] if values else 0
    full = 7 if supported & 4 else 3
    expected_size = 832 if full == 7 else 576   # legacy 512 + header 64 (+ AVX 256 at offset 576)
    _assert_ran(run, values, [supported, 576, expected_size, full], ["xsetbv", "xsetbv", "xgetbv"])


@pytest.mark.parametrize("mnemonic", ["xsave", "xsaveopt", "xsave64"])
def test_xsave_stores_x87_and_sse_state_and_header(mnemonic):
    run, values = _drill(SSE_ON + SET_X87.format(fcw="0x027f", fsw="0", xmm0="0x11223344") + """
        mov dword ptr [0x7400 + 160], 0xaaaaaaaa
        mov qword ptr [0x7400 + 512], 2
        mov rsi, 0x7000
        mov eax, 3
        xor edx, edx
        hlt
        MNEMONIC [rsi]
        movzx eax, word ptr [0x7000]
    """ + OUT + """
        mov eax, dword ptr [0x7000 + 160]
    """ + OUT + """
        mov eax, dword ptr [0x7000 + 512]
    """ + OUT + """
        mov eax, dword ptr [0x7000 + 24]
    """ + OUT + """
        mov rsi, 0x7400
        mov eax, 1                      # x87 only: the XMM area and XSTATE_BV bit 1 stay as they were
        xor edx, edx
        hlt
        MNEMONIC [rsi]
        mov eax, dword ptr [0x7400 + 160]
    """ + OUT + """
        mov eax, dword ptr [0x7400 + 512]
    """ + OUT + "hlt", mnemonic)
    _assert_ran(run, values, [0x027F, 0x11223344, 3, 0x1F80, 0xAAAAAAAA, 3], [mnemonic] * 2)


@pytest.mark.parametrize("mnemonic", ["xrstor", "xrstor64"])
def test_xrstor_loads_present_components_and_inits_absent_ones(mnemonic):
    run, values = _drill(SSE_ON + """
        mov word ptr [0x7000], 0x017f
        mov dword ptr [0x7000 + 24], 0x1f80
        mov dword ptr [0x7000 + 176], 0x55667788   # XMM1 low dword
        mov qword ptr [0x7000 + 512], 3
    """ + RESTORE_THEN_FXSAVE + """
        movzx eax, word ptr [0x6000]
    """ + OUT + """
        mov eax, dword ptr [0x6000 + 176]
    """ + OUT + """
        mov qword ptr [0x7000 + 512], 1  # SSE absent: XMM1 back to its init state (zero)
        mov eax, 3                      # RFBM (OUT clobbered eax and edx)
        xor edx, edx
        hlt
        MNEMONIC [rsi]
        fxsave [0x6000]
        mov eax, dword ptr [0x6000 + 176]
    """ + OUT + """
        mov qword ptr [0x7000 + 512], 2  # x87 absent: FCW back to 0x37f
        mov eax, 3
        xor edx, edx
        hlt
        MNEMONIC [rsi]
        fxsave [0x6000]
        movzx eax, word ptr [0x6000]
    """ + OUT + "hlt", mnemonic)
    _assert_ran(run, values, [0x017F, 0x55667788, 0, 0x037F], [mnemonic] * 3)


@pytest.mark.parametrize("mnemonic", ["xsavec", "xsaves", "xsavec64"])
def test_compacted_save_writes_xcomp_bv_and_components(mnemonic):
    run, values = _drill(SSE_ON + SET_X87.format(fcw="0x027f", fsw="0", xmm0="0x11223344") + """
        mov rsi, 0x7000
        mov eax, 3
        xor edx, edx
        hlt
        MNEMONIC [rsi]
        movzx eax, word ptr [0x7000]
    """ + OUT + """
        mov eax, dword ptr [0x7000 + 160]
    """ + OUT + """
        mov eax, dword ptr [0x7000 + 512]   # XSTATE_BV
    """ + OUT + """
        mov eax, dword ptr [0x7000 + 520]   # XCOMP_BV low: RFBM
    """ + OUT + """
        mov eax, dword ptr [0x7000 + 524]   # XCOMP_BV high: bit 63, compacted format
    """ + OUT + "hlt", mnemonic)
    _assert_ran(run, values, [0x027F, 0x11223344, 3, 3, 0x80000000], [mnemonic])


@pytest.mark.parametrize("mnemonic", ["xrstors", "xrstor"])
def test_compacted_restore_reaches_the_guest(mnemonic):
    run, values = _drill(SSE_ON + """
        mov word ptr [0x7000], 0x017f
        mov dword ptr [0x7000 + 24], 0x1f80
        mov dword ptr [0x7000 + 160], 0x99aabbcc    # XMM0 low dword
        mov qword ptr [0x7000 + 512], 3
        mov rax, 0x8000000000000003
        mov qword ptr [0x7000 + 520], rax           # XCOMP_BV: compacted, x87 | SSE
    """ + RESTORE_THEN_FXSAVE + """
        movzx eax, word ptr [0x6000]
    """ + OUT + """
        mov eax, dword ptr [0x6000 + 160]
    """ + OUT + "hlt", mnemonic)
    _assert_ran(run, values, [0x017F, 0x99AABBCC], [mnemonic])


def test_a_write_the_host_drops_is_a_host_emulation_failure_not_a_rescue(monkeypatch):
    """Read-back: when KVM_SET_XSAVE does not take (simulated by dropping the write), the rescue is
    declined and the run stops with a host-emulation-failure gap, never goes on with wrong state."""
    from harness.kvm import rescue
    monkeypatch.setattr(rescue.Rescuer, "set_xsave", lambda self, data: None)
    run, values = _drill(SSE_ON + """
        fninit
        mov word ptr [0x5002], 0x027f
        hlt
        fldcw word ptr [0x5002]
        mov eax, 1
    """ + OUT + "hlt")
    assert run.stop.reason == "host-emulation-failure", run.stop
    assert _declined(run).startswith("fldcw: KVM_SET_XSAVE did not take: bytes 0..24 (component 0)")
    assert values == [] and "fldcw" not in run.rescued()
    assert [g["key"] for g in run.gaps("host-emulation-failure")] == ["fldcw"]
