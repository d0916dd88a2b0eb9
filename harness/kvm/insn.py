"""Fetch and decode the instruction a vCPU stopped on (for emulation-failure records).

The bytes come from KVM's emulation_failure payload when it has them; otherwise from guest
RAM at CS.base+RIP, translated with KVM_TRANSLATE when paging is on, read bounds-checked
through GuestRam. A guest-controlled RIP never indexes host memory directly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.arch.x86_64 import decode as x86_decode
from harness.arch.x86_64.regs import CR0_PE, CR0_PG, EFER_LMA, MAX_INSN, PAGE_SIZE
from harness.errors import GuestMemoryError

if TYPE_CHECKING:
    from harness.kvm.vcpu import Vcpu
    from harness.memory import GuestRam


class Unmapped(GuestMemoryError):
    """A linear address the guest's page tables do not map."""


def cpu_mode_bits(sregs: Any) -> int:
    """16, 32 or 64: the default operand size of the code segment the vCPU is in."""
    if not sregs.cr0 & CR0_PE:
        return 16
    if sregs.cs.l and sregs.efer & EFER_LMA:
        return 64
    return 32 if sregs.cs.db else 16


class LinearMemory:
    """Guest memory by linear address, as the vCPU sees it now: the one page walk (KVM_TRANSLATE
    when paging is on, 32-bit physical otherwise), page by page, every access bounds-checked by
    GuestRam. Instruction fetches and the rescuer's memory operands both go through it."""

    def __init__(self, vcpu: "Vcpu", ram: "GuestRam", sregs: Any | None = None) -> None:
        self.vcpu, self.ram = vcpu, ram
        self.paging = bool((sregs if sregs is not None else vcpu.get_sregs()).cr0 & CR0_PG)

    def phys(self, linear: int) -> int:
        if not self.paging:
            return linear & 0xFFFF_FFFF
        phys = self.vcpu.translate(linear & 0xFFFF_FFFF_FFFF_FFFF)
        if phys is None:
            raise Unmapped(f"linear {linear:#x} not mapped")
        return phys

    def _pages(self, linear: int, size: int) -> list[tuple[int, int, int]]:
        """(offset into the access, physical address, length) of each page the access touches."""
        out, done = [], 0
        while done < size:
            at = linear + done
            chunk = min(size - done, PAGE_SIZE - (at & (PAGE_SIZE - 1)))
            out.append((done, self.phys(at), chunk))
            done += chunk
        return out

    def read(self, linear: int, size: int) -> bytes:
        return b"".join(self.ram.read(phys, n) for _, phys, n in self._pages(linear, size))

    def write(self, linear: int, data: bytes) -> None:
        for offset, phys, n in self._pages(linear, len(data)):
            self.ram.write(phys, data[offset:offset + n])

    def read_prefix(self, linear: int, size: int) -> tuple[bytes, str]:
        """As many of `size` bytes as are readable (an instruction may straddle the end of RAM or
        of a mapping), and where they came from or why there are none."""
        out = bytearray()
        try:
            first = self.phys(linear)
        except Unmapped as exc:
            return b"", str(exc).replace("not mapped", "is not mapped")
        page_phys = first - (first & (PAGE_SIZE - 1))
        while len(out) < size:
            at = linear + len(out)
            try:
                if out and at & (PAGE_SIZE - 1) == 0:
                    page_phys = self.phys(at)      # the next page may map anywhere
                out += self.ram.read(page_phys + (at & (PAGE_SIZE - 1)), 1)
            except GuestMemoryError:
                break
        return bytes(out), f"guest memory at {first:#x}" if out else f"physical {first:#x} is not RAM"


def fetch(vcpu: "Vcpu", ram: "GuestRam", rip: int, sregs: Any, length: int = MAX_INSN) -> tuple[bytes, str]:
    """Up to `length` bytes at the vCPU's CS:RIP and where they came from (or why none)."""
    return LinearMemory(vcpu, ram, sregs).read_prefix(sregs.cs.base + rip, length)


def decode(code: bytes, bits: int, address: int = 0) -> dict[str, Any]:
    """The first instruction in `code`: mnemonic, operands, size; `mnemonic` '(bad)' when undecodable."""
    return x86_decode.describe(code, bits, address)


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
