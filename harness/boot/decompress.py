"""Decompressors for kernel images and bzImage payloads, each with an output cap.

A kernel file is hostile input too: every decompressor stops at `cap` bytes of output and
reports a KernelImageError instead of filling host memory. Formats are told apart by their
magic bytes, the way Linux's own decompressor stub and the BSD boot loaders do.

Linux appends the decompressed size (4 bytes, little-endian) after every compressed payload
(scripts/Makefile.lib size_append), so trailing bytes after the end of a stream are expected.
"""
from __future__ import annotations

import bz2
import lzma
import zlib

from harness.errors import KernelImageError

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
LZMA_ALONE_MAGIC = b"\x5d\x00\x00"
BZIP2_MAGIC = b"BZh"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"      # 0x184C2102 little-endian
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZO_MAGIC = b"\x89LZO\x00\r\n\x1a\n"

LZ4_LEGACY_BLOCK = 8 * 1024 * 1024          # each legacy block decompresses to at most 8 MiB


def sniff(data: bytes) -> str | None:
    """The compression format of `data` by magic, or None when it is not compressed."""
    for name, magic in (("gzip", GZIP_MAGIC), ("xz", XZ_MAGIC), ("bzip2", BZIP2_MAGIC),
                        ("lz4", LZ4_LEGACY_MAGIC), ("zstd", ZSTD_MAGIC), ("lzo", LZO_MAGIC),
                        ("lzma", LZMA_ALONE_MAGIC)):
        if data.startswith(magic):
            return name
    return None


def decompress(data: bytes, fmt: str, cap: int, what: str = "kernel") -> bytes:
    """Decompress `data` of format `fmt`, refusing to produce more than `cap` bytes."""
    funcs = {"gzip": gunzip, "xz": unxz, "lzma": unlzma, "bzip2": bunzip2, "lz4": unlz4_legacy,
             "zstd": unzstd}
    if fmt not in funcs:
        raise KernelImageError(f"{what} is compressed with {fmt}, which the harness cannot decompress",
                               "decompress it on the host (or rebuild it with gzip, xz, lz4 or zstd)")
    return funcs[fmt](data, cap, what)


def _too_big(what: str, cap: int) -> KernelImageError:
    return KernelImageError(f"{what} decompresses to more than {cap // (1024 * 1024)} MiB",
                            "give the guest more memory, or check that the file is really a kernel")


def _corrupt(what: str, fmt: str, exc: Exception) -> KernelImageError:
    return KernelImageError(f"{what} is not valid {fmt} data ({exc})",
                            "download the file again: it is corrupt or truncated")


def _stream(decomp, data: bytes, cap: int, what: str, fmt: str) -> bytes:
    """Drive a zlib/lzma/bz2-style decompressor object with a max_length cap."""
    try:
        out = decomp.decompress(data, cap + 1)
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
        raise _corrupt(what, fmt, exc) from None
    if len(out) > cap:
        raise _too_big(what, cap)
    if not decomp.eof:
        raise KernelImageError(f"{what} ends in the middle of its {fmt} stream (truncated)",
                               "download the file again: it is truncated")
    return out


def gunzip(data: bytes, cap: int, what: str = "kernel") -> bytes:
    return _stream(zlib.decompressobj(wbits=31), data, cap, what, "gzip")


def unxz(data: bytes, cap: int, what: str = "kernel") -> bytes:
    return _stream(lzma.LZMADecompressor(format=lzma.FORMAT_XZ), data, cap, what, "xz")


def unlzma(data: bytes, cap: int, what: str = "kernel") -> bytes:
    return _stream(lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), data, cap, what, "lzma")


def bunzip2(data: bytes, cap: int, what: str = "kernel") -> bytes:
    return _stream(bz2.BZ2Decompressor(), data, cap, what, "bzip2")


def unzstd(data: bytes, cap: int, what: str = "kernel") -> bytes:
    try:
        import zstandard
    except ImportError:
        raise KernelImageError(f"{what} is zstd-compressed and the zstandard module is missing",
                               "pip install zstandard") from None
    # decompressobj has no output cap, so feed it small input chunks and check after each:
    # one 4 KiB chunk holds at most ~1400 blocks of <= 128 KiB, which bounds the overshoot.
    decomp = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    try:
        for pos in range(0, len(data), 4096):
            out += decomp.decompress(data[pos:pos + 4096])
            if len(out) > cap:
                raise _too_big(what, cap)
            if decomp.eof:
                break
    except zstandard.ZstdError as exc:
        raise _corrupt(what, "zstd", exc) from None
    if not decomp.eof:
        raise KernelImageError(f"{what} ends in the middle of its zstd stream (truncated)",
                               "download the file again: it is truncated")
    return bytes(out)


def unlz4_legacy(data: bytes, cap: int, what: str = "kernel") -> bytes:
    """LZ4 legacy frames: magic, then blocks of {u32 LE compressed size, LZ4 block}.

    Several frames may follow each other (each restarts with the magic). The kernel's size
    trailer is the 4 bytes left over after the last block.
    """
    try:
        import lz4.block
    except ImportError:
        raise KernelImageError(f"{what} is lz4-compressed and the lz4 module is missing",
                               "pip install lz4") from None
    if not data.startswith(LZ4_LEGACY_MAGIC):
        raise KernelImageError(f"{what} does not start with the lz4 legacy magic 0x184C2102",
                               "download the file again: it is corrupt")
    out = bytearray()
    pos = len(LZ4_LEGACY_MAGIC)
    blocks = 0
    while len(data) - pos >= 4:
        size = int.from_bytes(data[pos:pos + 4], "little")
        if data[pos:pos + 4] == LZ4_LEGACY_MAGIC:      # a new frame
            pos += 4
            continue
        if blocks and len(data) - pos == 4:            # the size trailer after the last block
            break
        pos += 4
        if size == 0 or pos + size > len(data):
            raise KernelImageError(f"{what}: lz4 block {blocks} claims {size} bytes but only "
                                   f"{len(data) - pos} remain (truncated or corrupt)",
                                   "download the file again: it is truncated")
        try:
            out += lz4.block.decompress(data[pos:pos + size], uncompressed_size=LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError as exc:
            raise _corrupt(what, "lz4", exc) from None
        pos += size
        blocks += 1
        if len(out) > cap:
            raise _too_big(what, cap)
    if not blocks:
        raise KernelImageError(f"{what}: lz4 stream has no blocks (truncated)",
                               "download the file again: it is truncated")
    return bytes(out)
