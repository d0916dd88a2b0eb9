"""x86 architecture facts: the numbers match the SDM and capstone, and the decoder loads lazily."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.arch.x86_64 import decode, regs

REPO = Path(__file__).resolve().parents[2]


def test_operand_types_are_capstones():
    from capstone import x86_const
    assert (decode.OP_REG, decode.OP_IMM, decode.OP_MEM) == (x86_const.X86_OP_REG, x86_const.X86_OP_IMM,
                                                             x86_const.X86_OP_MEM)


def test_sdm_numbers():
    assert regs.RFLAGS_ARITH == 0x8D5 and regs.RFLAGS_ZF == 0x40 and regs.RFLAGS_AC == 0x40000
    assert regs.CR0_PG == 0x8000_0000 and regs.EFER_LMA == 0x400 and regs.CR4_PAE == 0x20
    assert regs.with_ac(0x2, True) == 0x40002 and regs.with_ac(0x40202, False) == 0x202


def test_describe_and_the_fast_path_encodings():
    assert decode.describe(regs.CLAC, 64)["text"] == "clac"
    assert decode.describe(regs.STAC, 64)["mnemonic"] == "stac"
    assert decode.describe(bytes.fromhex("f30fb8c3"), 64)["text"] == "popcnt eax, ebx"
    assert decode.describe(b"\x0f", 64) == {"mnemonic": "(bad)", "op_str": "", "size": 0, "text": "(bad)",
                                            "bytes": "0f", "bits": 64}


def test_the_vmm_child_loads_no_decoder_until_a_failure():
    code = ("import sys, harness.backends.builtin_vm, harness.kvm.machine, harness.kvm.runloop, harness.kvm.rescue;"
            "print('capstone' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
