"""Resolve a guest file's source ({path}, {fixture}, {asset}, {url}) to a file on disk.

`resolve` never touches the network: a missing asset or download is an AssetError naming the
one command that gets it (`harness assets build NAME`, `harness fetch GUEST`, `harness import
GUEST FILE`). `fetch` downloads over HTTP(S) into a temp dir of the cache, checks the published
checksum and only then commits; `import_file` does the same for a file the user already has.
A checksum mismatch or an interrupted download leaves nothing behind.

Url sources are cached under an index name derived from the URL (`url.<hash>.<file>`), so the
cache can tell which download a guest means even when only a checksum file names its hash.
With `decompress: true` (or gz/xz/bz2) a .gz/.xz/.bz2 download is also stored decompressed
(`...decompressed`), which is what the guest then boots.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.assets.cache import AssetCache, CacheEntry, sha256_file
from harness.errors import AssetError

REPO_ROOT = Path(__file__).resolve().parents[2]
_TIMEOUT_S = 60
_ATTEMPTS = 3
_RETRY_DELAY_S = 1.0   # scaled by 2**attempt; tests set it to 0
_CHUNK = 1 << 20
_ROLES = ("kernel", "initrd", "disk", "firmware")


@dataclass
class ResolvedAsset:
    path: Path
    sha256: str
    provenance: dict[str, Any] = field(default_factory=dict)


# -- resolve -------------------------------------------------------------------------------------
def resolve(source: dict, *, guest: str, offline: bool = True, cache: AssetCache | None = None) -> ResolvedAsset:
    cache = cache or AssetCache()
    if "path" in source:
        return _resolve_path(source, guest)
    if "fixture" in source:
        from harness.assets.fixtures import build_fixture  # the fixtures engineer's module
        path = Path(build_fixture(str(source["fixture"])))
        return ResolvedAsset(path, sha256_file(path), {"fixture": source["fixture"]})
    if "asset" in source:
        return _resolve_asset(str(source["asset"]), offline, cache)
    if "url" in source:
        return _resolve_url(source, guest, cache)
    raise AssetError(f"guest {guest}: source {source!r} names no path, fixture, asset or url",
                     "see docs/guest-files.md, Sources")


def _resolve_path(source: dict, guest: str) -> ResolvedAsset:
    path = Path(str(source["path"])).expanduser()
    if not path.is_absolute():
        path = REPO_ROOT / path
    if path.is_dir() and (path / "console.log").is_file():
        # A recorded cell directory (the replay backend plays it): identified by its console.
        return ResolvedAsset(path, sha256_file(path / "console.log"), {"path": str(path)})
    if not path.is_file():
        raise AssetError(f"guest {guest}: file {path} does not exist", "create it or fix the path in the guest file")
    sha = sha256_file(path)
    expected = source.get("sha256")
    if expected and sha != str(expected).lower():
        raise AssetError(f"guest {guest}: {path} has sha256 {sha}, the guest file expects {expected}",
                         "replace the file with the right one or update sha256 in the guest file")
    return ResolvedAsset(path, sha, {"path": str(path)})


def _resolve_asset(name: str, offline: bool, cache: AssetCache) -> ResolvedAsset:
    from harness.assets.recipes import build_asset, get_recipe
    get_recipe(name)  # an unknown name is a ConfigError-like AssetError listing the recipes
    entry = cache.verify(name, full=False)
    if entry is None:
        if offline:
            raise AssetError(f"asset {name} is not built (or its cached copy was corrupt and was removed)",
                             f"harness assets build {name}")
        entry = build_asset(name, cache=cache)
    return ResolvedAsset(entry.path, entry.sha256, {"asset": name, **entry.provenance})


def _resolve_url(source: dict, guest: str, cache: AssetCache) -> ResolvedAsset:
    name = url_cache_name(source)
    want = _wants_decompress(source)
    entry = cache.verify(name + ".decompressed" if want else name, full=False)
    if entry is None:
        raise AssetError(f"guest {guest}: {source['url']} is not in the cache",
                         f"harness fetch {guest}   (or on an offline machine: harness import {guest} FILE)")
    return ResolvedAsset(entry.path, entry.sha256, {"url": source["url"], **entry.provenance})


def url_cache_name(source: dict) -> str:
    url = str(source["url"])
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    base = source.get("filename") or Path(urllib.parse.urlparse(url).path).name or "download"
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", str(base))[:80]
    return f"url.{digest}.{safe}"


def _wants_decompress(source: dict) -> str | None:
    value = source.get("decompress")
    if not value:
        return None
    if value is True:
        name = str(source.get("filename") or source["url"]).lower()
        for ext in ("gz", "xz", "bz2"):
            if name.endswith("." + ext):
                return ext
        raise AssetError(f"{source['url']}: decompress: true but the name ends in no .gz/.xz/.bz2",
                         "say decompress: gz, xz or bz2")
    if value not in ("gz", "xz", "bz2"):
        raise AssetError(f"decompress: {value!r} is not gz, xz or bz2", "use decompress: true, gz, xz or bz2")
    return str(value)


# -- guest files -------------------------------------------------------------------------------------
def guest_sources(guest: str, guests_dir: Path | None = None) -> dict[str, dict]:
    """The url sources of guests/<guest>.yaml, by role (kernel, initrd, disk, firmware)."""
    path = (guests_dir or REPO_ROOT / "guests") / f"{guest}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise AssetError(f"no guest file {path}", f"use one of: {', '.join(known) or '(none)'}")
    import yaml
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise AssetError(f"{path}: not valid YAML ({e})", "fix the guest file") from None
    return {role: data[role] for role in _ROLES if isinstance(data.get(role), dict) and "url" in data[role]}


# -- checksums ----------------------------------------------------------------------------------------
def expected_checksum(source: dict, *, opener: Callable[[str], bytes] | None = None) -> tuple[str, str]:
    """(algorithm, hex digest) the download must match: given inline or read from checksum_url."""
    for algo in ("sha256", "sha512"):
        if source.get(algo):
            return algo, str(source[algo]).lower()
    if not source.get("checksum_url"):
        raise AssetError(f"{source['url']}: no sha256, sha512 or checksum_url", "add one to the guest file")
    fmt = str(source.get("checksum_format", "sha256"))
    text = (opener or _download_small)(str(source["checksum_url"])).decode(errors="replace")
    fname = source.get("filename") or Path(urllib.parse.urlparse(str(source["url"])).path).name
    return parse_checksum_file(text, str(fname), fmt, str(source["checksum_url"]))


def parse_checksum_file(text: str, filename: str, fmt: str, where: str = "checksum file") -> tuple[str, str]:
    """Find `filename` in a sha256sum/sha512sum-style or BSD-style (`SHA512 (f) = hex`) file."""
    if fmt not in ("sha256", "sha512", "bsd"):
        raise AssetError(f"checksum_format {fmt!r} is not sha256, sha512 or bsd", "fix the guest file")
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"^(SHA256|SHA512|MD5|SHA1)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)$", line)
        if m and Path(m.group(2)).name == filename:
            algo = m.group(1).lower()
            if algo in ("sha256", "sha512") and (fmt == "bsd" or fmt == algo):
                return algo, m.group(3).lower()
            continue
        m = re.match(r"^([0-9a-fA-F]{64}|[0-9a-fA-F]{128})\s+\*?(.+)$", line)
        if m and Path(m.group(2).strip()).name == filename and fmt != "bsd":
            algo = "sha256" if len(m.group(1)) == 64 else "sha512"
            if algo == fmt:
                return algo, m.group(1).lower()
    raise AssetError(f"{where} has no {fmt} line for {filename}",
                     "check the file name in the guest's url and the release's checksum file")


def _digest_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# -- fetch and import ------------------------------------------------------------------------------------
def fetch(guest: str, *, cache: AssetCache | None = None, guests_dir: Path | None = None,
          progress: Callable[[str], None] | None = None) -> list[CacheEntry]:
    """Download every url source of `guest` that is not cached yet; returns the cache entries."""
    cache = cache or AssetCache()
    sources = guest_sources(guest, guests_dir)
    if not sources:
        raise AssetError(f"guest {guest} has no url sources to fetch",
                         "its sources are built (harness assets build) or local paths")
    entries = []
    for role, source in sources.items():
        if progress:
            progress(f"{guest} {role}: {source['url']}")
        entries.append(fetch_source(source, cache))
    return entries


def fetch_source(source: dict, cache: AssetCache) -> CacheEntry:
    name = url_cache_name(source)

    def build(work: Path) -> tuple[Path, dict[str, Any]]:
        algo, digest = expected_checksum(source)
        target = work / name
        _download_with_retries(str(source["url"]), target)
        _check_digest(target, algo, digest, str(source["url"]))
        return target, {"url": source["url"], "checksum": f"{algo}:{digest}",
                        "checksum_url": source.get("checksum_url")}

    entry = cache.get_or_build(name, build)
    return _maybe_decompress(source, entry, cache)


def import_file(guest: str, role_or_file: str | Path, file: str | Path | None = None, *,
                cache: AssetCache | None = None, guests_dir: Path | None = None,
                opener: Callable[[str], bytes] | None = None,
                checksum_file: Path | None = None) -> CacheEntry:
    """Take a file the user downloaded themselves for `guest` into the cache.

    `import_file(guest, FILE)` matches FILE to the guest's url source by file name (or takes the
    only url source); `import_file(guest, ROLE, FILE)` names the role. The known checksum is
    checked where one exists (inline, or the checksum file when it can be read).
    """
    cache = cache or AssetCache()
    sources = guest_sources(guest, guests_dir)
    role = str(role_or_file) if file is not None else None
    path = Path(file if file is not None else role_or_file).expanduser()
    if not path.is_file():
        raise AssetError(f"{path} does not exist", "give the path of the downloaded file")
    source = _pick_source(guest, sources, role, path)
    if checksum_file is not None:
        # The release's checksum file, downloaded alongside the image (offline machines).
        local = Path(checksum_file).expanduser()
        if not local.is_file():
            raise AssetError(f"checksum file {local} does not exist", "give the path of the downloaded SHA256/SHA512")
        opener = lambda _url: local.read_bytes()  # noqa: E731
    try:
        algo, digest = expected_checksum(source, opener=opener)
    except AssetError as e:
        if "checksum_url" not in source:
            raise
        # Offline: the checksum file is out of reach. Importing is still the user's call; record it.
        algo, digest = "", ""
        unchecked = e.problem
    name = url_cache_name(source)

    def build(work: Path) -> tuple[Path, dict[str, Any]]:
        target = work / name
        shutil.copyfile(path, target)
        if digest:
            _check_digest(target, algo, digest, str(path))
        prov: dict[str, Any] = {"url": source["url"], "imported_from": str(path.resolve())}
        prov["checksum"] = f"{algo}:{digest}" if digest else f"unchecked ({unchecked})"
        return target, prov

    entry = cache.get_or_build(name, build, rebuild=True)
    return _maybe_decompress(source, entry, cache)


def _pick_source(guest: str, sources: dict[str, dict], role: str | None, path: Path) -> dict:
    if not sources:
        raise AssetError(f"guest {guest} has no url sources", "import applies to guests with {url: ...} sources")
    if role is not None:
        if role not in sources:
            raise AssetError(f"guest {guest} has no url source for {role}", f"use one of: {', '.join(sources)}")
        return sources[role]
    by_name = [s for s in sources.values()
               if Path(urllib.parse.urlparse(str(s["url"])).path).name == path.name or s.get("filename") == path.name]
    if len(by_name) == 1:
        return by_name[0]
    if len(sources) == 1:
        return next(iter(sources.values()))
    raise AssetError(f"cannot tell which of {guest}'s sources ({', '.join(sources)}) {path.name} is",
                     f"name the role: harness import {guest} FILE --role ROLE")


def _check_digest(path: Path, algo: str, digest: str, what: str) -> None:
    actual = _digest_file(path, algo)
    if actual != digest:
        raise AssetError(f"{what}: {algo} is {actual}, expected {digest}",
                         "the file is corrupt or not the release the guest file names: download it again")


def _maybe_decompress(source: dict, entry: CacheEntry, cache: AssetCache) -> CacheEntry:
    fmt = _wants_decompress(source)
    if fmt is None:
        return entry
    opener = {"gz": gzip.open, "xz": lzma.open, "bz2": bz2.open}[fmt]

    def build(work: Path) -> tuple[Path, dict[str, Any]]:
        target = work / "decompressed"
        try:
            with opener(entry.path, "rb") as inp, open(target, "wb") as out:
                shutil.copyfileobj(inp, out, _CHUNK)
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise AssetError(f"{source['url']}: cannot {fmt}-decompress the download ({e})",
                             "check decompress: in the guest file, or fetch again") from None
        return target, {**entry.provenance, "decompressed_from": entry.sha256, "compression": fmt}

    return cache.get_or_build(entry.name + ".decompressed", build)


def _download_with_retries(url: str, target: Path, attempts: int = _ATTEMPTS) -> None:
    """Mirrors drop connections: try again from the start (a checksum mismatch is not retried)."""
    import time
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        _download(url, target)  # raises the one-line error at once: nothing to retry
    for attempt in range(1, attempts + 1):
        try:
            _download(url, target)
            return
        except AssetError:
            if attempt == attempts:
                raise
            time.sleep(min(2 ** attempt, 10) * _RETRY_DELAY_S)


def _download(url: str, target: Path) -> None:
    """Stream `url` to `target`; a short or broken transfer raises AssetError (the caller's temp dir
    is removed, so nothing half-written survives)."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise AssetError(f"{url}: only http and https downloads are supported", "fix the url in the guest file")
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp, open(target, "wb") as out:
            expected = resp.headers.get("Content-Length")
            got = 0
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                got += len(chunk)
        if expected is not None and got != int(expected):
            raise AssetError(f"{url}: the transfer stopped after {got} of {expected} bytes",
                             "fetch again (harness fetch retries from the start)")
    except AssetError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise AssetError(f"{url}: download failed ({type(e).__name__}: {e})",
                         "check the network, or download it elsewhere and use harness import") from None
    except Exception as e:  # http.client.IncompleteRead and friends
        raise AssetError(f"{url}: download failed ({type(e).__name__}: {e})",
                         "fetch again, or download it elsewhere and use harness import") from None


def _download_small(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            return resp.read(16 << 20)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise AssetError(f"cannot read checksum file {url} ({e})",
                         "check the network; or download image and checksum elsewhere and run harness import GUEST FILE") from None
