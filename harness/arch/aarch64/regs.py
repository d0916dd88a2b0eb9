"""aarch64 registers as the architecture defines them (Arm ARM), without KVM.

KVM's ONE_REG ids wrap the system-register encodings (harness.kvm.arch.aarch64.ffi.sys_reg); the
arm64 loaders start the boot vCPU with PSTATE_EL1H_DAIF (Linux booting.rst: EL1, DAIF masked).
"""
from __future__ import annotations

# PSTATE: M[3:0] = 0b0101 is EL1h (EL1, SP_EL1); D, A, I, F are bits 9..6.
PSTATE_EL1H = 0x5
PSTATE_DAIF = 0xF << 6
PSTATE_EL1H_DAIF = PSTATE_EL1H | PSTATE_DAIF          # 0x3c5

# System registers by (op0, op1, CRn, CRm, op2), the MRS/MSR encoding.
MPIDR_EL1 = (3, 0, 0, 0, 5)
SCTLR_EL1 = (3, 0, 1, 0, 0)
ESR_EL1 = (3, 0, 5, 2, 0)
FAR_EL1 = (3, 0, 6, 0, 0)
VBAR_EL1 = (3, 0, 12, 0, 0)
