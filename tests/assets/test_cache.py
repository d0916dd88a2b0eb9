"""The content-addressed cache: atomic commits, corruption repair, locks, nothing left on failure."""
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from harness.assets.cache import AssetCache, sha256_file
from harness.errors import AssetError


def _builder(content: bytes, calls: list | None = None):
    def build(work: Path):
        if calls is not None:
            calls.append(work)
        out = work / "out.bin"
        out.write_bytes(content)
        return out, {"made_by": "test"}
    return build


def test_commit_lookup_and_read_only_blob(tmp_path):
    cache = AssetCache(tmp_path)
    entry = cache.get_or_build("thing", _builder(b"hello"))
    assert entry.sha256 == sha256_file(entry.path)
    assert entry.path.parent.name == entry.sha256[:2]
    assert not entry.path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    again = cache.lookup("thing")
    assert again is not None and again.sha256 == entry.sha256 and again.provenance == {"made_by": "test"}
    assert list((tmp_path / "tmp").iterdir()) == []  # the work dir is gone


def test_cached_asset_is_not_rebuilt(tmp_path):
    cache, calls = AssetCache(tmp_path), []
    cache.get_or_build("x", _builder(b"1", calls))
    cache.get_or_build("x", _builder(b"1", calls))
    assert len(calls) == 1


def test_corrupt_blob_is_detected_removed_and_rebuilt(tmp_path):
    cache, calls = AssetCache(tmp_path), []
    entry = cache.get_or_build("x", _builder(b"good bytes", calls))
    os.chmod(entry.path, 0o644)
    entry.path.write_bytes(b"evil bytes")
    assert cache.verify("x") is None            # detected ...
    assert not entry.path.exists()              # ... and removed
    rebuilt = cache.get_or_build("x", _builder(b"good bytes", calls))
    assert rebuilt.sha256 == entry.sha256 and rebuilt.path.read_bytes() == b"good bytes"
    assert len(calls) == 2


def test_damaged_index_counts_as_missing(tmp_path):
    cache = AssetCache(tmp_path)
    cache.get_or_build("x", _builder(b"a"))
    (tmp_path / "index" / "x.json").write_text("{not json")
    assert cache.lookup("x") is None


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_build_leaves_nothing(tmp_path, exc):
    cache = AssetCache(tmp_path)

    def build(work: Path):
        (work / "partial.bin").write_bytes(b"half")
        raise exc

    with pytest.raises(type(exc)):
        cache.get_or_build("x", build)
    assert cache.lookup("x") is None
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "blobs").exists() or not any((tmp_path / "blobs").rglob("*"))


def test_expected_checksum_mismatch_stores_nothing(tmp_path):
    cache = AssetCache(tmp_path)
    with pytest.raises(AssetError, match="expected"):
        cache.get_or_build("x", _builder(b"data"), expected_sha256="0" * 64)
    assert cache.lookup("x") is None


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden"])
def test_names_cannot_escape_the_cache(tmp_path, name):
    with pytest.raises(AssetError):
        AssetCache(tmp_path).lookup(name)


def _parallel_build(root: str, counter: str) -> str:
    import time

    def build(work: Path):
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(0.3)  # long enough that the other worker is waiting on the lock
        out = work / "o"
        out.write_bytes(b"shared")
        return out, {}
    return AssetCache(root).get_or_build("shared", build).sha256


def test_parallel_workers_build_once(tmp_path):
    counter = tmp_path / "count"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        hashes = pool.starmap(_parallel_build, [(str(tmp_path / "c"), str(counter))] * 3)
    assert len(set(hashes)) == 1
    assert counter.read_text().count("built") == 1


def test_sweep_tmp_removes_stale_dirs(tmp_path):
    cache = AssetCache(tmp_path)
    stale = tmp_path / "tmp" / "killed.abc"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))
    assert cache.sweep_tmp(older_than_s=60) == 1 and not stale.exists()


def test_quick_verify_skips_rehash_until_the_blob_changes(tmp_path, monkeypatch):
    from harness.assets import cache as cache_mod
    cache = AssetCache(tmp_path)
    entry = cache.get_or_build("x", _builder(b"content"))
    assert cache.verify("x") is not None          # full: hashes and records the stamp
    calls = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    assert cache.verify("x", full=False) is not None and calls == []
    os.chmod(entry.path, 0o644)
    entry.path.write_bytes(b"CONTENT")             # same size, new mtime
    assert cache.verify("x", full=False) is None and calls  # re-hashed, found corrupt, removed
