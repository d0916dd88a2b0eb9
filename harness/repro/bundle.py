"""`harness bundle CELL -o FILE`: one file that carries a cell to another machine.

A bundle is a tar.gz:
    manifest.json     bundle format, harness version, host facts, the asset manifest
                      (role -> sha256, size, provenance, member when included)
    result.json       the CellResult
    cell/             the cell's work directory: console.log, console.timing.jsonl, events.jsonl,
                      guests/<name>.yaml (the guest file as it was), summary.json, backend spec/stderr
    flight-recorder.json   the last VM exits (also inside result.json), on their own for reading
    assets/<sha256>   with --with-assets: the kernel/initrd/disk/firmware bytes the cell booted
`harness repro FILE` unpacks it; included assets go into the content-addressed cache (checked
against the manifest first), so a clean cache on an offline machine is enough.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

from harness.assets.cache import AssetCache, sha256_file
from harness.assets.pinned import cached_blob
from harness.errors import AssetError, ConfigError
from harness.model.files import atomic_file
from harness.repro.source import ASSET_DIR, CELL_DIR_NAME, MANIFEST_NAME, RESULT_NAME, ReproSource
from harness.runner.repro_record import harness_version

BUNDLE_FORMAT = 1


def make_bundle(source: ReproSource, out: Path, with_assets: bool = False) -> dict[str, Any]:
    """Write the bundle of `source` to `out` atomically; returns its manifest."""
    assets = _asset_manifest(source.result, with_assets)
    manifest = {"format": BUNDLE_FORMAT, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "cell_id": source.result["cell_id"], "outcome": source.result.get("outcome"),
                "harness": {"recorded": source.record.get("harness"), "bundled_by": harness_version()},
                "host": {"cell": source.result.get("host", {}), "run": _run_host(source)},
                "assets": {role: {k: v for k, v in a.items() if k != "file"} for role, a in assets.items()}}
    with atomic_file(out) as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
        _add_bytes(tar, MANIFEST_NAME, json.dumps(manifest, indent=1, default=str).encode())
        _add_bytes(tar, RESULT_NAME, json.dumps(source.result, indent=1, default=str).encode())
        _add_bytes(tar, "flight-recorder.json", json.dumps(source.result.get("flight_recorder", []), indent=1).encode())
        tar.add(source.workdir, arcname=CELL_DIR_NAME, filter=_regular_files_only)
        for role, asset in assets.items():
            if asset.get("member"):
                tar.add(asset["file"], arcname=asset["member"])
    return manifest


def _asset_manifest(result: dict[str, Any], with_assets: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for role, prov in (result.get("provenance") or {}).items():
        sha = prov.get("sha256")
        entry: dict[str, Any] = {"sha256": sha, "provenance": {k: v for k, v in prov.items() if k != "sha256"}}
        if with_assets:
            path = _asset_file(role, prov)
            entry.update(file=path, member=f"{ASSET_DIR}/{sha}", size=path.stat().st_size)
        out[role] = entry
    return out


def _asset_file(role: str, prov: dict[str, Any]) -> Path:
    """The bytes the cell booted: at the recorded path if unchanged, else the cache's blob of that hash."""
    sha = prov.get("sha256") or ""
    path = Path(prov.get("path") or "")
    if path.is_file() and sha256_file(path) == sha:
        return path
    blob = cached_blob(sha) if len(sha) == 64 else None
    if blob is None:
        raise AssetError(f"the {role} the cell booted (sha256 {sha}) is no longer at {path} nor in the cache",
                         "bundle without --with-assets, or rebuild/fetch that exact asset first")
    return blob


def _run_host(source: ReproSource) -> dict[str, Any]:
    run_json = source.workdir.parent.parent / "run.json"
    try:
        return json.loads(run_json.read_text()).get("host", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _regular_files_only(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return info if info.isfile() or info.isdir() else None


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def import_assets(source: ReproSource, unpack_dir: Path, cache: AssetCache | None = None) -> list[str]:
    """Put a bundle's included assets into the cache (each checked against the manifest); roles imported."""
    cache = cache or AssetCache()
    imported = []
    for role, asset in (source.manifest.get("assets") or {}).items():
        member = asset.get("member")
        if not member:
            continue
        path = unpack_dir / member
        sha = str(asset.get("sha256"))
        if not path.is_file() or sha256_file(path) != sha:
            raise ConfigError(f"{source.origin}: {member} is missing or does not have the sha256 its manifest "
                              "names", "make the bundle again (harness bundle CELL -o FILE --with-assets)")
        cache.commit(f"bundle.{sha[:16]}.{role}", path, {**asset.get("provenance", {}), "from_bundle": source.origin},
                     expected_sha256=sha)
        imported.append(role)
    return imported
