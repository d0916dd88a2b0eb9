"""Debian packages as asset inputs: download with `apt-get download`, extract with `dpkg-deb -x`.

The machine's dpkg/apt configuration is never changed. Packages of the host architecture are
resolved through the system's apt lists (read only). A foreign architecture (arm64 on an amd64
host) goes through a private apt state directory under the cache root, made by passing
APT::Architectures, Dir::State::Lists and Dir::Cache on the command line (see
../shared/notes/machine.md). Meta packages (linux-image-cloud-amd64) are resolved to the concrete
package they depend on; the resolved name and version go into provenance.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.assets.cache import AssetCache, sha256_file
from harness.errors import AssetError

# Debian architecture names by the harness's arch names.
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "amd64": "amd64", "arm64": "arm64"}
_LISTS_MAX_AGE_S = 24 * 3600


@dataclass
class DebPackage:
    """One downloaded .deb and what we know about it."""
    package: str
    version: str
    arch: str
    path: Path
    sha256: str
    file_name: str = ""   # the name apt gave it (the cached copy is named by its hash)

    def provenance(self) -> dict[str, Any]:
        return {"package": self.package, "version": self.version, "arch": self.arch,
                "deb_sha256": self.sha256, "deb_file": self.file_name or self.path.name}


def host_deb_arch() -> str:
    return _run(["dpkg", "--print-architecture"]).strip()


class Apt:
    """apt-get/apt-cache for one Debian architecture, without touching the system's apt state."""

    def __init__(self, arch: str, cache: AssetCache | None = None) -> None:
        self.arch = DEB_ARCH.get(arch, arch)
        self.cache = cache or AssetCache()
        self.foreign = self.arch != host_deb_arch()
        self.state_dir = self.cache.root / "apt" / self.arch

    def _options(self) -> list[str]:
        if not self.foreign:
            return []
        host = host_deb_arch()
        return ["-o", f"APT::Architectures::={host}", "-o", f"APT::Architectures::={self.arch}",
                "-o", f"Dir::State::Lists={self.state_dir / 'lists'}",
                "-o", f"Dir::Cache={self.state_dir / 'cache'}",
                "-o", "Debug::NoLocking=1"]  # our private lists need no system-wide lock

    def _qualified(self, package: str) -> str:
        return f"{package}:{self.arch}" if self.foreign and ":" not in package else package

    def ensure_lists(self) -> None:
        """Fetch package lists into the private state dir (foreign arch only; once a day)."""
        if not self.foreign:
            return
        lists = self.state_dir / "lists"
        stamp = self.state_dir / "updated"
        with self.cache.lock(f"apt-{self.arch}"):  # parallel builders update the lists once
            if stamp.exists() and (os.path.getmtime(stamp) > _now() - _LISTS_MAX_AGE_S):
                return
            (lists / "partial").mkdir(parents=True, exist_ok=True)
            (self.state_dir / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
            try:
                _run(["apt-get", *self._options(), "-q", "update"], what=f"apt-get update for {self.arch}")
            except AssetError:
                if not stamp.exists():
                    raise
                return  # offline: yesterday's lists still name the packages we have cached
            stamp.write_text("")

    def show_field(self, package: str, field_name: str) -> str:
        """A control field of the candidate version, e.g. Depends of a meta package."""
        out = _run(["apt-cache", *self._options(), "show", "--no-all-versions", self._qualified(package)],
                   what=f"apt-cache show {package}")
        for line in out.splitlines():
            if line.startswith(f"{field_name}:"):
                return line.split(":", 1)[1].strip()
        return ""

    def resolve_meta(self, meta: str, pattern: str) -> str:
        """The concrete package a meta package depends on whose name matches `pattern`."""
        self.ensure_lists()
        depends = self.show_field(meta, "Depends")
        for alternative in re.split(r"[,|]", depends):
            name = alternative.strip().split(" ", 1)[0].split(":", 1)[0]
            if re.fullmatch(pattern, name):
                return name
        raise AssetError(f"{meta} ({self.arch}) depends on nothing matching {pattern!r} (Depends: {depends!r})",
                         "check the Debian suite in /etc/apt/sources.list, or update the recipe's pattern")

    def download(self, package: str, dest: Path) -> DebPackage:
        """`apt-get download` into `dest`; returns the .deb with its version and hash."""
        self.ensure_lists()
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.deb"))
        _run(["apt-get", *self._options(), "-q", "download", self._qualified(package)], cwd=dest,
             what=f"apt-get download {package}")
        new = sorted(set(dest.glob("*.deb")) - before)
        if len(new) != 1:
            raise AssetError(f"apt-get download {package} produced {len(new)} .deb files in {dest}",
                             "run the command by hand to see apt's output")
        return inspect_deb(new[0])


def inspect_deb(path: Path) -> DebPackage:
    fields = _run(["dpkg-deb", "-f", str(path), "Package", "Version", "Architecture"]).splitlines()
    values = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in fields)}
    return DebPackage(values.get("Package", "?"), values.get("Version", "?"), values.get("Architecture", "?"),
                      path, sha256_file(path))


def extract(deb: DebPackage, dest: Path) -> Path:
    """Unpack the data part of `deb` into `dest` (no maintainer scripts run)."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb.path), str(dest)], what=f"dpkg-deb -x {deb.path.name}")
    return dest


def _now() -> float:
    import time
    return time.time()


def _run(argv: list[str], *, cwd: Path | None = None, what: str | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as e:
        raise AssetError(f"{argv[0]} is not installed", "run on Debian/Ubuntu (apt-get, dpkg-deb)") from e
    except subprocess.TimeoutExpired as e:
        raise AssetError(f"{what or argv[0]} took more than 30 minutes", "check the network/mirror") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise AssetError(f"{what or ' '.join(argv)} failed (exit {proc.returncode}): {' | '.join(tail)}",
                         "check network access to the Debian mirror and the package name")
    return proc.stdout
