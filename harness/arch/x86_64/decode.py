"""The one x86 instruction decoder (capstone), loaded on first use.

A VMM child imports capstone only when it decodes (its summary decodes each stopped vCPU's instruction,
so the VMM's forkers warm it: harness.backends.vmm_warm);
the run loop, the rescuer and the QEMU log parser all decode through here. The operand type
numbers are capstone's X86_OP_* (checked against capstone by tests/arch/test_x86_64.py).
"""
from __future__ import annotations

import functools
from typing import Any

OP_REG, OP_IMM, OP_MEM = 1, 2, 3     # capstone.x86_const.X86_OP_REG / _IMM / _MEM


@functools.lru_cache(maxsize=None)
def decoder(bits: int, detail: bool = False) -> Any:
    """One capstone handle per (mode, detail): building one costs more than decoding."""
    import capstone
    modes = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}
    md = capstone.Cs(capstone.CS_ARCH_X86, modes.get(bits, capstone.CS_MODE_64))
    md.detail = detail      # operands: what the rescuer needs for memory addresses
    return md


def first_instruction(code: bytes, bits: int, address: int = 0, detail: bool = False) -> Any | None:
    """capstone's CsInsn for the first instruction in `code`, or None when it is not one."""
    return next(decoder(bits, detail).disasm(code, address), None)


def describe(code: bytes, bits: int, address: int = 0) -> dict[str, Any]:
    """The first instruction in `code`: mnemonic, operands, size; `mnemonic` '(bad)' when undecodable."""
    insn = first_instruction(code, bits, address)
    if insn is None:
        return {"mnemonic": "(bad)", "op_str": "", "size": 0, "text": "(bad)", "bytes": code.hex(), "bits": bits}
    return {"mnemonic": insn.mnemonic, "op_str": insn.op_str, "size": insn.size,
            "text": f"{insn.mnemonic} {insn.op_str}".strip(), "bytes": code[:insn.size].hex(), "bits": bits}
