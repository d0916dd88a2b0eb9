"""User-space rescues for instructions the host's emulator cannot execute (kvm_pvm's holes).

When KVM_RUN ends in an emulation failure on an instruction we can perform from outside the
guest with the vCPU's state ioctls, we do it, advance RIP and let the guest go on; the run loop
records a rescued-instruction gap. Everything else stays a structured failure.

  clac / stac                  clear / set RFLAGS.AC (SMAP)
  popcnt                       computed here (register or memory source), flags as the SDM says
  rdtscp                       guest TSC and TSC_AUX through KVM_GET_MSRS
  wait fninit fnstsw fnstcw fldcw   x87 control/status words in the KVM_GET/SET_XSAVE legacy area
  int3                         inject #BP (a trap: RIP after the instruction)
  xgetbv / xsetbv              XCR0 through KVM_GET_XCRS / KVM_SET_XCRS
  xsave / xsaveopt (64)        KVM_GET_XSAVE, components copied to guest memory, standard format
  xrstor(s) (64)               guest memory (standard or compacted) copied into KVM_SET_XSAVE
  xsavec / xsaves (64)         KVM_GET_XSAVE -> compacted area (XCR0 components; no IA32_XSS state)
Guest memory goes through KVM_TRANSLATE + GuestRam (bounds-checked) page by page; a fault we
cannot represent (unmapped page, compacted format) is a failed rescue, never a host error.

Every state write is read back through the ioctl KVM loads the guest from (KVM_GET_REGS,
KVM_GET_XSAVE, KVM_GET_XCRS, KVM_GET_VCPU_EVENTS) before the rescue counts: a write the host
silently dropped must end the run as a host-emulation-failure gap, not as a guest that goes on
with state it never had. An XSAVE image holds a component only where its XSTATE_BV bit is set
(otherwise KVM restores the component's init state, e.g. FCW 0x37F), so a write into a component
sets that bit.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from harness.arch.x86_64 import decode as x86_decode
from harness.arch.x86_64.decode import OP_MEM, OP_REG
from harness.arch.x86_64.regs import (CLAC, STAC, MSR_TSC, MSR_TSC_AUX, RFLAGS_ARITH, RFLAGS_ZF, SOFT_EXCEPTIONS, VEC_BP,
                                      with_ac)
from harness.errors import GuestMemoryError
from harness.kvm import ffi as k
from harness.kvm.ffi import ffi
from harness.kvm.insn import LinearMemory
from harness.kvm.msr import read_host_msr
from harness.kvm.system import ioctl

if TYPE_CHECKING:
    from harness.kvm.msr import MsrPolicy
    from harness.kvm.vcpu import Vcpu
    from harness.memory import GuestRam

LEGACY_SIZE, HEADER_SIZE = 512, 64
XSTATE_BV = slice(LEGACY_SIZE, LEGACY_SIZE + 8)
# Regions of the legacy area and the XSTATE_BV bit that owns each (SDM 13.4.1): x87 is bit 0;
# MXCSR (with its mask) and XMM0-15 are saved and restored with SSE state, bit 1.
LEGACY_REGIONS = ((0, 24, 0), (24, 32, 1), (32, 160, 0), (160, 416, 1))
MASK64 = (1 << 64) - 1


class RescueFailed(Exception):
    """The instruction is one we handle, but not in this form / with this operand."""


class Rescuer:
    def __init__(self, vcpu: "Vcpu", ram: "GuestRam", cpuid_entries: list[dict[str, int]],
                 msr: "MsrPolicy | None" = None) -> None:
        self.vcpu, self.ram, self.msr = vcpu, ram, msr
        # Standard-format XSAVE layout: component i at CPUID.(0xD, i).EBX, size EAX (i >= 2).
        self.components = {e["index"]: (e["ebx"], e["eax"]) for e in cpuid_entries
                           if e["function"] == 0xD and e["index"] >= 2 and e["eax"]}
        # Compacted format: CPUID.(0xD, i).ECX bit 1 asks for 64-byte alignment of component i.
        self.aligned = {e["index"] for e in cpuid_entries if e["function"] == 0xD and e["ecx"] & 2}
        self.declined = ""   # why the last rescue attempt gave up (shown in the failure record)
        self.memory: LinearMemory | None = None   # guest memory as this rescue's vCPU state maps it

    def rescue(self, code: bytes, rip: int, bits: int) -> str | None:
        """Perform the instruction at RIP if we can; its mnemonic when done, None otherwise."""
        insn = x86_decode.first_instruction(code, bits, rip, detail=True)   # operands: memory addresses
        if insn is None or insn.mnemonic not in RESCUES:
            return None
        try:
            regs = self.vcpu.get_regs()
            self.memory = LinearMemory(self.vcpu, self.ram)
            update = RESCUES[insn.mnemonic].handler(self, insn, regs, bits) or {}
            # Every rescued instruction completes (int3 is a trap: RIP after it, then #BP is delivered).
            self.set_regs_verified({**update, "rip": rip + insn.size})
            if insn.mnemonic == "int3":
                self.inject_verified(VEC_BP)
        except (RescueFailed, GuestMemoryError, OSError) as exc:
            self.declined = f"{insn.mnemonic}: {exc}"
            return None
        return insn.mnemonic

    # -- instructions ---------------------------------------------------------------------------
    # Each handler returns the register update it wants (RIP is added by `rescue`), or None.
    def _int3(self, insn: Any, regs: dict[str, int], bits: int) -> None:
        return None   # the #BP is injected by `rescue`, after the RIP write (KVM_SET_REGS drops pending exceptions)

    def _clac(self, insn: Any, regs: dict[str, int], bits: int) -> dict[str, int]:
        return {"rflags": with_ac(regs["rflags"], False)}

    def _stac(self, insn: Any, regs: dict[str, int], bits: int) -> dict[str, int]:
        return {"rflags": with_ac(regs["rflags"], True)}

    def _popcnt(self, insn: Any, regs: dict[str, int], bits: int) -> dict[str, int]:
        dst, src = insn.operands
        if dst.type != OP_REG:
            raise RescueFailed("popcnt destination is not a register")
        width = src.size
        if src.type == OP_REG:
            value = _reg_any(regs, insn.reg_name(src.reg))
        elif src.type == OP_MEM:
            value = int.from_bytes(self.read_linear(self.memory_operand(insn, regs, bits), width), "little")
        else:
            raise RescueFailed("popcnt source")
        count = bin(value & ((1 << (8 * width)) - 1)).count("1")
        name = insn.reg_name(dst.reg)
        update = _reg_write(regs, name, count)
        # popcnt clears OF SF ZF AF CF PF, then sets ZF when the source was zero.
        update["rflags"] = (regs["rflags"] & ~RFLAGS_ARITH) | (RFLAGS_ZF if count == 0 else 0)
        return update

    def _rdtscp(self, insn: Any, regs: dict[str, int], bits: int) -> dict[str, int]:
        tsc = self.get_msr(MSR_TSC)
        aux = self.get_msr(MSR_TSC_AUX)
        return {"rax": tsc & 0xFFFFFFFF, "rdx": tsc >> 32 & 0xFFFFFFFF, "rcx": aux & 0xFFFFFFFF}

    # x87 control/status through the legacy area of KVM_GET/SET_XSAVE: FCW at 0, FSW at 2, abridged FTW at 4.
    def _wait(self, insn: Any, regs: dict[str, int], bits: int) -> None:
        state = self.get_xsave()
        if int.from_bytes(state[2:4], "little") & 0x80:   # FSW.ES: a pending x87 exception (#MF) is due
            raise RescueFailed("pending x87 exception")

    def _fninit(self, insn: Any, regs: dict[str, int], bits: int) -> None:
        old = self.get_xsave()
        state = bytearray(old)
        state[0:24] = _init_state(0, 24)
        self.put_xsave(old, state)

    def _fnstsw(self, insn: Any, regs: dict[str, int], bits: int) -> dict[str, int] | None:
        return self._store_x87_word(insn, regs, bits, 2)

    def _fnstcw(self, insn: Any, regs: dict[str, int], bits: int) -> dict[str, int] | None:
        return self._store_x87_word(insn, regs, bits, 0)

    def _store_x87_word(self, insn: Any, regs: dict[str, int], bits: int, offset: int) -> dict[str, int] | None:
        word = self.get_xsave()[offset:offset + 2]
        op = insn.operands[0]
        if op.type == OP_REG:
            return _reg_write(regs, insn.reg_name(op.reg), int.from_bytes(word, "little"))
        self.write_linear(self.memory_operand(insn, regs, bits), word)
        return None

    def _fldcw(self, insn: Any, regs: dict[str, int], bits: int) -> None:
        word = self.read_linear(self.memory_operand(insn, regs, bits), 2)
        old = self.get_xsave()
        state = bytearray(old)
        state[0:2] = word
        self.put_xsave(old, state)

    def _xgetbv(self, insn: Any, regs: dict[str, int], bits: int) -> dict[str, int]:
        if regs["rcx"] & 0xFFFFFFFF != 0:
            raise RescueFailed("only XCR0")
        xcr0 = self.get_xcr0()
        return {"rax": xcr0 & 0xFFFFFFFF, "rdx": xcr0 >> 32}

    def _xsetbv(self, insn: Any, regs: dict[str, int], bits: int) -> None:
        if regs["rcx"] & 0xFFFFFFFF != 0:
            raise RescueFailed("only XCR0")
        value = (regs["rdx"] & 0xFFFFFFFF) << 32 | (regs["rax"] & 0xFFFFFFFF)
        self.vcpu.set_xcr0(value)   # KVM refuses invalid values: no rescue
        if self.get_xcr0() != value:
            raise RescueFailed(f"KVM_SET_XCRS did not take: XCR0 reads back {self.get_xcr0():#x}, wrote {value:#x}")

    def _xsave(self, insn: Any, regs: dict[str, int], bits: int) -> None:
        addr = self.memory_operand(insn, regs, bits)
        rfbm = self.get_xcr0() & ((regs["rdx"] & 0xFFFFFFFF) << 32 | (regs["rax"] & 0xFFFFFFFF))
        state = self.get_xsave()
        for start, size in self.ranges(rfbm):
            self.write_linear(addr + start, state[start:start + size])
        header = self.read_linear(addr + LEGACY_SIZE, 8)
        mem_bv = int.from_bytes(header, "little")
        buf_bv = int.from_bytes(state[LEGACY_SIZE:LEGACY_SIZE + 8], "little")
        self.write_linear(addr + LEGACY_SIZE, ((mem_bv & ~rfbm) | (buf_bv & rfbm)).to_bytes(8, "little"))

    _xsaveopt = _xsave  # may always write what xsaveopt would skip

    def _xsavec(self, insn: Any, regs: dict[str, int], bits: int) -> None:
        """Compacted save: XCOMP_BV = RFBM | bit 63, components packed after the header."""
        addr = self.memory_operand(insn, regs, bits)
        rfbm = self.get_xcr0() & ((regs["rdx"] & 0xFFFFFFFF) << 32 | (regs["rax"] & 0xFFFFFFFF))
        state = self.get_xsave()
        offsets = self.compacted_offsets(rfbm)
        for bit, (start, size) in self.components_in(rfbm):
            dst = start if bit < 2 else offsets[bit]
            self.write_linear(addr + dst, state[start:start + size])
        if rfbm & 0b110:
            self.write_linear(addr + 24, state[24:32])
        buf_bv = int.from_bytes(state[LEGACY_SIZE:LEGACY_SIZE + 8], "little")
        header = (buf_bv & rfbm).to_bytes(8, "little") + (rfbm | 1 << 63).to_bytes(8, "little")
        self.write_linear(addr + LEGACY_SIZE, header)

    _xsaves = _xsavec   # supervisor components (IA32_XSS) are not handled: XCR0 bits only

    def _xrstor(self, insn: Any, regs: dict[str, int], bits: int) -> None:
        addr = self.memory_operand(insn, regs, bits)
        rfbm = self.get_xcr0() & ((regs["rdx"] & 0xFFFFFFFF) << 32 | (regs["rax"] & 0xFFFFFFFF))
        header = self.read_linear(addr + LEGACY_SIZE, 16)
        xstate_bv = int.from_bytes(header[:8], "little")
        xcomp_bv = int.from_bytes(header[8:16], "little")
        compacted = self.compacted_offsets(xcomp_bv) if xcomp_bv >> 63 else None
        old = self.get_xsave()
        state = bytearray(old)
        if rfbm & 0b110:  # MXCSR comes with SSE or AVX state; MXCSR_MASK in memory is ignored, as XRSTOR does
            state[24:28] = self.read_linear(addr + 24, 4)
        for bit, (start, size) in self.components_in(rfbm):
            if xstate_bv >> bit & 1:
                src = start if compacted is None or bit < 2 else compacted.get(bit)
                if src is None:
                    raise RescueFailed(f"component {bit} in XSTATE_BV but not in XCOMP_BV")
                state[start:start + size] = self.read_linear(addr + src, size)
            else:
                state[start:start + size] = _init_state(bit, size)
        buf_bv = int.from_bytes(state[XSTATE_BV], "little")
        state[XSTATE_BV] = ((buf_bv & ~rfbm) | (xstate_bv & rfbm)).to_bytes(8, "little")
        self.put_xsave(old, state)

    def compacted_offsets(self, xcomp_bv: int) -> dict[int, int]:
        """Where each component of XCOMP_BV sits in a compacted-format area (SDM 13.4.3)."""
        offsets, at = {}, LEGACY_SIZE + HEADER_SIZE
        for bit in range(2, 63):
            if not xcomp_bv >> bit & 1:
                continue
            if bit not in self.components:
                raise RescueFailed(f"compacted component {bit} has no CPUID size")
            if bit in self.aligned:
                at = (at + 63) & ~63
            offsets[bit] = at
            at += self.components[bit][1]
        return offsets

    def _xrstors(self, insn: Any, regs: dict[str, int], bits: int) -> None:
        self._xrstor(insn, regs, bits)   # same compacted-format load, XCR0 components only

    # -- state ---------------------------------------------------------------------------------
    def get_xcr0(self) -> int:
        return self.vcpu.get_xcr0()

    def get_xsave(self) -> bytes:
        buf = ffi.new("struct kvm_xsave *")
        ioctl(self.vcpu.fd, k.KVM_GET_XSAVE, buf, what="KVM_GET_XSAVE")
        return bytes(ffi.buffer(buf))

    def set_xsave(self, data: bytes) -> None:
        buf = ffi.new("struct kvm_xsave *")
        ffi.memmove(buf, data[:ffi.sizeof(buf[0])], min(len(data), ffi.sizeof(buf[0])))
        ioctl(self.vcpu.fd, k.KVM_SET_XSAVE, buf, what="KVM_SET_XSAVE")

    def put_xsave(self, old: bytes, new: bytearray) -> None:
        """Write `new` (edited from `old`, a KVM_GET_XSAVE image) so that the guest sees every edit.

        A component whose bytes changed gets its XSTATE_BV bit: with the bit clear, KVM (like XRSTOR)
        loads the component's init state instead of the bytes. Then the image is read back and every
        changed range compared: what did not take is a failed rescue."""
        changed = self.changed_ranges(old, new)
        bv = int.from_bytes(new[XSTATE_BV], "little")
        for _, _, bit in changed:
            bv |= 1 << bit
        new[XSTATE_BV] = bv.to_bytes(8, "little")
        self.set_xsave(bytes(new))
        back = self.get_xsave()
        for start, end, bit in changed:
            if back[start:end] != new[start:end]:
                raise RescueFailed(f"KVM_SET_XSAVE did not take: bytes {start}..{end} (component {bit}) read back "
                                   f"{back[start:end][:8].hex()}, wrote {bytes(new[start:end][:8]).hex()}")

    def changed_ranges(self, old: bytes, new: bytes | bytearray) -> list[tuple[int, int, int]]:
        """(start, end, XSTATE_BV bit) of every component region that differs between two images."""
        regions = list(LEGACY_REGIONS) + [(off, off + size, bit) for bit, (off, size) in self.components.items()]
        return [(start, end, bit) for start, end, bit in regions if old[start:end] != new[start:end]]

    def set_regs_verified(self, update: dict[str, int]) -> None:
        self.vcpu.set_regs(update)
        back = self.vcpu.get_regs()
        wrong = [f"{name}={back[name]:#x} (wrote {value & MASK64:#x})" for name, value in update.items()
                 if back[name] != value & MASK64]
        if wrong:
            raise RescueFailed("KVM_SET_REGS did not take: " + ", ".join(wrong))

    def inject_verified(self, vector: int) -> None:
        self.vcpu.inject_exception(vector)
        events = self.vcpu.get_events()
        # KVM_GET_VCPU_EVENTS reports a queued soft exception (#BP, #OF) with injected=0 (it would be
        # re-raised by re-executing its instruction after a migration): for those the vector is all it shows.
        queued = events.exception.injected or events.exception.pending or vector in SOFT_EXCEPTIONS
        if not queued or events.exception.nr != vector:
            raise RescueFailed(f"KVM_SET_VCPU_EVENTS did not queue exception {vector}")

    def get_msr(self, index: int) -> int:
        """The MSR as the guest's RDMSR sees it (the policy holds MSRs KVM refused), else KVM's."""
        value = self.msr.guest_value(self.vcpu, index) if self.msr else read_host_msr(self.vcpu, index)
        if value is None:
            raise RescueFailed(f"KVM_GET_MSRS could not read MSR {index:#x}")
        return value

    def components_in(self, rfbm: int) -> list[tuple[int, tuple[int, int]]]:
        out: list[tuple[int, tuple[int, int]]] = []
        if rfbm & 1:
            out.append((0, (0, 24)))
            out.append((0, (32, 128)))      # FCW..FDP, then ST0-7 (MXCSR at 24 belongs to SSE/AVX)
        if rfbm & 2:
            out.append((1, (160, 256)))     # XMM0-15
        for bit, (offset, size) in sorted(self.components.items()):
            if rfbm >> bit & 1:
                if offset + size > 4096:
                    raise RescueFailed(f"component {bit} beyond the 4 KiB kvm_xsave")
                out.append((bit, (offset, size)))
        return out

    def ranges(self, rfbm: int) -> list[tuple[int, int]]:
        out = [rng for _, rng in self.components_in(rfbm)]
        if rfbm & 0b110:
            out.append((24, 8))
        return out

    # -- guest memory ----------------------------------------------------------------------------
    def memory_operand(self, insn: Any, regs: dict[str, int], bits: int) -> int:
        mems = [op for op in insn.operands if op.type == OP_MEM]
        if len(mems) != 1:
            raise RescueFailed("no memory operand")
        mem = mems[0].mem
        addr = mem.disp
        if mem.base != 0:
            name = insn.reg_name(mem.base)
            addr += insn.address + insn.size if name == "rip" else _reg(regs, name)
        if mem.index != 0:
            addr += _reg(regs, insn.reg_name(mem.index)) * mem.scale
        if mem.segment != 0:
            seg = insn.reg_name(mem.segment)
            if seg in ("fs", "gs"):
                addr += getattr(self.vcpu.get_sregs(), seg).base
        mask = (1 << 64) - 1 if bits == 64 else 0xFFFFFFFF
        return addr & mask

    def read_linear(self, linear: int, size: int) -> bytes:
        return self.memory.read(linear, size)

    def write_linear(self, linear: int, data: bytes) -> None:
        self.memory.write(linear, data)


_GPR64 = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"} | {f"r{i}" for i in range(8, 16)}
_GPR32 = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi", "esp": "rsp",
          "ebp": "rbp", **{f"r{i}d": f"r{i}" for i in range(8, 16)}}


def _reg(regs: dict[str, int], name: str) -> int:
    if name in _GPR64:
        return regs[name]
    if name in _GPR32:
        return regs[_GPR32[name]] & 0xFFFFFFFF
    raise RescueFailed(f"address register {name}")


_GPR16 = {name[1:]: name for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp")}
_GPR16.update({f"r{i}w": f"r{i}" for i in range(8, 16)})


def _reg_any(regs: dict[str, int], name: str) -> int:
    if name in _GPR16:
        return regs[_GPR16[name]] & 0xFFFF
    return _reg(regs, name)


def _reg_write(regs: dict[str, int], name: str, value: int) -> dict[str, int]:
    """The register update for writing `value` to `name` with x86 width rules (32-bit writes zero-extend)."""
    if name in _GPR64:
        return {name: value}
    if name in _GPR32:
        return {_GPR32[name]: value & 0xFFFFFFFF}
    if name in _GPR16:
        full = _GPR16[name]
        return {full: (regs[full] & ~0xFFFF) | (value & 0xFFFF)}
    raise RescueFailed(f"destination register {name}")


def _init_state(bit: int, size: int) -> bytes:
    """XRSTOR's initial configuration of a component (all zero except the x87 control word)."""
    data = bytearray(size)
    if bit == 0 and size == 24:
        data[0:2] = (0x037F).to_bytes(2, "little")   # FCW
    return bytes(data)


class Rescue(NamedTuple):
    handler: Callable[[Rescuer, Any, dict[str, int], int], dict[str, int] | None]
    how: str                     # what the rescue did, for the rescued-instruction gap record


_TO_MEMORY, _FROM_MEMORY = "KVM_GET_XSAVE -> guest memory", "guest memory -> KVM_SET_XSAVE"
_TO_COMPACTED, _FROM_COMPACTED = "KVM_GET_XSAVE -> compacted area", "compacted area -> KVM_SET_XSAVE"
# The one table of rescues: mnemonic -> (handler, how). The run loop rescues clac/stac from the
# synced registers without decoding (FAST_PATH); their "how" is here too.
RESCUES: dict[str, Rescue] = {
    "clac": Rescue(Rescuer._clac, "RFLAGS.AC cleared in the synced registers"),
    "stac": Rescue(Rescuer._stac, "RFLAGS.AC set in the synced registers"),
    "popcnt": Rescue(Rescuer._popcnt, "computed in user space"),
    "rdtscp": Rescue(Rescuer._rdtscp, "TSC and TSC_AUX via KVM_GET_MSRS"),
    "wait": Rescue(Rescuer._wait, "no x87 exception pending: nothing to do"),
    "fninit": Rescue(Rescuer._fninit, "x87 state reset via KVM_SET_XSAVE"),
    "fnstsw": Rescue(Rescuer._fnstsw, "FSW from KVM_GET_XSAVE"),
    "fnstcw": Rescue(Rescuer._fnstcw, "FCW from KVM_GET_XSAVE"),
    "fldcw": Rescue(Rescuer._fldcw, "FCW into KVM_SET_XSAVE"),
    "int3": Rescue(Rescuer._int3, "injected #BP via KVM_SET_VCPU_EVENTS"),
    "xgetbv": Rescue(Rescuer._xgetbv, "XCR0 via KVM_GET_XCRS"),
    "xsetbv": Rescue(Rescuer._xsetbv, "KVM_SET_XCRS"),
    "xsave": Rescue(Rescuer._xsave, _TO_MEMORY), "xsave64": Rescue(Rescuer._xsave, _TO_MEMORY),
    "xsaveopt": Rescue(Rescuer._xsaveopt, _TO_MEMORY), "xsaveopt64": Rescue(Rescuer._xsaveopt, _TO_MEMORY),
    "xrstor": Rescue(Rescuer._xrstor, _FROM_MEMORY), "xrstor64": Rescue(Rescuer._xrstor, _FROM_MEMORY),
    "xsavec": Rescue(Rescuer._xsavec, _TO_COMPACTED), "xsavec64": Rescue(Rescuer._xsavec, _TO_COMPACTED),
    "xsaves": Rescue(Rescuer._xsaves, _TO_COMPACTED), "xsaves64": Rescue(Rescuer._xsaves, _TO_COMPACTED),
    "xrstors": Rescue(Rescuer._xrstors, _FROM_COMPACTED), "xrstors64": Rescue(Rescuer._xrstors, _FROM_COMPACTED),
}
RESCUABLE = tuple(RESCUES)
FAST_PATH = {CLAC: "clac", STAC: "stac"}   # raw bytes -> mnemonic, served from the synced registers
