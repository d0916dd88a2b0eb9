"""Disk images behind virtio-blk, never written: a copy-on-write overlay in the cell's workdir.

`CowDisk` reads blocks from the base image until the guest writes them; written blocks live in a
sparse overlay file (and a set of their numbers). `prepare_image` turns a qcow2 image into a raw
base with `qemu-img convert` (into the workdir; the original is only read).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

from harness.errors import ConfigError

BLOCK = 4096
SECTOR = 512
QCOW2_MAGIC = b"QFI\xfb"


def image_format(path: Path) -> str:
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"


def prepare_image(path: Path, workdir: Path, fmt: str = "auto") -> Path:
    """A raw file the VMM may read: `path` itself when raw, a converted copy for qcow2."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"disk image {path} does not exist", "build or fetch the guest's disk first")
    fmt = image_format(path) if fmt in ("auto", "") else fmt   # DISK_FORMATS (harness.model.builtin_options)
    if fmt == "raw":
        return path
    if fmt != "qcow2":
        raise ConfigError(f"disk format {fmt!r} is not supported by the built-in backend", "use raw or qcow2")
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise ConfigError("a qcow2 disk needs qemu-img to convert it", "install qemu-utils")
    out = Path(workdir) / f"{path.name}.raw"
    proc = subprocess.run([qemu_img, "convert", "-O", "raw", str(path), str(out)], capture_output=True, text=True)
    if proc.returncode:
        raise ConfigError(f"qemu-img could not convert {path.name}: {proc.stderr.strip()[:200]}",
                          "check the image with qemu-img check")
    return out


class CowDisk:
    def __init__(self, base: Path, overlay: Path, read_only: bool = False) -> None:
        self.base_path = Path(base)
        self._base = open(self.base_path, "rb")
        self.size = os.fstat(self._base.fileno()).st_size
        self.read_only = read_only
        self._overlay = open(overlay, "w+b")
        self._dirty: set[int] = set()
        self._lock = threading.Lock()

    @property
    def sectors(self) -> int:
        return self.size // SECTOR

    def _block(self, n: int) -> bytes:
        src = self._overlay if n in self._dirty else self._base
        src.seek(n * BLOCK)
        data = src.read(BLOCK)
        return data.ljust(min(BLOCK, self.size - n * BLOCK), b"\0")

    def in_range(self, offset: int, length: int) -> bool:
        return 0 <= offset and length >= 0 and offset + length <= self.size

    def read(self, offset: int, length: int) -> bytes:
        if not self.in_range(offset, length):
            raise ValueError("read outside the disk")
        out = bytearray()
        with self._lock:
            pos = offset
            while pos < offset + length:
                n, inner = divmod(pos, BLOCK)
                take = min(BLOCK - inner, offset + length - pos)
                out += self._block(n)[inner:inner + take]
                pos += take
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        if self.read_only or not self.in_range(offset, len(data)):
            raise ValueError("write refused")
        with self._lock:
            pos, end = offset, offset + len(data)
            while pos < end:
                n, inner = divmod(pos, BLOCK)
                take = min(BLOCK - inner, end - pos)
                block = bytearray(self._block(n))
                block[inner:inner + take] = data[pos - offset:pos - offset + take]
                self._overlay.seek(n * BLOCK)
                self._overlay.write(block)
                self._dirty.add(n)
                pos += take

    def flush(self) -> None:
        with self._lock:
            self._overlay.flush()

    def close(self) -> None:
        self._base.close()
        self._overlay.close()
