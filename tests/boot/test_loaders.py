"""Each loader's handoff, parsed back from guest memory field by field."""
import struct

import pytest

from builders import (PM_OFFSET, VERSION_STRING, bsd_kernel, fake_bzimage, multiboot_aout, multiboot_elf,
                      needs_binutils, pvh_kernel)
from harness import layout
from harness.boot import detect_method, load
from harness.boot.entry import CODE64_SEL
from harness.errors import ConfigError, KernelImageError

MiB = 1024 * 1024
E820_64M = [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (0x100000, 63 * MiB, 1)]


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def region(plan, name):
    return next(r for r in plan.regions if r[0] == name)


# --- Linux bzImage -------------------------------------------------------------------------------
def test_bzimage_zero_page(tmp_path, mem):
    bz = fake_bzimage(init_size=0x800000)
    kernel = write(tmp_path, "bzImage", bz)
    initrd = write(tmp_path, "initrd.img", b"INITRD" * 1000)
    plan = load("bzimage", mem, kernel, initrd, "console=ttyS0 quiet")
    zp = layout.ZERO_PAGE_ADDR
    page = mem.read(zp, 4096)
    # setup header copied from 0x1f1 up to 0x202 + byte at 0x201, but not beyond
    assert page[0x1F1] == bz[0x1F1] and page[0x202:0x206] == b"HdrS"
    assert page[0x206:0x208] == bz[0x206:0x208] and page[0x236:0x238] == bz[0x236:0x238]
    assert page[0x26C] == 0 and bz[0x26C] == 0xAB
    assert page[0x210] == 0xFF                                     # type_of_loader
    assert page[0x211] & 0x81 == 0x81                              # LOADED_HIGH | CAN_USE_HEAP
    assert struct.unpack_from("<H", page, 0x224)[0] == 0xE000 - 0x200
    cmd_ptr = struct.unpack_from("<I", page, 0x228)[0]
    assert cmd_ptr == layout.CMDLINE_ADDR
    assert mem.read_cstring(cmd_ptr) == b"console=ttyS0 quiet"
    # e820
    n = page[0x1E8]
    table = [struct.unpack_from("<QQI", page, 0x2D0 + 20 * i) for i in range(n)]
    assert table == E820_64M
    # initrd: page aligned, above the kernel's init_size, at the top of RAM, contents intact
    rd_image, rd_size = struct.unpack_from("<II", page, 0x218)
    assert rd_size == 6000 and rd_image % 4096 == 0
    assert rd_image >= 0x1000000 + 0x800000 and rd_image + rd_size <= 64 * MiB
    assert 64 * MiB - (rd_image + rd_size) < 4096
    assert mem.read(rd_image, 6) == b"INITRD"
    # protected-mode kernel at pref_address, entry at +0x200 in long mode, RSI = zero page
    assert mem.read(0x1000000, 4) == bz[PM_OFFSET:PM_OFFSET + 4]
    e = plan.entry
    assert e.mode == "long64" and e.rip == 0x1000200 and mem.read(e.rip, 2) == b"\xfa\xf4"
    assert e.gprs["rsi"] == zp and e.gprs["rsp"] == layout.BOOT_STACK_TOP
    assert e.segments["cs"].selector == CODE64_SEL == 0x10 and e.segments["ds"].selector == 0x18
    assert plan.info["kernel_version"] == VERSION_STRING.decode()
    assert plan.info["initrd"] == (rd_image, rd_size)
    assert region(plan, "zero_page") == ("zero_page", zp, 4096)


def test_bzimage_initrd_respects_initrd_addr_max(tmp_path, mem):
    kernel = write(tmp_path, "bz", fake_bzimage(initrd_addr_max=0x2FFFFFF, init_size=0x400000))
    plan = load("bzimage", mem, kernel, write(tmp_path, "rd", b"x" * 5000), "")
    gpa, size = plan.info["initrd"]
    assert gpa + size <= 0x3000000 and gpa % 4096 == 0


def test_bzimage_alignment_and_cmdline_size(tmp_path, mem):
    kernel = write(tmp_path, "bz", fake_bzimage(pref_address=0x1100000, kernel_alignment=0x200000,
                                                cmdline_size=16))
    plan = load("bzimage", mem, kernel, None, "short")
    assert plan.entry.rip == 0x1200000 + 0x200                     # aligned up to 2 MiB
    with pytest.raises(KernelImageError, match="accepts at most 16"):
        load("bzimage", mem, kernel, None, "x" * 17)


def test_bzimage_too_large_for_memory(tmp_path, mem):
    kernel = write(tmp_path, "bz", fake_bzimage(init_size=80 * MiB))
    with pytest.raises(KernelImageError, match="64 MiB") as err:
        load("bzimage", mem, kernel, None, "")
    assert err.value.fix == "give the guest more memory"


# --- PVH -----------------------------------------------------------------------------------------
def read_start_info(mem):
    return struct.unpack("<IIIIQQQQII", mem.read(layout.PVH_START_INFO_ADDR, 56))


@needs_binutils
@pytest.mark.parametrize("wide", [True, False])
def test_pvh_start_info(tmp_path, mem, wide):
    kernel = pvh_kernel(tmp_path, wide_note=wide)
    initrd = write(tmp_path, "initrd", b"RD" * 3000)
    plan = load("pvh", mem, kernel, initrd, "console=ttyS0 abc")
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, reserved = read_start_info(mem)
    assert (magic, version, flags, nr_modules, rsdp, reserved) == (0x336EC578, 1, 0, 1, 0, 0)
    assert cmdline == layout.CMDLINE_ADDR and mem.read_cstring(cmdline) == b"console=ttyS0 abc"
    # zero padding: the string (17 bytes + NUL) ends inside a word, followed by a full zero word
    raw = mem.read(cmdline, 28)
    assert raw[17:] == bytes(11)
    assert [struct.unpack_from("<QQII", mem.read(memmap + 24 * i, 24))[:3] for i in range(entries)] == E820_64M
    paddr, size, mod_cmdline, mod_reserved = struct.unpack("<QQQQ", mem.read(modlist, 32))
    assert size == 6000 and paddr % 4096 == 0 and mod_cmdline == 0 and mod_reserved == 0
    assert mem.read(paddr, 4) == b"RDRD"
    e = plan.entry
    assert e.mode == "protected32" and e.rip == 0x400000 and e.gprs["rbx"] == layout.PVH_START_INFO_ADDR
    assert mem.read(0x400000, 2) == b"\xfa\xf4"
    assert mem.read(0x401000, 13) == b"Linux version"
    assert mem.read(0x401026, 0x3000) == bytes(0x3000)             # bss zeroed
    assert plan.info["kernel_version"].startswith("Linux version 6.9.0-test")


@needs_binutils
def test_pvh_without_initrd_has_no_modlist(tmp_path, mem):
    load("pvh", mem, pvh_kernel(tmp_path), None, "")
    _, _, _, nr_modules, modlist, cmdline, _, memmap, entries, _ = read_start_info(mem)
    assert nr_modules == 0 and modlist == 0 and cmdline == layout.CMDLINE_ADDR and memmap and entries == 3
    assert mem.read(cmdline, 8) == bytes(8)                        # empty string + a zero word


@needs_binutils
def test_pvh_through_bzimage(tmp_path, mem):
    elf = pvh_kernel(tmp_path).read_bytes()
    kernel = write(tmp_path, "bzImage", fake_bzimage(elf, "xz"))
    plan = load("pvh", mem, kernel, None, "x")
    assert plan.entry.rip == 0x400000 and plan.info["kernel_version"] == VERSION_STRING.decode()


@needs_binutils
def test_pvh_needs_the_note(tmp_path, mem):
    with pytest.raises(KernelImageError, match="no Xen PVH entry note"):
        load("pvh", mem, bsd_kernel(tmp_path, "freebsd"), None, "")


# --- Multiboot -----------------------------------------------------------------------------------
def check_multiboot_info(mem, cmdline: bytes, module: bytes | None):
    base = layout.BOOT_TABLES_ADDR
    flags, mem_lower, mem_upper = struct.unpack("<III", mem.read(base, 12))
    assert flags & 0x245 == 0x245                                 # mem, cmdline, mmap, loader name
    assert mem_lower == 639 and mem_upper == 63 * 1024
    cmd_ptr, mods_count, mods_addr = struct.unpack("<III", mem.read(base + 16, 12))
    assert mem.read_cstring(cmd_ptr) == cmdline
    mmap_length, mmap_addr = struct.unpack("<II", mem.read(base + 44, 8))
    entries, pos = [], mmap_addr
    while pos < mmap_addr + mmap_length:
        size, addr, length, kind = struct.unpack("<IQQI", mem.read(pos, 24))
        assert size == 20
        entries.append((addr, length, kind))
        pos += size + 4
    assert entries == E820_64M
    assert mem.read_cstring(mem.read_u32(base + 64)) == b"harness"
    if module is None:
        assert flags & 0x8 == 0 and mods_count == 0
    else:
        assert flags & 0x8 and mods_count == 1
        start, end, string, reserved = struct.unpack("<IIII", mem.read(mods_addr, 16))
        assert start % 4096 == 0 and mem.read(start, end - start) == module and reserved == 0
        assert mem.read_cstring(string) == b"initrd.gz"


@needs_binutils
def test_multiboot_elf32(tmp_path, mem):
    kernel = multiboot_elf(tmp_path)
    plan = load("multiboot", mem, kernel, write(tmp_path, "initrd.gz", b"MODULE" * 100), "dom0_mem=32M")
    check_multiboot_info(mem, b"mb3.elf dom0_mem=32M", b"MODULE" * 100)
    e = plan.entry
    assert e.mode == "protected32" and e.gprs["rax"] == 0x2BADB002 and e.gprs["rbx"] == layout.BOOT_TABLES_ADDR
    assert e.rip == 0x20000C and mem.read(e.rip, 2) == b"\xfa\xf4"
    assert mem.read_u32(0x201000) == 0x11223344


@needs_binutils
def test_multiboot_gzip_elf(tmp_path, mem):
    import gzip
    kernel = write(tmp_path, "xen.gz", gzip.compress(multiboot_elf(tmp_path).read_bytes()))
    assert detect_method(kernel) == "multiboot"
    plan = load("multiboot", mem, kernel, None, "")
    check_multiboot_info(mem, b"xen.gz", None)
    assert plan.entry.rip == 0x20000C


def test_multiboot_aout_kludge(tmp_path, mem):
    kernel = multiboot_aout(tmp_path)
    plan = load("multiboot", mem, kernel, None, "hello")
    check_multiboot_info(mem, b"mb.aout hello", None)
    assert plan.entry.rip == 0x300100 and mem.read(0x300100, 2) == b"\xfa\xf4"
    assert mem.read(0x300800, 4) == b"DATA"
    assert region(plan, "kernel") == ("kernel", 0x300000, 0x3000)   # image + bss


@needs_binutils
def test_multiboot_video_requirement_refused(tmp_path, mem):
    with pytest.raises(KernelImageError, match="video mode"):
        load("multiboot", mem, multiboot_elf(tmp_path, flags=0x7), None, "")


def test_multiboot_missing_header(tmp_path, mem):
    with pytest.raises(KernelImageError, match="no Multiboot v1 header"):
        load("multiboot", mem, write(tmp_path, "raw", bytes(16384)), None, "")


# --- NetBSD --------------------------------------------------------------------------------------
@needs_binutils
def test_netbsd_bootinfo_and_stack(tmp_path, mem):
    plan = load("netbsd", mem, bsd_kernel(tmp_path, "netbsd"), None, "-s -v root=wd0a")
    e = plan.entry
    assert e.mode == "protected32" and e.rip == 0x200000 and mem.read(0x200000, 2) == b"\xfa\xf4"
    esp = e.gprs["rsp"]
    ret, howto, bootdev, bootinfo, esym, extmem, basemem = struct.unpack("<7I", mem.read(esp, 28))
    assert ret == 0 and howto == 0x002 | 0x20000 and bootdev == 0 and esym == 0
    assert extmem == 63 * 1024 and basemem == 639
    count = mem.read_u32(bootinfo)
    records = {}
    for i in range(count):
        ptr = mem.read_u32(bootinfo + 4 + 4 * i)
        length, rtype = struct.unpack("<ii", mem.read(ptr, 8))
        records[rtype] = mem.read(ptr + 8, length - 8)
    console = records[6]
    assert console[:16] == b"com".ljust(16, b"\0") and struct.unpack("<ii", console[16:24]) == (0x3F8, 115200)
    num = struct.unpack_from("<i", records[9])[0]
    assert [struct.unpack_from("<QQI", records[9], 4 + 20 * i) for i in range(num)] == E820_64M
    assert records[1] == b"wd0a".ljust(16, b"\0")
    assert plan.info["kernel_version"].startswith("NetBSD 10.0 (GENERIC)")


@needs_binutils
def test_netbsd_without_root(tmp_path, mem):
    plan = load("netbsd", mem, bsd_kernel(tmp_path, "netbsd"), None, "")
    bootinfo = mem.read_u32(plan.entry.gprs["rsp"] + 12)
    assert mem.read_u32(bootinfo) == 2                              # console + memmap only
    assert plan.info["boothowto"] == 0 and plan.info["root"] is None


# --- OpenBSD -------------------------------------------------------------------------------------
@needs_binutils
def test_openbsd_bootargs_and_stack(tmp_path, mem):
    plan = load("openbsd", mem, bsd_kernel(tmp_path, "openbsd"), None, "-s")
    e = plan.entry
    assert e.mode == "protected32" and e.rip == 0x1001000 and mem.read(e.rip, 2) == b"\xfa\xf4"
    words = struct.unpack("<9I", mem.read(e.gprs["rsp"], 36))
    ret, howto, bootdev, apiver, end, extmem, cnvmem, argc, argv = words
    assert (ret, howto, bootdev, apiver, end, extmem, cnvmem) == (0, 2, 0xA0000004, 0x0E, 0, 0, 0)
    assert argv == layout.BOOT_INFO_ADDR
    blob = mem.read(argv, argc)
    pos, seen = 0, {}
    while True:
        btype = struct.unpack_from("<I", blob, pos)[0]
        if btype == 0xFFFFFFFF:
            break
        _, size, nxt = struct.unpack_from("<III", blob, pos)
        assert size == nxt and size % 4 == 0
        seen[btype] = blob[pos + 12:pos + size]
        pos += size
    assert pos + 12 == argc and struct.unpack_from("<III", blob, pos) == (0xFFFFFFFF, 12, 12)
    rows = [struct.unpack_from("<QQI", seen[0], 20 * i) for i in range(len(seen[0]) // 20)]
    assert rows == E820_64M + [(0, 0, 0)]
    consdev, speed, addr = struct.unpack_from("<iiQ", seen[5])
    assert (consdev, speed, addr) == (0x800, 115200, 0x3F8) and len(seen[5]) == 32
    # the PT_OPENBSD_RANDOMIZE range is no longer the file's zeros
    rnd = next(r for r in plan.regions if r[0] == "openbsd_random")
    assert rnd[2] == 64 and mem.read(rnd[1], 64) != bytes(64)


# --- FreeBSD -------------------------------------------------------------------------------------
@needs_binutils
def test_freebsd_metadata_and_long_mode(tmp_path, mem):
    plan = load("freebsd", mem, bsd_kernel(tmp_path, "freebsd"),
                None, "-h hint.uart.0.at=isa hint.uart.0.port=0x3F8 junk")
    e = plan.entry
    assert e.mode == "long64" and e.rip == 0xFFFFFFFF80200000
    assert mem.read_u64(layout.PML4_ADDR + 511 * 8) == layout.PDPT_ADDR | 3
    assert mem.read_u64(layout.PDPT_ADDR + 510 * 8) == layout.PD_ADDR | 3
    ret, modulep, kernend = struct.unpack("<3I", mem.read(e.gprs["rsp"], 12))
    assert ret == 0 and modulep % 4096 == 0 and kernend % 4096 == 0 and kernend > modulep
    records, pos = {}, modulep
    while True:
        rtype, size = struct.unpack("<II", mem.read(pos, 8))
        if rtype == 0:
            break
        records[rtype] = mem.read(pos + 8, size)
        pos += 8 + (size + 7) // 8 * 8
    assert records[1] == b"/boot/kernel/kernel\0" and records[2] == b"elf kernel\0"
    assert struct.unpack("<Q", records[3])[0] == 0x200000
    assert struct.unpack("<i", records[0x8007])[0] == 0x1000                 # RB_SERIAL
    assert struct.unpack("<Q", records[0x8008])[0] == kernend
    envp = struct.unpack("<Q", records[0x8006])[0]
    env = mem.read(envp, 200).split(b"\0\0")[0].split(b"\0")
    assert env == [b"hint.uart.0.at=isa", b"hint.uart.0.port=0x3F8"]
    smap = records[0x8000 | 0x1001]
    assert [struct.unpack_from("<QQI", smap, 20 * i) for i in range(len(smap) // 20)] == E820_64M
    assert plan.info["ignored_cmdline"] == ["junk"]


# --- detection and common checks -----------------------------------------------------------------
@needs_binutils
def test_detect_method(tmp_path):
    assert detect_method(pvh_kernel(tmp_path)) == "pvh"
    assert detect_method(multiboot_elf(tmp_path)) == "multiboot"
    assert detect_method(multiboot_aout(tmp_path)) == "multiboot"
    for flavour in ("netbsd", "openbsd", "freebsd"):
        assert detect_method(bsd_kernel(tmp_path, flavour)) == flavour
    assert detect_method(write(tmp_path, "bz", fake_bzimage())) == "bzimage"
    with pytest.raises(KernelImageError, match="cannot tell"):
        detect_method(write(tmp_path, "junk", b"\x01" * 9000))


@needs_binutils
def test_auto_method_loads(tmp_path, mem):
    plan = load("auto", mem, pvh_kernel(tmp_path), None, "")
    assert plan.info["method"] == "pvh"


def test_unknown_method(tmp_path, mem):
    with pytest.raises(ConfigError, match="unknown boot method"):
        load("uefi", mem, write(tmp_path, "k", b"x"), None, "")


@needs_binutils
def test_kernel_beyond_ram(tmp_path):
    from harness.memory import GuestRam
    small = GuestRam(4 * MiB)                  # the PVH test kernel wants 0x400000..
    try:
        with pytest.raises(KernelImageError, match="guest has 4 MiB") as err:
            load("pvh", small, pvh_kernel(tmp_path), None, "")
        assert err.value.fix == "give the guest more memory"
    finally:
        small.close()


def test_kernel_overlapping_boot_tables(tmp_path, mem):
    low = multiboot_aout(tmp_path, load_addr=0x8000)
    with pytest.raises(KernelImageError, match="overlaps the boot tables"):
        load("multiboot", mem, low, None, "")


@needs_binutils
@pytest.mark.parametrize("method", ["pvh", "multiboot"])
def test_bios_data_area(tmp_path, mem, method):
    kernel = pvh_kernel(tmp_path) if method == "pvh" else multiboot_elf(tmp_path)
    plan = load(method, mem, kernel, None, "")
    assert int.from_bytes(mem.read(0x40E, 2), "little") << 4 == layout.EBDA_START
    assert int.from_bytes(mem.read(0x413, 2), "little") == 639
    assert ("bda", 0x400, 0x100) in plan.regions


@needs_binutils
def test_netbsd_pvh_cmdline_limit(tmp_path, mem):
    from builders import netbsd_pvh_kernel
    kernel = netbsd_pvh_kernel(tmp_path)
    assert detect_method(kernel) == "pvh"
    load("pvh", mem, kernel, None, "console=com root=NAME=root -z")
    with pytest.raises(KernelImageError, match="at most 127 bytes"):
        load("pvh", mem, kernel, None, "x" * 128)
