"""Raw flat-binary boot for tiny guests (tests, benchmarks, fixtures): boot method "raw".

The image is copied to GUEST_LOAD and entered in 16-bit real mode with CS=DS=SS=0 (or in
flat 32-bit protected mode with a GDT at layout.GDT_ADDR). The state is an EntryState as the
loaders (harness.boot.entry) produce it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import layout
from harness.arch.x86_64.regs import CR0_ET, CR0_PE, RFLAGS_FIXED
from harness.boot.entry import EntryState, Segment
from harness.errors import KernelImageError
from harness.memory import GuestRam
from harness.model.builtin_options import RAW_MODES

GUEST_LOAD = layout.RAW_IMAGE_LOAD
RAW_MAX = layout.RAW_IMAGE_MAX
REAL_STACK = layout.RAW_REAL_STACK


def _seg(selector: int, base: int, limit: int, type_: int, db: int = 0, g: int = 0, s: int = 1) -> Any:
    return Segment(base=base, limit=limit, selector=selector, type=type_, present=1, dpl=0, db=db, s=s, l=0, g=g)


def real_mode_entry(rip: int = GUEST_LOAD) -> Any:
    """16-bit real mode, all segments based at 0, `rip` linear (< 64 KiB + base 0 -> use CS base)."""
    cs_base = rip & ~0xFFFF
    segs = {name: _seg(0, 0, 0xFFFF, 0x3) for name in ("ds", "es", "fs", "gs", "ss")}
    segs["cs"] = _seg(cs_base >> 4, cs_base, 0xFFFF, 0xB)
    segs["tr"] = _seg(0, 0, 0xFFFF, 0xB, s=0)
    segs["ldt"] = _seg(0, 0, 0xFFFF, 0x2, s=0)
    return EntryState(mode="real16", rip=rip - cs_base, gprs={"rsp": REAL_STACK, "rflags": RFLAGS_FIXED}, cr0=CR0_ET, cr3=0,
                      cr4=0, efer=0, gdt_base=0, gdt_limit=0xFFFF, idt_base=0, idt_limit=0x3FF, segments=segs)


def protected_entry(ram: GuestRam, rip: int = GUEST_LOAD) -> Any:
    """Flat 32-bit protected mode, paging off; writes a 3-entry GDT at layout.GDT_ADDR."""
    gdt = [0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF]  # null, code 0x08, data 0x10: 4 GiB flat
    ram.write(layout.GDT_ADDR, b"".join(d.to_bytes(8, "little") for d in gdt))
    segs = {name: _seg(0x10, 0, 0xFFFFFFFF, 0x3, db=1, g=1) for name in ("ds", "es", "fs", "gs", "ss")}
    segs["cs"] = _seg(0x08, 0, 0xFFFFFFFF, 0xB, db=1, g=1)
    segs["tr"] = _seg(0, 0, 0xFFFF, 0xB, s=0)
    segs["ldt"] = _seg(0, 0, 0xFFFF, 0x2, s=0)
    return EntryState(mode="protected32", rip=rip, gprs={"rsp": layout.BOOT_STACK_TOP, "rflags": RFLAGS_FIXED},
                      cr0=CR0_PE | CR0_ET,
                      cr3=0, cr4=0, efer=0, gdt_base=layout.GDT_ADDR, gdt_limit=len(gdt) * 8 - 1, idt_base=0,
                      idt_limit=0, segments=segs)


def load_raw(ram: GuestRam, image: Path | bytes, mode: str = "real16") -> tuple[Any, dict[str, Any]]:
    """Copy a flat image to GUEST_LOAD; return (EntryState, info) like a loader's BootPlan."""
    data = image if isinstance(image, bytes) else read_image(image)
    if not data:
        raise KernelImageError("raw guest image is empty", "give a flat binary to load at 0x10000")
    if len(data) > RAW_MAX:
        raise KernelImageError(f"raw guest image is {len(data)} bytes, more than {RAW_MAX}",
                               "raw boot is for tiny guests; use a real boot method for kernels")
    ram.write(GUEST_LOAD, data)
    entry = _entry_for(ram, mode)
    return entry, {"method": "raw", "mode": entry.mode, "load_addr": hex(GUEST_LOAD), "size": len(data)}


def _entry_for(ram: GuestRam, mode: str) -> Any:
    if mode == "real16":
        return real_mode_entry()
    if mode not in RAW_MODES:
        raise KernelImageError(f"raw guest mode {mode!r} is unknown", f"use {', '.join(RAW_MODES)}")
    # The loaders' GDT and page tables, so raw guests see exactly what real kernels see.
    from harness.boot import entry as boot_entry
    make = boot_entry.protected32_entry if mode == "protected32" else boot_entry.long64_entry
    return make(ram, GUEST_LOAD, rsp=layout.BOOT_STACK_TOP)


def read_image(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KernelImageError(f"cannot read raw guest image {path}: {exc.strerror}", "check the path") from None
