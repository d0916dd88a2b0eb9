"""aarch64 loaders: arm64 Image (plain, gzip'd, legacy), NetBSD aarch64 ELF; the DTB written next to
them is what dtc reads; headers that promise more than the file holds are one-line errors."""
from __future__ import annotations

import gzip

import pytest
from arm64_builders import arm64_image, needs_cross, netbsd_elf, pe_header
from fdt_check import dtc_decompile, fdtget, needs_dtc

from harness import layout
from harness.arch.aarch64.regs import PSTATE_EL1H_DAIF
from harness.assets.cache import AssetCache
from harness.boot.arm64 import LEGACY_TEXT_OFFSET, detect_aarch64_method, load_aarch64
from harness.boot.fdt import Aarch64Machine
from harness.errors import HarnessError, KernelImageError
from harness.memory import GuestRam

MiB = layout.MiB
MEM = 128 * MiB
LINK_BASE = 0xFFFF_C000_0000_0000


@pytest.fixture
def mem():
    ram = GuestRam.aarch64(MEM)
    yield ram
    ram.close()


def _machine(cmdline: str = "console=ttyAMA0") -> Aarch64Machine:
    return Aarch64Machine(MEM, cmdline=cmdline)


def _boot(tmp_path, mem, image: bytes, method: str = "auto", initrd: bytes | None = None, name="Image"):
    kernel = tmp_path / name
    kernel.write_bytes(image)
    initrd_path = None
    if initrd is not None:
        initrd_path = tmp_path / "initrd"
        initrd_path.write_bytes(initrd)
    return load_aarch64(method, mem, kernel, initrd_path, _machine())


@needs_dtc
def test_image_entry_state_and_device_tree(tmp_path, mem):
    image = arm64_image(image_size=4 * MiB)
    boot = _boot(tmp_path, mem, image, initrd=b"INITRD" * 1000)
    entry = boot.plan.entry
    assert entry.pc == layout.A64_RAM_START                  # text_offset 0 at the start of DRAM
    assert entry.x == (layout.a64_fdt_addr(MEM), 0, 0, 0) and entry.pstate == PSTATE_EL1H_DAIF
    assert mem.read(entry.pc, len(image)) == image
    start, size = boot.machine.initrd
    assert start % (2 * MiB) == 0 and start >= layout.A64_RAM_START + 4 * MiB   # past image_size
    assert mem.read(start, size) == b"INITRD" * 1000
    blob = mem.read(entry.x[0], len(boot.fdt))
    assert blob == boot.fdt
    dtc_decompile(blob, tmp_path)
    assert fdtget(blob, tmp_path, "/chosen", "bootargs", "s") == "console=ttyAMA0"
    assert fdtget(blob, tmp_path, "/chosen", "linux,initrd-start") == f"0 {start:x}"
    assert fdtget(blob, tmp_path, "/chosen", "linux,initrd-end") == f"0 {start + size:x}"


def test_gzipped_image_loads_like_the_plain_one(tmp_path, mem):
    image = arm64_image(text_offset=0x20_0000)
    boot = _boot(tmp_path, mem, gzip.compress(image), name="Image.gz")
    assert boot.plan.entry.pc == layout.A64_RAM_START + 0x20_0000
    assert mem.read(boot.plan.entry.pc, len(image)) == image
    assert boot.plan.info["method"] == "image"


def test_legacy_image_uses_text_offset_0x80000(tmp_path, mem):
    boot = _boot(tmp_path, mem, arm64_image(text_offset=0, image_size=0))
    assert boot.plan.entry.pc == layout.A64_RAM_START + LEGACY_TEXT_OFFSET


def test_efi_stub_image_with_sections_inside_the_file(tmp_path, mem):
    body = b"\0" * 4096
    pe = pe_header([(0x200, 0x800)])
    boot = _boot(tmp_path, mem, arm64_image(body=body, pe=pe))
    assert boot.plan.info["efi_stub"] is True


@pytest.mark.parametrize("image,match", [
    (arm64_image()[:40], "only 40 bytes"),
    (arm64_image(pe=pe_header([(0x200, 0x100000)])), "truncated: PE section .text"),
    (arm64_image()[:60] + (0x10000).to_bytes(4, "little") + b"\0" * 64, "PE header at 0x10000"),
    (arm64_image(flags=0xB), "big-endian"),
    (arm64_image(image_size=100), "smaller than the file"),
    (arm64_image(text_offset=0x123), "not page aligned"),
    (arm64_image(image_size=1 << 40), "past the device tree"),
])
def test_bad_images_are_one_line_errors(tmp_path, mem, image, match):
    with pytest.raises(HarnessError, match=match) as info:
        _boot(tmp_path, mem, image, method="image")
    assert "\n" not in info.value.one_line()


def test_truncated_gzip_is_an_error(tmp_path, mem):
    with pytest.raises(KernelImageError):
        _boot(tmp_path, mem, gzip.compress(arm64_image())[:-20], name="Image.gz")


def test_x86_kernel_is_not_an_aarch64_kernel(tmp_path):
    with pytest.raises(KernelImageError, match="neither an arm64 Image"):
        detect_aarch64_method(b"\0" * 0x202 + b"HdrS" + b"\0" * 100, "bzImage")


@needs_cross
def test_netbsd_elf_gets_only_the_fdt_pointer(tmp_path, mem):
    kernel = netbsd_elf(tmp_path)
    data = kernel.read_bytes()
    assert detect_aarch64_method(data, "netbsd") == "netbsd"
    boot = load_aarch64("auto", mem, kernel, None, _machine(cmdline=""))
    entry = boot.plan.entry
    e_entry = int.from_bytes(data[24:32], "little")
    assert entry.pc == layout.A64_RAM_START + (e_entry - LINK_BASE)   # same offset from the base
    assert entry.x == (boot.machine.fdt_addr, 0, 0, 0)
    assert mem.read(entry.pc, 4) == bytes.fromhex("7f2003d5")  # wfi
    data_at = data.find((0x1122334455667788).to_bytes(8, "little"))
    # the data segment keeps its distance from the text in virtual addresses (readelf: +0x1000)
    assert mem.read(layout.A64_RAM_START + 0x1000 + data_at, 8) == data[data_at:data_at + 8]
    assert mem.read(layout.A64_RAM_START + 0x1000 + data_at + 8, 8192) == bytes(8192)   # BSS zeroed
    assert boot.plan.info["protocol"] == "netbsd-aarch64"


@needs_cross
def test_truncated_netbsd_elf_is_refused(tmp_path, mem):
    kernel = netbsd_elf(tmp_path)
    cut = tmp_path / "netbsd.cut"
    data = kernel.read_bytes()
    cut.write_bytes(data[:data.find((0x1122334455667788).to_bytes(8, "little")) + 4])   # inside .data
    with pytest.raises(KernelImageError, match="truncated"):
        load_aarch64("netbsd", mem, cut, None, _machine())


def test_debian_arm64_kernel_from_the_asset_cache(tmp_path):
    entry = AssetCache().lookup("debian-cloud-kernel-arm64")
    if entry is None or not entry.path.is_file():
        pytest.skip("no debian-cloud-kernel-arm64 in the asset cache "
                    "(harness assets build debian-cloud-kernel-arm64)")
    ram = GuestRam.aarch64(256 * MiB)
    try:
        boot = load_aarch64("auto", ram, entry.path, None, Aarch64Machine(256 * MiB))
    finally:
        ram.close()
    assert boot.plan.info["efi_stub"] is True and boot.plan.info["page_size"] == "4K"
    assert boot.plan.info["image_size"] > entry.path.stat().st_size - 1
