"""The x86-64 register file as gdb sees it: target description XML and register read/write.

Register numbers follow gdb's amd64 layout (features org.gnu.gdb.i386.core, .sse, .segments),
then a harness feature with the control registers and EFER so `info registers cr3` works. x87
and SSE state is not fetched from KVM: those registers are reported unavailable ('x' bytes),
which gdb shows as <unavailable>, rather than as made-up zeros.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.kvm.vcpu import Vcpu


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    type: str
    feature: str
    source: str          # "gpr" (kvm_regs), "seg" (selector), "base" (segment base), "sreg", or "none"
    field: str = ""


CORE, SSE, SEGMENTS, SYS = "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments", \
    "org.harness.x86.sys"
_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp") + tuple(f"r{i}" for i in range(8, 16))
REGISTERS: tuple[Reg, ...] = (
    tuple(Reg(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64", CORE, "gpr", n) for n in _GPRS)
    + (Reg("rip", 64, "code_ptr", CORE, "gpr", "rip"), Reg("eflags", 32, "int32", CORE, "gpr", "rflags"))
    + tuple(Reg(s, 32, "int32", CORE, "seg", s) for s in ("cs", "ss", "ds", "es", "fs", "gs"))
    + tuple(Reg(f"st{i}", 80, "i387_ext", CORE, "none") for i in range(8))
    + tuple(Reg(n, 32, "int", CORE, "none") for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg",
                                                     "fooff", "fop"))
    + tuple(Reg(f"xmm{i}", 128, "vec128", SSE, "none") for i in range(16))
    + (Reg("mxcsr", 32, "int", SSE, "none"),)
    + (Reg("fs_base", 64, "int", SEGMENTS, "base", "fs"), Reg("gs_base", 64, "int", SEGMENTS, "base", "gs"))
    + tuple(Reg(n, 64, "int64", SYS, "sreg", n) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"))
)

_TYPES = """  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <union id="vec128"><field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>\
<field name="v16_int8" type="v16i8"/><field name="uint128" type="uint128"/></union>
"""


def target_xml() -> str:
    parts = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>",
             "  <architecture>i386:x86-64</architecture>"]
    for feature in (CORE, SSE, SEGMENTS, SYS):
        parts.append(f'  <feature name="{feature}">')
        if feature == SSE:
            parts.append(_TYPES.rstrip("\n"))
        for num, reg in enumerate(REGISTERS):
            if reg.feature == feature:
                parts.append(f'    <reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" regnum="{num}"/>')
        parts.append("  </feature>")
    parts.append("</target>")
    return "\n".join(parts) + "\n"


def _le(value: int, bits: int) -> str:
    return (value & ((1 << bits) - 1)).to_bytes(bits // 8, "little").hex()


def read_all(vcpu: "Vcpu") -> str:
    """The 'g' packet payload."""
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    return "".join(_read(reg, regs, sregs) for reg in REGISTERS)


def read_one(vcpu: "Vcpu", num: int) -> str | None:
    if not 0 <= num < len(REGISTERS):
        return None
    return _read(REGISTERS[num], vcpu.get_regs(), vcpu.get_sregs())


def _read(reg: Reg, regs: dict[str, int], sregs: object) -> str:
    if reg.source == "gpr":
        return _le(regs[reg.field], reg.bits)
    if reg.source == "seg":
        return _le(getattr(sregs, reg.field).selector, reg.bits)
    if reg.source == "base":
        return _le(getattr(sregs, reg.field).base, reg.bits)
    if reg.source == "sreg":
        return _le(getattr(sregs, reg.field), reg.bits)
    return "x" * (reg.bits // 4)


def write_one(vcpu: "Vcpu", num: int, hex_value: str) -> bool:
    """'P n=v': general registers, RIP, EFLAGS, segment bases, control registers. False: refused."""
    if not 0 <= num < len(REGISTERS):
        return False
    reg = REGISTERS[num]
    try:
        raw = bytes.fromhex(hex_value)
    except ValueError:
        return False
    if len(raw) != reg.bits // 8:
        return False
    value = int.from_bytes(raw, "little")
    if reg.source == "gpr":
        vcpu.set_regs({reg.field: value})
        return True
    if reg.source in ("base", "sreg"):
        sregs = vcpu.get_sregs()
        if reg.source == "base":
            getattr(sregs, reg.field).base = value
        else:
            setattr(sregs, reg.field, value)
        vcpu.set_sregs(sregs)
        return True
    return False      # a selector alone (without its descriptor) or state we do not fetch


def write_all(vcpu: "Vcpu", payload: str) -> bool:
    """'G': the general registers, RIP and EFLAGS from a full register block (the rest is ignored)."""
    at, values = 0, {}
    for reg in REGISTERS:
        width = reg.bits // 4
        chunk = payload[at:at + width]
        at += width
        if reg.source == "gpr" and len(chunk) == width and "x" not in chunk:
            values[reg.field] = int.from_bytes(bytes.fromhex(chunk), "little")
    if not values:
        return False
    vcpu.set_regs(values)
    return True
