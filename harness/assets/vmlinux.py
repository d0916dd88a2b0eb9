"""Get the vmlinux ELF (with its PVH note) out of an x86 bzImage.

The loaders engineer owns the real extractor, harness.boot.image.extract_vmlinux; this module
calls it when it exists and otherwise uses a small fallback of its own: the bzImage's setup
header names the compressed payload (payload_offset 0x248, payload_length 0x24c, relative to
the protected-mode code at (setup_sects + 1) * 512), which is gzip, xz, zstd or legacy LZ4
(Debian's cloud kernels use LZ4, with the decompressed size appended as a le32).
"""
from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

from harness.errors import KernelImageError

_LZ4_LEGACY = bytes.fromhex("02214c18")
_ZSTD = bytes.fromhex("28b52ffd")
_VMLINUX_CAP = 512 * 1024 * 1024  # no real vmlinux is bigger; a bigger one is a decompression bomb


def extract_vmlinux(bzimage: Path, dest: Path) -> Path:
    """Write the ELF inside `bzimage` to `dest`; returns `dest`."""
    try:
        from harness.boot import image as boot_image  # the loaders' extractor, when it has landed
        theirs = getattr(boot_image, "extract_vmlinux", None)
    except ImportError:
        theirs = None
    if theirs is not None:
        data = theirs(bzimage.read_bytes(), _VMLINUX_CAP, bzimage.name)
    else:
        data = _extract(bzimage.read_bytes(), bzimage.name)
    if data[:4] != b"\x7fELF":
        raise KernelImageError(f"{bzimage.name}: the payload is not an ELF file", "give a bzImage built by Linux")
    dest.write_bytes(data)
    return dest


def _extract(image: bytes, name: str) -> bytes:
    if len(image) < 0x260 or image[0x202:0x206] != b"HdrS":
        raise KernelImageError(f"{name} is not a Linux bzImage (no HdrS)", "give /boot/vmlinuz-* of an x86 kernel")
    setup_sects = image[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = image[start:start + payload_length]
    if len(payload) != payload_length or payload_length == 0:
        raise KernelImageError(f"{name}: payload [{start:#x}, +{payload_length:#x}) is outside the file",
                               "the image is truncated: download it again")
    if payload[:2] == b"\x1f\x8b":
        return gzip.decompress(payload)
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(payload)
    if payload[:4] == _LZ4_LEGACY:
        return _tool(["lz4", "-dc"], payload[:-4], "lz4")  # drop the appended le32 size
    if payload[:4] == _ZSTD:
        return _tool(["zstd", "-dc"], payload, "zstd")
    raise KernelImageError(f"{name}: unknown payload compression (magic {payload[:4].hex()})",
                           "use a kernel compressed with gzip, xz, zstd or lz4")


def _tool(argv: list[str], data: bytes, package: str) -> bytes:
    if shutil.which(argv[0]) is None:
        raise KernelImageError(f"{argv[0]} is needed to decompress this kernel", f"apt-get install {package}")
    proc = subprocess.run(argv, input=data, capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise KernelImageError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace').strip()[:200]}",
                               "the kernel image is corrupt: download it again")
    return proc.stdout
