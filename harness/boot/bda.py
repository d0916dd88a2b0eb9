"""The two BIOS Data Area words a BIOS-booted kernel reads before trusting anything else.

Without firmware, guest memory at 0x400 is zero. Kernels written for PC BIOS read the EBDA
segment (0x40E) and the base-memory size in KiB (0x413): Xen's multiboot entry places its
trampoline below the EBDA and, finding both zero, computes an address just below 4 GiB; Linux
and the BSDs search the EBDA for the MP floating pointer. Point both at the reserved area
that every memory map of this harness already describes (layout.EBDA_START).
"""
from __future__ import annotations

from harness import layout
from harness.memory import GuestRam

BDA_ADDR = 0x400
BDA_SIZE = 0x100
BDA_EBDA_SEGMENT = 0x0E      # u16: real-mode segment of the EBDA
BDA_BASE_MEMORY_KIB = 0x13   # u16: conventional memory below the EBDA, in KiB


def write_bda(mem: GuestRam) -> tuple[str, int, int]:
    """Write the EBDA pointer and base-memory size; returns the region for BootPlan.regions."""
    mem.write(BDA_ADDR + BDA_EBDA_SEGMENT, (layout.EBDA_START >> 4).to_bytes(2, "little"))
    mem.write(BDA_ADDR + BDA_BASE_MEMORY_KIB, (layout.LOW_RAM_END // 1024).to_bytes(2, "little"))
    return ("bda", BDA_ADDR, BDA_SIZE)
