"""x86 architectural bits and numbers (Intel SDM vol. 3 / AMD APM vol. 2), one place for all.

The entry-state builder (harness.boot.entry), the run loop, the instruction fetcher and the
rescuer (harness.kvm) use these names; nothing else spells a control-register bit or an MSR
index as a number.
"""
from __future__ import annotations

# CR0 (SDM 2.5)
CR0_PE = 1 << 0          # protected mode
CR0_MP = 1 << 1
CR0_ET = 1 << 4          # extension type: reads as 1 on every CPU since the 486
CR0_NE = 1 << 5          # native x87 error reporting
CR0_WP = 1 << 16
CR0_PG = 1 << 31         # paging

# CR4
CR4_PAE = 1 << 5
CR4_OSXSAVE = 1 << 18

# EFER (MSR 0xC0000080)
EFER_SCE = 1 << 0
EFER_LME = 1 << 8        # long mode enable
EFER_LMA = 1 << 10       # long mode active
EFER_NXE = 1 << 11

# RFLAGS
RFLAGS_CF, RFLAGS_PF, RFLAGS_AF, RFLAGS_ZF = 1 << 0, 1 << 2, 1 << 4, 1 << 6
RFLAGS_SF, RFLAGS_OF = 1 << 7, 1 << 11
RFLAGS_FIXED = 1 << 1    # bit 1 always reads 1
RFLAGS_AC = 1 << 18      # alignment check / SMAP override (clac, stac)
RFLAGS_ARITH = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF

# Exception vectors
VEC_BP, VEC_OF, VEC_UD, VEC_GP, VEC_PF = 3, 4, 6, 13, 14
SOFT_EXCEPTIONS = (VEC_BP, VEC_OF)   # raised by int3 / into: traps, RIP after the instruction

# MSR indices
MSR_TSC = 0x10
MSR_MTRRCAP = 0xFE
MSR_MTRR_FIRST, MSR_MTRR_LAST = 0x200, 0x2FF   # variable/fixed ranges, PAT (0x277), MTRRdefType (0x2FF)
MSR_PAT = 0x277
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_EFER = 0xC0000080
MSR_TSC_AUX = 0xC0000103

# Instruction encodings the run loop recognises from raw bytes, without a decoder
CLAC = b"\x0f\x01\xca"
STAC = b"\x0f\x01\xcb"
MAX_INSN = 15            # the longest x86 instruction, in bytes

# Paging
PAGE_SIZE = 0x1000


def with_ac(rflags: int, on: bool) -> int:
    """RFLAGS with AC set (stac) or cleared (clac)."""
    return rflags | RFLAGS_AC if on else rflags & ~RFLAGS_AC
