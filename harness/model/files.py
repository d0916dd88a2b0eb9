"""The one way the harness replaces a file: temp file beside it, fsync, os.replace.

A reader (the live table, a report, another xdist worker, a killed run's resume) sees the old
file or the whole new one, never a torn one; after a crash the new content is on disk or absent.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
from pathlib import Path
from typing import IO, Any, Iterator


def cache_root() -> Path:
    """The harness's cache ($HARNESS_CACHE, else ~/.cache/harness): assets, generated cffi modules."""
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "harness"


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` when the block ends without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_temp_serial = itertools.count()


def _create_temp(path: Path) -> tuple[int, str]:
    """A new file beside `path` that no other process or thread can be creating (what
    tempfile.mkstemp does; tempfile itself costs the VMM child's start-up several imports)."""
    while True:
        tmp = str(path.parent / f".{path.name[:40]}.{os.getpid()}.{threading.get_ident()}.{next(_temp_serial)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_file(path, mode) as f:
        f.write(data)


def write_json_atomic(path: Path, data: Any, indent: int | None = 1) -> None:
    write_atomic(path, json.dumps(data, indent=indent, default=str).encode())


class LineTail:
    """The complete lines appended to a file since the last call; a torn last line waits for its
    end. The one tailer: the runner's events reader and the QEMU backend's log watcher use it."""

    def __init__(self, path: Path, max_chunk: int = -1) -> None:
        self.path = Path(path)
        self.offset = 0
        self.max_chunk = max_chunk          # bytes read per call (-1: all there is)
        self._partial = b""

    def lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(self.max_chunk)
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        parts = (self._partial + chunk).split(b"\n")
        self._partial = parts.pop()
        return parts

    def take_partial(self) -> bytes:
        """The unfinished last line (the writer is gone and will never end it)."""
        partial, self._partial = self._partial, b""
        return partial
