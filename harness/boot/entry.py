"""CPU state at the first guest instruction, and the boot GDT / page tables behind it.

Every loader ends by asking for one of two entry states:
  * protected32 - paging off, CR0.PE, flat 4 GiB segments, TR a 32-bit TSS (PVH spec, Multiboot,
    NetBSD/OpenBSD native entries);
  * long64 - identity-mapped first 4 GiB with 2 MiB pages, EFER.LME|LMA, CS.L=1 (Linux 64-bit boot
    protocol, FreeBSD bhyveload-style entry).
The KVM core turns an EntryState into KVM_SET_SREGS/KVM_SET_REGS one field to one field, so the
segment registers here are exactly `struct kvm_segment` and the GDT entries written to guest memory
are encoded from the very same Segment objects (what the CPU caches == what is in the table).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from harness import layout
from harness.arch.x86_64.regs import CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from harness.memory import GuestRam

# GDT slots (selector = index * 8). Linux's 64-bit protocol wants __BOOT_CS = 0x10 and
# __BOOT_DS = 0x18, so the 64-bit code segment sits at 0x10 and data at 0x18.
NULL_SEL = 0x00
CODE32_SEL = 0x08
CODE64_SEL = 0x10
DATA_SEL = 0x18
TSS_SEL = 0x20           # a 16-byte system descriptor (slots 4 and 5)
GDT_ENTRIES = 6
GDT_LIMIT = GDT_ENTRIES * 8 - 1
TSS_LIMIT = 0x67         # minimal 32-bit TSS, as the PVH spec asks

RFLAGS_RESERVED = 0x2    # bit 1 always set; IF, TF, VM clear

# page-table entry bits
PTE_PRESENT, PTE_RW, PTE_PS = 1 << 0, 1 << 1, 1 << 7
PAGE_2M = 2 * layout.MiB
IDENTITY_MAP_BYTES = layout.PD_COUNT * 512 * PAGE_2M   # 4 GiB

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rflags")
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
MODES = ("protected32", "long64", "real16")


@dataclass
class Segment:
    """One segment register, field for field `struct kvm_segment` (limit is the byte limit)."""
    base: int
    limit: int
    selector: int
    type: int
    present: int
    dpl: int
    db: int
    s: int
    l: int
    g: int
    avl: int = 0
    unusable: int = 0


@dataclass
class EntryState:
    mode: str                      # "protected32" | "long64" | "real16"
    rip: int
    gprs: dict[str, int]           # rax rbx rcx rdx rsi rdi rsp rbp r8-r15 rflags
    cr0: int
    cr3: int
    cr4: int
    efer: int
    gdt_base: int
    gdt_limit: int
    idt_base: int
    idt_limit: int
    segments: dict[str, Segment] = field(default_factory=dict)   # cs ds es fs gs ss tr ldt


# --- segments ------------------------------------------------------------------------------
def code32_segment() -> Segment:
    return Segment(base=0, limit=0xFFFF_FFFF, selector=CODE32_SEL, type=0xB, present=1, dpl=0,
                   db=1, s=1, l=0, g=1)


def code64_segment() -> Segment:
    # In long mode D must be 0 when L is 1; base/limit are ignored by the CPU but kept flat.
    return Segment(base=0, limit=0xFFFF_FFFF, selector=CODE64_SEL, type=0xB, present=1, dpl=0,
                   db=0, s=1, l=1, g=1)


def data_segment() -> Segment:
    return Segment(base=0, limit=0xFFFF_FFFF, selector=DATA_SEL, type=0x3, present=1, dpl=0,
                   db=1, s=1, l=0, g=1)


def tss_segment() -> Segment:
    # Type 0xB = busy 32-bit TSS (the same encoding means busy 64-bit TSS in long mode);
    # VM entry refuses a TR that is not a busy TSS.
    return Segment(base=0, limit=TSS_LIMIT, selector=TSS_SEL, type=0xB, present=1, dpl=0,
                   db=0, s=0, l=0, g=0)


def ldt_segment() -> Segment:
    return Segment(base=0, limit=0, selector=0, type=0x2, present=0, dpl=0, db=0, s=0, l=0, g=0,
                   unusable=1)


def encode_descriptor(seg: Segment) -> int:
    """The low 8 bytes of a GDT descriptor for `seg` (system descriptors add 8 more bytes)."""
    raw_limit = seg.limit >> 12 if seg.g else seg.limit
    if raw_limit > 0xFFFFF:
        raise ValueError(f"segment limit {seg.limit:#x} does not fit a descriptor (g={seg.g})")
    access = (seg.present << 7) | (seg.dpl << 5) | (seg.s << 4) | (seg.type & 0xF)
    flags = (seg.g << 3) | (seg.db << 2) | (seg.l << 1) | seg.avl
    base = seg.base & 0xFFFF_FFFF
    return ((raw_limit & 0xFFFF)
            | (base & 0xFF_FFFF) << 16
            | access << 40
            | ((raw_limit >> 16) & 0xF) << 48
            | flags << 52
            | (base >> 24) << 56)


def gdt_bytes() -> bytes:
    """null, 32-bit code, 64-bit code, data, 16-byte TSS descriptor."""
    entries = [0, encode_descriptor(code32_segment()), encode_descriptor(code64_segment()),
               encode_descriptor(data_segment()), encode_descriptor(tss_segment()),
               tss_segment().base >> 32]   # high half of the system descriptor: base[63:32]
    return b"".join(e.to_bytes(8, "little") for e in entries)


def write_gdt(mem: GuestRam) -> tuple[int, int]:
    """Write the boot GDT at layout.GDT_ADDR; returns (base, size) of what was written."""
    table = gdt_bytes()
    assert len(table) <= layout.GDT_MAX_SIZE
    mem.write(layout.GDT_ADDR, table)
    return layout.GDT_ADDR, len(table)


def write_page_tables(mem: GuestRam) -> list[tuple[str, int, int]]:
    """Identity-map the first 4 GiB with 2 MiB pages (PML4 -> one PDPT -> PD_COUNT PDs).

    The MMIO hole is mapped too: the kernel replaces these tables long before it touches
    devices, and an identity map of the hole lets early code poke the LAPIC if it wants.
    """
    flags = PTE_PRESENT | PTE_RW
    mem.write(layout.PML4_ADDR, (layout.PDPT_ADDR | flags).to_bytes(8, "little") + bytes(4088))
    pdpt = b"".join((layout.PD_ADDR + i * 0x1000 | flags).to_bytes(8, "little")
                    for i in range(layout.PD_COUNT))
    mem.write(layout.PDPT_ADDR, pdpt + bytes(4096 - len(pdpt)))
    pd = b"".join((i * PAGE_2M | flags | PTE_PS).to_bytes(8, "little")
                  for i in range(layout.PD_COUNT * 512))
    mem.write(layout.PD_ADDR, pd)
    return [("pml4", layout.PML4_ADDR, 0x1000), ("pdpt", layout.PDPT_ADDR, 0x1000),
            ("pd", layout.PD_ADDR, layout.PD_COUNT * 0x1000)]


# --- entry states ----------------------------------------------------------------------------
def make_gprs(**values: int) -> dict[str, int]:
    """All general registers zero except those given; rflags has only its reserved bit."""
    unknown = set(values) - set(GPR_NAMES)
    if unknown:
        raise ValueError(f"unknown registers {sorted(unknown)}")
    gprs = {name: 0 for name in GPR_NAMES}
    gprs["rflags"] = RFLAGS_RESERVED
    gprs.update({k: v & 0xFFFF_FFFF_FFFF_FFFF for k, v in values.items()})
    return gprs


def _flat_segments(code: Segment) -> dict[str, Segment]:
    segs = {"cs": code}
    for name in ("ds", "es", "fs", "gs", "ss"):
        segs[name] = data_segment()
    segs["tr"] = tss_segment()
    segs["ldt"] = ldt_segment()
    return segs


def protected32_entry(mem: GuestRam, rip: int, **gprs: int) -> EntryState:
    """32-bit protected mode, paging off, flat segments (PVH / Multiboot / BSD native entry)."""
    if not 0 <= rip < 1 << 32:
        raise ValueError(f"32-bit entry point {rip:#x} is above 4 GiB")
    write_gdt(mem)
    return EntryState(mode="protected32", rip=rip, gprs=make_gprs(**gprs), cr0=CR0_PE, cr3=0,
                      cr4=0, efer=0, gdt_base=layout.GDT_ADDR, gdt_limit=GDT_LIMIT,
                      idt_base=layout.IDT_ADDR, idt_limit=0,
                      segments=_flat_segments(code32_segment()))


def long64_entry(mem: GuestRam, rip: int, **gprs: int) -> EntryState:
    """64-bit long mode on an identity map of the first 4 GiB (Linux 64-bit boot protocol)."""
    write_gdt(mem)
    write_page_tables(mem)
    return EntryState(mode="long64", rip=rip, gprs=make_gprs(**gprs),
                      cr0=CR0_PE | CR0_ET | CR0_NE | CR0_PG, cr3=layout.PML4_ADDR, cr4=CR4_PAE,
                      efer=EFER_LME | EFER_LMA, gdt_base=layout.GDT_ADDR, gdt_limit=GDT_LIMIT,
                      idt_base=layout.IDT_ADDR, idt_limit=0,
                      segments=_flat_segments(code64_segment()))

