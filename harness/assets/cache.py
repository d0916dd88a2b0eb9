"""Content-addressed asset cache: blobs by sha256, a name -> hash index with provenance.

Layout under the cache root ($HARNESS_CACHE, else ~/.cache/harness):
    blobs/<aa>/<sha256>     the content, read-only (0444)
    index/<name>.json       {name, sha256, size, provenance, committed_at}
    locks/<name>.lock       flock'd while an asset is built or fetched (pytest-xdist workers build once)
    tmp/<random>/           work space of one build/download, removed on any exception
    apt/                    private apt state for foreign-architecture downloads (harness.assets.debian)

Every write is temp file + fsync + os.replace, so a reader never sees half a blob or half an
index entry, and a killed build leaves at most a stray temp dir (swept by `sweep_tmp`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.errors import AssetError
from harness.model.files import atomic_file, cache_root, write_atomic

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def default_root() -> Path:
    return cache_root()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CacheEntry:
    name: str
    sha256: str
    size: int
    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)


# A builder gets an empty work directory and returns (the produced file, its provenance).
Builder = Callable[[Path], tuple[Path, dict[str, Any]]]


class AssetCache:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    # -- paths -------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        if not _HASH_RE.match(sha256):
            raise AssetError(f"{sha256!r} is not a sha256 hex digest", "give 64 lowercase hex digits")
        return self.root / "blobs" / sha256[:2] / sha256

    def _index_path(self, name: str) -> Path:
        return self.root / "index" / f"{check_name(name)}.json"

    def _lock_path(self, name: str) -> Path:
        return self.root / "locks" / f"{check_name(name)}.lock"

    # -- reading -----------------------------------------------------------------------
    def lookup(self, name: str) -> CacheEntry | None:
        """The index entry for `name` if it and its blob exist (no re-hash; see `verify`)."""
        try:
            meta = json.loads(self._index_path(name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a damaged index entry is the same as none: the asset gets rebuilt
        sha = meta.get("sha256", "")
        if not isinstance(sha, str) or not _HASH_RE.match(sha):
            return None
        blob = self.blob_path(sha)
        if not blob.is_file():
            return None
        return CacheEntry(name, sha, int(meta.get("size", -1)), blob, meta.get("provenance", {}))

    def verify(self, name: str, *, full: bool = True) -> CacheEntry | None:
        """Check the blob of `name`; a mismatch removes blob and index entry and returns None.

        `full=False` (every cell's resolve) re-hashes only when the blob's size, mtime or inode
        changed since it was last hashed: a 50 MB vmlinux is not re-read for each boot. `full`
        (builds, `harness assets verify`) always re-hashes, which also catches silent bit rot.
        """
        entry = self.lookup(name)
        if entry is None:
            return None
        st = entry.path.stat()
        if entry.size >= 0 and st.st_size != entry.size:
            self._discard(entry)
            return None
        stamp = _stat_stamp(st)
        if not full and self._read_stamp(entry.sha256) == stamp:
            return entry
        if sha256_file(entry.path) != entry.sha256:
            self._discard(entry)
            return None
        self._write_stamp(entry.sha256, stamp)
        return entry

    def _stamp_path(self, sha256: str) -> Path:
        return self.root / "verified" / sha256

    def _read_stamp(self, sha256: str) -> str | None:
        try:
            return self._stamp_path(sha256).read_text()
        except OSError:
            return None

    def _write_stamp(self, sha256: str, stamp: str) -> None:
        with contextlib.suppress(OSError):
            write_atomic(self._stamp_path(sha256), stamp.encode())

    def names(self) -> list[str]:
        index = self.root / "index"
        if not index.is_dir():
            return []
        return sorted(p.stem for p in index.glob("*.json"))

    # -- writing -----------------------------------------------------------------------
    def commit(self, name: str, src: Path, provenance: dict[str, Any],
               expected_sha256: str | None = None) -> CacheEntry:
        """Move `src` into the blob store and point `name` at it.

        `expected_sha256` (a download's published checksum) is checked before anything is
        stored: a mismatch raises AssetError and the cache is unchanged.
        """
        sha = sha256_file(src)
        if expected_sha256 is not None and sha != expected_sha256.lower():
            raise AssetError(f"{name}: sha256 of the file is {sha}, expected {expected_sha256.lower()}",
                             "the download is corrupt or the checksum is stale: fetch again or update the guest file")
        size = src.stat().st_size
        blob = self.blob_path(sha)
        if not (blob.is_file() and blob.stat().st_size == size):
            self._store_blob(src, blob)
        meta = {"name": name, "sha256": sha, "size": size, "provenance": provenance,
                "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_atomic(self._index_path(name), json.dumps(meta, indent=2, sort_keys=True).encode())
        return CacheEntry(name, sha, size, blob, provenance)

    def _store_blob(self, src: Path, blob: Path) -> None:
        # cached blobs are inputs: nobody writes them in place (mode 0444)
        with atomic_file(blob, 0o444) as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, _CHUNK)

    def _discard(self, entry: CacheEntry) -> None:
        for p in (entry.path, self._index_path(entry.name)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def remove(self, name: str) -> None:
        entry = self.lookup(name)
        if entry is not None:
            self._discard(entry)
        else:
            with contextlib.suppress(FileNotFoundError):
                self._index_path(name).unlink()

    # -- concurrency and scratch space ---------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive per-name lock across processes (flock on locks/<name>.lock)."""
        path = self._lock_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def temp_dir(self, label: str = "work") -> Iterator[Path]:
        """A fresh directory under tmp/, removed when the block ends, however it ends."""
        base = self.root / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=base, prefix=f"{label}."))
        try:
            yield path
        finally:
            _rmtree(path)

    def sweep_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp dirs left by killed processes (SIGKILL skips `finally`)."""
        base = self.root / "tmp"
        removed = 0
        if not base.is_dir():
            return 0
        now = time.time()
        for p in base.iterdir():
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > older_than_s:
                    _rmtree(p)
                    removed += 1
        return removed

    # -- the one entry point builders use ---------------------------------------------------
    def get_or_build(self, name: str, builder: Builder, *, rebuild: bool = False,
                     expected_sha256: str | None = None) -> CacheEntry:
        """The verified entry for `name`, building it (once across processes) when absent or corrupt."""
        with self.lock(name):
            if not rebuild:
                entry = self.verify(name)
                if entry is not None:
                    return entry
            with self.temp_dir(name) as work:
                produced, provenance = builder(work)
                return self.commit(name, produced, provenance, expected_sha256=expected_sha256)


def _stat_stamp(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}"


def check_name(name: str) -> str:
    """Asset names become file names: refuse anything that could escape the cache directory."""
    if not _NAME_RE.match(name) or ".." in name:
        raise AssetError(f"{name!r} is not a valid asset name", "use letters, digits, '.', '_', '+', '-'")
    return name


def _rmtree(path: Path) -> None:
    # Blobs and extracted package trees can be read-only; make them writable so rmtree succeeds.
    def onerror(func: Any, p: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(p, 0o700)
            parent = os.path.dirname(p)
            os.chmod(parent, 0o700)
            func(p)
    if path.exists():
        shutil.rmtree(path, onerror=onerror)
