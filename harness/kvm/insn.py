"""Fetch and decode the instruction a vCPU stopped on (for emulation-failure records).

The bytes come from KVM's emulation_failure payload when it has them; otherwise from guest
RAM at CS.base+RIP, translated with KVM_TRANSLATE when paging is on, read bounds-checked
through GuestRam. A guest-controlled RIP never indexes host memory directly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import functools

import capstone

from harness.errors import GuestMemoryError

if TYPE_CHECKING:
    from harness.kvm.vcpu import Vcpu
    from harness.memory import GuestRam

MAX_INSN = 15
CR0_PE, CR0_PG = 1, 1 << 31
_MODES = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}


def cpu_mode_bits(sregs: Any) -> int:
    """16, 32 or 64: the default operand size of the code segment the vCPU is in."""
    if not sregs.cr0 & CR0_PE:
        return 16
    if sregs.cs.l and sregs.efer & (1 << 10):  # EFER.LMA
        return 64
    return 32 if sregs.cs.db else 16


def fetch(vcpu: "Vcpu", ram: "GuestRam", rip: int, sregs: Any, length: int = MAX_INSN) -> tuple[bytes, str]:
    """Up to `length` bytes at the vCPU's CS:RIP and where they came from (or why none)."""
    linear = (sregs.cs.base + rip) & 0xFFFF_FFFF_FFFF_FFFF
    if sregs.cr0 & CR0_PG:
        phys = vcpu.translate(linear)
        if phys is None:
            return b"", f"linear {linear:#x} is not mapped"
    else:
        phys = linear & 0xFFFF_FFFF
    out = bytearray()
    # Byte by byte up to the first byte that is not RAM (an instruction may straddle the end of RAM).
    while len(out) < length:
        addr = phys + len(out)
        if sregs.cr0 & CR0_PG and (addr & 0xFFF) == 0 and out:
            nxt = vcpu.translate(linear + len(out))
            if nxt is None:
                break
            addr, phys = nxt, nxt - len(out)
        try:
            out += ram.read(addr, 1)
        except GuestMemoryError:
            break
    return bytes(out), f"guest memory at {phys:#x}" if out else f"physical {phys:#x} is not RAM"


@functools.lru_cache(maxsize=None)
def _decoder(bits: int) -> capstone.Cs:
    """One capstone handle per mode: building one costs more than decoding."""
    return capstone.Cs(capstone.CS_ARCH_X86, _MODES.get(bits, capstone.CS_MODE_64))


def decode(code: bytes, bits: int, address: int = 0) -> dict[str, Any]:
    """The first instruction in `code`: mnemonic, operands, size; `mnemonic` '(bad)' when undecodable."""
    md = _decoder(bits)
    for insn in md.disasm(code, address):
        return {"mnemonic": insn.mnemonic, "op_str": insn.op_str, "size": insn.size,
                "text": f"{insn.mnemonic} {insn.op_str}".strip(), "bytes": code[:insn.size].hex(), "bits": bits}
    return {"mnemonic": "(bad)", "op_str": "", "size": 0, "text": "(bad)", "bytes": code.hex(), "bits": bits}


_LEGACY_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3")
_STRING_IO_OPCODES = frozenset(b"\x6c\x6d\x6e\x6f")   # INSB, INSW/D, OUTSB, OUTSW/D


def is_rep_string_io(code: bytes) -> bool:
    """True for REP INS/OUTS: a REP prefix among the legacy prefixes (and an optional REX), then 6C-6F."""
    rep = False
    for i, byte in enumerate(code[:15]):
        if byte in _LEGACY_PREFIXES:
            rep = rep or byte in (0xF2, 0xF3)
            continue
        if 0x40 <= byte <= 0x4F and i + 1 < len(code):   # REX (64-bit code); harmless to skip elsewhere too
            byte = code[i + 1]
        return rep and byte in _STRING_IO_OPCODES
    return False
