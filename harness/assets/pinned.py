"""Resolve a source to exactly the bytes a recorded cell booted (by sha256), or refuse.

The cache is content-addressed, so the blob a cell ran with may already be there whatever name
it was cached under (a bundle made with --with-assets puts it there): that copy wins. Otherwise
the source is resolved as usual and its sha256 must match; a different copy (a rebuilt asset, an
edited fixture, a replaced file) is refused with the command that gets the right bytes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.assets.cache import AssetCache, sha256_file
from harness.assets.sources import ResolvedAsset, resolve
from harness.errors import AssetError

BUNDLE_HINT = "or reproduce from a bundle made with `harness bundle CELL --with-assets`"


def cached_blob(sha256: str, cache: AssetCache | None = None) -> Path | None:
    """The cache's blob with this content, verified, or None."""
    cache = cache or AssetCache()
    blob = cache.blob_path(sha256)
    if blob.is_file() and sha256_file(blob) == sha256:
        return blob
    return None


def resolve_pinned(source: dict[str, Any], *, role: str, guest: str, sha256: str, offline: bool = True,
                   commit: str | None = None, cache: AssetCache | None = None) -> ResolvedAsset:
    """`commit`: the harness commit the recorded cell ran (what built its fixtures)."""
    cache = cache or AssetCache()
    blob = cached_blob(sha256, cache)
    if blob is not None:
        return ResolvedAsset(blob, sha256, {"pinned": True, "cache_blob": str(blob), **_kind(source)})
    try:
        asset = resolve(source, guest=guest, offline=offline, cache=cache)
    except AssetError as exc:
        raise AssetError(f"{exc.problem} (the recorded cell booted {role} sha256 {sha256})",
                         f"{exc.fix}; {BUNDLE_HINT}" if exc.fix else BUNDLE_HINT) from None
    if asset.sha256 != sha256:
        raise AssetError(f"guest {guest}: the {role} here ({asset.path}) has sha256 {asset.sha256}, "
                         f"the recorded cell booted {sha256}", fetch_command(source, guest, sha256, commit))
    return asset


def fetch_command(source: dict[str, Any], guest: str, sha256: str, commit: str | None = None) -> str:
    """The command that puts the bytes with `sha256` where the source resolves (one line)."""
    if "asset" in source:
        return (f"harness assets build {source['asset']} --rebuild   (a reproducible build of the package "
                f"versions in the cell's provenance gives the same bytes); {BUNDLE_HINT}")
    if "url" in source:
        return f"harness import {guest} FILE   (FILE: the download with sha256 {sha256}); {BUNDLE_HINT}"
    if "fixture" in source:
        return (f"git checkout {commit or 'COMMIT'} -- fixtures harness/assets/fixtures.py harness/layout.py"
                f"   (the checkout that built it); {BUNDLE_HINT}")
    return f"put the file with sha256 {sha256} back at {source.get('path')}; {BUNDLE_HINT}"


def _kind(source: dict[str, Any]) -> dict[str, Any]:
    return {k: source[k] for k in ("path", "fixture", "asset", "url") if k in source}
