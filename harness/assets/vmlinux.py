"""Get the vmlinux ELF (with its PVH note) out of an x86 bzImage, for the PVH guests.

The extraction itself (setup header -> payload -> gzip/xz/lz4-legacy/zstd, with a size cap) is
the loaders' harness.boot.image.extract_vmlinux; this module only writes its result as an asset.
"""
from __future__ import annotations

from pathlib import Path

from harness.boot.image import extract_vmlinux as _extract
from harness.errors import KernelImageError

_VMLINUX_CAP = 512 * 1024 * 1024  # no real vmlinux is bigger; a bigger one is a decompression bomb


def extract_vmlinux(bzimage: Path, dest: Path) -> Path:
    """Write the ELF inside `bzimage` to `dest`; returns `dest`."""
    data = _extract(bzimage.read_bytes(), _VMLINUX_CAP, bzimage.name)
    if data[:4] != b"\x7fELF":
        raise KernelImageError(f"{bzimage.name}: the payload is not an ELF file", "give a bzImage built by Linux")
    dest.write_bytes(data)
    return dest
