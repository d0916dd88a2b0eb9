"""A reproducible cpio "newc" archive writer (the format the Linux kernel unpacks as initramfs).

Written in Python rather than driving cpio(1) so the bytes depend only on the inputs: entries
are sorted by path, every mtime is the same fixed epoch, uid/gid are 0, inode numbers are
assigned in order, and device nodes can be added without root.
"""
from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass
from pathlib import Path

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class CpioEntry:
    path: str             # inside the archive, no leading '/'
    mode: int             # full st_mode (type | permissions)
    data: bytes = b""     # file content, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)


class CpioBuilder:
    def __init__(self) -> None:
        self._entries: dict[str, CpioEntry] = {}

    def _add(self, entry: CpioEntry) -> None:
        path = entry.path.strip("/")
        if not path or ".." in path.split("/"):
            raise ValueError(f"bad archive path {entry.path!r}")
        # Parents first, so the kernel can create every file (it does not mkdir -p).
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            self._entries.setdefault(parent, CpioEntry(parent, stat.S_IFDIR | 0o755))
        self._entries[path] = CpioEntry(path, entry.mode, entry.data, entry.rdev)

    def directory(self, path: str, perm: int = 0o755) -> None:
        self._add(CpioEntry(path, stat.S_IFDIR | perm))

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        self._add(CpioEntry(path, stat.S_IFREG | perm, data))

    def file_from(self, path: str, src: Path, perm: int | None = None) -> None:
        mode = src.stat().st_mode
        self.file(path, src.read_bytes(), perm if perm is not None else (0o755 if mode & 0o111 else 0o644))

    def symlink(self, path: str, target: str) -> None:
        self._add(CpioEntry(path, stat.S_IFLNK | 0o777, target.encode()))

    def char_device(self, path: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._add(CpioEntry(path, stat.S_IFCHR | perm, b"", (major, minor)))

    def paths(self) -> list[str]:
        return sorted(self._entries)

    def to_bytes(self, mtime: int) -> bytes:
        out = io.BytesIO()
        for ino, path in enumerate(sorted(self._entries), start=1):
            e = self._entries[path]
            _write_entry(out, ino, e.path, e.mode, e.data, e.rdev, mtime,
                         nlink=2 if stat.S_ISDIR(e.mode) else 1)
        _write_entry(out, 0, _TRAILER, 0, b"", (0, 0), 0, nlink=1)
        # newc archives are conventionally padded to 512 bytes.
        pad = (-out.tell()) % 512
        out.write(b"\0" * pad)
        return out.getvalue()

    def to_gzip(self, mtime: int) -> bytes:
        """The archive, gzip-compressed with no name and a zero header mtime (reproducible)."""
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
            gz.write(self.to_bytes(mtime))
        return buf.getvalue()


def _write_entry(out: io.BytesIO, ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int],
                 mtime: int, nlink: int) -> None:
    name_b = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
    out.write(_MAGIC + b"".join(b"%08X" % v for v in fields))
    out.write(name_b)
    out.write(b"\0" * ((-(110 + len(name_b))) % 4))
    out.write(data)
    out.write(b"\0" * ((-len(data)) % 4))
