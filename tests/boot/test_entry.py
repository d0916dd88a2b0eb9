"""GDT, identity page tables and entry states, read back from guest memory."""
from harness import layout
from harness.boot.entry import (CODE32_SEL, CODE64_SEL, DATA_SEL, GPR_NAMES, SEGMENT_NAMES, TSS_SEL,
                                long64_entry, protected32_entry)


def decode_descriptor(raw: int) -> dict:
    limit = (raw & 0xFFFF) | ((raw >> 48) & 0xF) << 16
    base = ((raw >> 16) & 0xFFFFFF) | ((raw >> 56) & 0xFF) << 24
    access = (raw >> 40) & 0xFF
    flags = (raw >> 52) & 0xF
    g = flags >> 3 & 1
    return {"base": base, "limit": (limit << 12 | 0xFFF) if g else limit, "type": access & 0xF,
            "s": access >> 4 & 1, "dpl": access >> 5 & 3, "present": access >> 7,
            "avl": flags & 1, "l": flags >> 1 & 1, "db": flags >> 2 & 1, "g": g}


def gdt_entry(mem, selector: int) -> dict:
    return decode_descriptor(mem.read_u64(layout.GDT_ADDR + selector))


def test_gdt_matches_every_loaded_segment(mem):
    state = protected32_entry(mem, 0x100000)
    assert state.gdt_base == layout.GDT_ADDR and state.gdt_limit == 6 * 8 - 1
    assert mem.read_u64(layout.GDT_ADDR) == 0                       # null descriptor
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr"):
        seg = state.segments[name]
        table = gdt_entry(mem, seg.selector)
        for fld in ("base", "limit", "type", "s", "dpl", "present", "l", "db", "g", "avl"):
            assert table[fld] == getattr(seg, fld), (name, fld)
    # 64-bit code descriptor is in the table too, with L=1, D=0
    code64 = gdt_entry(mem, CODE64_SEL)
    assert (code64["l"], code64["db"], code64["type"], code64["s"]) == (1, 0, 0xB, 1)
    # TSS is a 16-byte system descriptor: upper half is base[63:32] = 0
    assert mem.read_u64(layout.GDT_ADDR + TSS_SEL + 8) == 0


def test_protected32_state_follows_pvh_spec(mem):
    state = protected32_entry(mem, 0x123456, rbx=0x6000)
    assert state.mode == "protected32" and state.rip == 0x123456
    assert state.cr0 == 1 and state.cr4 == 0 and state.efer == 0 and state.cr3 == 0
    assert set(state.gprs) == set(GPR_NAMES)
    assert state.gprs["rbx"] == 0x6000 and state.gprs["rflags"] == 0x2
    assert set(state.segments) == set(SEGMENT_NAMES)
    cs, ds, tr = state.segments["cs"], state.segments["ds"], state.segments["tr"]
    assert (cs.selector, cs.base, cs.limit, cs.db, cs.l, cs.g, cs.type) == (CODE32_SEL, 0, 0xFFFFFFFF, 1, 0, 1, 0xB)
    assert (ds.selector, ds.base, ds.limit, ds.type, ds.db) == (DATA_SEL, 0, 0xFFFFFFFF, 3, 1)
    assert (tr.base, tr.limit, tr.type, tr.s, tr.present) == (0, 0x67, 0xB, 0, 1)
    assert state.segments["ldt"].unusable == 1


def test_long64_state_and_identity_map(mem):
    state = long64_entry(mem, 0x1000200, rsi=0x7000)
    assert state.mode == "long64"
    assert state.cr0 & 0x80000001 == 0x80000001 and state.cr4 & 0x20 and state.efer == 0x500
    assert state.cr3 == layout.PML4_ADDR
    cs = state.segments["cs"]
    assert (cs.selector, cs.l, cs.db) == (CODE64_SEL, 1, 0)
    assert state.gprs["rsi"] == 0x7000
    assert mem.read_u64(layout.PML4_ADDR) == layout.PDPT_ADDR | 3
    assert mem.read_u64(layout.PML4_ADDR + 8) == 0
    for i in range(layout.PD_COUNT):
        assert mem.read_u64(layout.PDPT_ADDR + 8 * i) == (layout.PD_ADDR + 0x1000 * i) | 3
    assert mem.read_u64(layout.PDPT_ADDR + 8 * layout.PD_COUNT) == 0
    pds = mem.read(layout.PD_ADDR, layout.PD_COUNT * 4096)
    for i in range(layout.PD_COUNT * 512):     # every 2 MiB page of the first 4 GiB, 1:1
        assert int.from_bytes(pds[8 * i:8 * i + 8], "little") == (i << 21) | 0x83
