"""Kernel/initrd file errors, decompression and bzImage payload extraction."""
import gzip
import os
import struct

import pytest

from builders import (PM_OFFSET, VERSION_STRING, compress, elf_header_only, fake_bzimage, lz4_legacy,
                      needs_binutils, pvh_kernel)
from harness.boot import decompress, image, load
from harness.errors import KernelImageError

MiB = 1024 * 1024


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_missing_and_empty_files(tmp_path, mem):
    with pytest.raises(KernelImageError, match="does not exist") as err:
        load("pvh", mem, tmp_path / "nope", None, "")
    assert err.value.fix
    with pytest.raises(KernelImageError, match="is empty"):
        load("pvh", mem, write(tmp_path, "empty", b""), None, "")


def test_kernel_larger_than_memory(tmp_path, mem):
    big = write(tmp_path, "big", b"\0" * (mem.size + 1))
    with pytest.raises(KernelImageError, match="more than the 64.0 MiB of guest memory") as err:
        load("pvh", mem, big, None, "")
    assert err.value.fix == "give the guest more memory"


def test_aarch64_elf_is_wrong_architecture(tmp_path, mem):
    path = write(tmp_path, "arm.elf", elf_header_only(183) + bytes(64))
    with pytest.raises(KernelImageError, match="aarch64, not x86-64"):
        load("pvh", mem, path, None, "")


def test_arm64_image_is_wrong_architecture(tmp_path, mem):
    data = bytearray(0x1000)
    data[0x38:0x3C] = b"ARM\x64"
    with pytest.raises(KernelImageError, match="arm64 Image"):
        load("bzimage", mem, write(tmp_path, "Image", bytes(data)), None, "")


@needs_binutils
def test_truncated_elf(tmp_path, mem):
    data = pvh_kernel(tmp_path).read_bytes()
    with pytest.raises(KernelImageError, match="truncated"):
        load("pvh", mem, write(tmp_path, "cut.elf", data[:0x1010]), None, "")


def test_corrupt_and_truncated_gzip(tmp_path, mem):
    with pytest.raises(KernelImageError, match="not valid gzip"):
        load("netbsd", mem, write(tmp_path, "bad.gz", b"\x1f\x8b\x08\x00" + os.urandom(200)), None, "")
    good = gzip.compress(os.urandom(5000))
    with pytest.raises(KernelImageError, match="truncated"):
        load("netbsd", mem, write(tmp_path, "cut.gz", good[:len(good) // 2]), None, "")


@needs_binutils
def test_gzip_kernel_is_accepted(tmp_path, mem):
    data = pvh_kernel(tmp_path).read_bytes()
    plan = load("pvh", mem, write(tmp_path, "k.gz", gzip.compress(data)), None, "")
    assert plan.info["protocol"] == "pvh"


def test_decompression_cap():
    with pytest.raises(KernelImageError, match="more than"):
        decompress.gunzip(gzip.compress(b"\0" * (3 * MiB)), 2 * MiB)
    with pytest.raises(KernelImageError, match="more than"):
        decompress.unlz4_legacy(lz4_legacy(b"\0" * (3 * MiB), block=MiB), 2 * MiB)


@pytest.mark.parametrize("fmt", ["gzip", "xz", "lz4", "zstd"])
def test_payload_formats(fmt):
    data = os.urandom(100_000) + b"A" * 300_000
    packed = compress(data, fmt) + struct.pack("<I", len(data))      # Linux's size trailer
    assert decompress.sniff(packed) == fmt
    assert decompress.decompress(packed, fmt, 10 * MiB) == data


def test_lz4_legacy_many_blocks_and_truncation():
    data = os.urandom(50_000) * 7
    packed = lz4_legacy(data, block=64 * 1024) + struct.pack("<I", len(data))
    assert decompress.unlz4_legacy(packed, MiB) == data
    with pytest.raises(KernelImageError, match="truncated"):
        decompress.unlz4_legacy(packed[:len(packed) // 2], MiB)


@needs_binutils
@pytest.mark.parametrize("fmt", ["gzip", "xz", "lz4", "zstd"])
def test_extract_vmlinux_from_bzimage(tmp_path, fmt):
    elf = pvh_kernel(tmp_path).read_bytes()
    bz = fake_bzimage(elf, fmt)
    hdr = image.parse_setup_header(bz)
    assert hdr.pm_offset == PM_OFFSET and hdr.kernel_version == VERSION_STRING.decode()
    assert image.extract_vmlinux(bz, 64 * MiB) == elf


def test_bzimage_protocol_too_old(tmp_path, mem):
    with pytest.raises(KernelImageError, match="protocol 2.10"):
        load("bzimage", mem, write(tmp_path, "old", fake_bzimage(version=0x020A)), None, "")


def test_bzimage_without_64bit_entry(tmp_path, mem):
    with pytest.raises(KernelImageError, match="XLF_KERNEL_64"):
        load("bzimage", mem, write(tmp_path, "k32", fake_bzimage(xloadflags=0)), None, "")


def test_bzimage_truncated_payload(tmp_path):
    bz = fake_bzimage(b"\x7fELF" + bytes(4000), "gzip")
    with pytest.raises(KernelImageError, match="truncated"):
        image.extract_vmlinux(bz[:PM_OFFSET + 0x410], 64 * MiB)


def test_initrd_too_big(tmp_path, mem):
    kernel = write(tmp_path, "bz", fake_bzimage(init_size=0x400000))
    initrd = write(tmp_path, "initrd", b"\0" * (60 * MiB))
    with pytest.raises(KernelImageError, match="initrd of 60.0 MiB does not fit") as err:
        load("bzimage", mem, kernel, initrd, "")
    assert "give the guest more memory" in err.value.fix


def test_missing_initrd(tmp_path, mem):
    kernel = write(tmp_path, "bz", fake_bzimage())
    with pytest.raises(KernelImageError, match="initrd file .* does not exist"):
        load("bzimage", mem, kernel, tmp_path / "missing-initrd", "")


@needs_binutils
def test_mutated_elf_headers_never_escape_as_tracebacks(tmp_path, mem):
    """A hostile kernel file: random header bytes give a load or a HarnessError, nothing else."""
    import random

    from harness.errors import HarnessError
    original = pvh_kernel(tmp_path).read_bytes()
    rng = random.Random(1234)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(150):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(0, 0x140)] = rng.randrange(256)   # ELF header + program headers
        path = write(tmp_path, f"m{i}", bytes(data))
        try:
            load("pvh", mem, path, None, "")
            outcomes["loaded"] += 1
        except HarnessError as exc:
            assert exc.problem and exc.fix
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


def test_mutated_bzimage_headers_never_escape_as_tracebacks(tmp_path, mem):
    import random

    from harness.errors import HarnessError
    original = fake_bzimage(b"\x7fELF" + bytes(3000), "gzip")
    rng = random.Random(99)
    for i in range(150):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(0x1F1, 0x270)] = rng.randrange(256)   # the setup header
        path = write(tmp_path, f"b{i}", bytes(data))
        for method in ("bzimage", "pvh"):
            try:
                load(method, mem, path, None, "")
            except HarnessError as exc:
                assert exc.problem and exc.fix


def test_bzimage_shorter_than_its_syssize_is_refused_before_the_vm_starts(tmp_path):
    """A header that promises more kernel than the file holds: one line, no VM."""
    import struct as _struct

    from builders import fake_bzimage
    from harness.boot.image import parse_setup_header
    from harness.errors import KernelImageError
    data = bytearray(fake_bzimage())
    _struct.pack_into("<I", data, 0x1F4, (len(data) // 16) + 1)
    with pytest.raises(KernelImageError, match="promises") as info:
        parse_setup_header(bytes(data), "bzImage")
    assert "\n" not in info.value.one_line()


def test_bzimage_ending_inside_its_setup_header_is_refused():
    """Found by test_loader_fuzz: a file cut inside the setup header raised IndexError."""
    from builders import fake_bzimage
    from harness.boot.image import parse_setup_header
    from harness.errors import KernelImageError
    for size in (0x206, 0x212, 0x235, 0x26F):
        with pytest.raises(KernelImageError, match="truncated"):
            parse_setup_header(fake_bzimage()[:size], "bzImage")
