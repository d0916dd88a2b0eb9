"""A foreign-architecture Python userland for the lab: Debian packages unpacked into a /usr tree.

The x86 lab shares this machine's own /usr and site-packages; the aarch64 lab cannot (x86
binaries), so it gets an arm64 /usr built here: Python 3.11 and exactly the third-party modules
the VMM child imports (cffi + its C backend, capstone, pyelftools) from Debian's arm64 packages,
downloaded through the private apt state (harness.assets.debian) and unpacked with `dpkg-deb -x`
(no maintainer scripts), merged into /usr as Debian's usrmerge does, plus the pure-Python PyPI
packages Debian does not carry (PyPI `fdt`) copied from this machine's installation.

The asset is one reproducible tar (sorted entries, fixed owner and SOURCE_DATE_EPOCH mtimes)
whose provenance lists every package, version and .deb sha256. `unpack_userland()` expands it
once into the cache (by the tar's sha256) for the lab's 9p shares.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.assets.cache import AssetCache, CacheEntry, sha256_file
from harness.errors import AssetError

PYTHON = "3.11"
# The packages, not a dependency solver: a fixed, reviewed list keeps the tree small and the build
# reproducible. Shared libraries are loaded only by the extension modules that need them.
BASE_PACKAGES = ("libc6", "libgcc-s1", "zlib1g", "libexpat1", "libssl3", "libffi8", "liblzma5", "libbz2-1.0",
                 "libcrypt1", "libuuid1", "libzstd1",
                 f"python{PYTHON}-minimal", f"libpython{PYTHON}-minimal", f"libpython{PYTHON}-stdlib",
                 "python3-minimal")
VMM_PACKAGES = ("python3-cffi-backend", "python3-cffi", "python3-pycparser", "python3-ply",
                "python3-capstone", "libcapstone4", "python3-distutils", "python3-lib2to3", "python3-pyelftools")
PYPI_PURE = ("fdt",)                     # pure Python, not in Debian: copied from this installation
DIST_PACKAGES = "usr/lib/python3/dist-packages"
MERGED_DIRS = ("bin", "sbin", "lib")     # usrmerge: /bin -> usr/bin, ...
# What the VMM child imports that is not the standard library (tests check each imports in the tree).
VMM_IMPORTS = ("cffi", "_cffi_backend", "capstone", "elftools", "fdt")


@dataclass(frozen=True)
class UserlandSpec:
    arch: str                            # harness arch: aarch64
    packages: tuple[str, ...] = BASE_PACKAGES + VMM_PACKAGES
    pypi_pure: tuple[str, ...] = PYPI_PURE


def _usrmerge(root: Path) -> None:
    """Move /bin, /sbin, /lib into /usr and leave symlinks, as a merged-/usr Debian system has."""
    for name in MERGED_DIRS:
        top = root / name
        if top.is_symlink() or not top.exists():
            continue
        dest = root / "usr" / name
        dest.mkdir(parents=True, exist_ok=True)
        for item in sorted(top.iterdir()):
            target = dest / item.name
            if item.is_dir() and not item.is_symlink() and target.is_dir():
                shutil.copytree(item, target, symlinks=True, dirs_exist_ok=True)
                shutil.rmtree(item)
            else:
                os.replace(item, target)
        top.rmdir()
        top.symlink_to(f"usr/{name}")


def _copy_pure_python(name: str, dest_root: Path) -> dict[str, Any]:
    """A pure-Python package of this installation into dist-packages (refused if it has binaries)."""
    import importlib
    import importlib.metadata
    module = importlib.import_module(name)
    src = Path(module.__file__).resolve().parent
    if any(p.suffix in (".so", ".pyd") for p in src.rglob("*")):
        raise AssetError(f"{name} is not pure Python ({src} holds compiled modules)",
                         "take it from a Debian package of the target architecture instead")
    dest = dest_root / DIST_PACKAGES / name
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return {"pypi": name, "version": importlib.metadata.version(name)}


def _precompile(root: Path) -> None:
    """Byte-compile the standard library and dist-packages now, as Debian's postinst (py3compile)
    would have: the lab imports from a read-only share under TCG, where compiling each module on
    every start costs minutes. Unchecked-hash .pyc files never look at mtimes, so the normalised
    mtimes of the tar do not invalidate them and the bytes are reproducible. Any 3.11 compiles
    the same bytecode (one magic number per minor version)."""
    import compileall
    import py_compile
    import sys
    if sys.version_info[:2] != tuple(int(x) for x in PYTHON.split(".")):
        raise AssetError(f"the userland is Python {PYTHON}; this harness runs {sys.version_info[0]}."
                         f"{sys.version_info[1]} and cannot byte-compile it", f"build it with Python {PYTHON}")
    for rel in (f"usr/lib/python{PYTHON}", DIST_PACKAGES):
        # The result is ignored on purpose: a few stdlib test files are deliberately invalid Python.
        compileall.compile_dir(str(root / rel), quiet=2, ddir="/" + rel, workers=1,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def _reproducible_tar(root: Path, out: Path, epoch: int) -> None:
    """Sorted entries, uid/gid 0, mtime = SOURCE_DATE_EPOCH: the same inputs give the same bytes."""
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = epoch
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False, filter=clean)
    out.write_bytes(buf.getvalue())


def build_userland(spec: UserlandSpec, fetch: Any, work: Path, epoch: int) -> tuple[Path, dict[str, Any]]:
    """`fetch(package) -> DebPackage` downloads (or finds) one .deb of spec.arch."""
    from harness.assets.debian import extract
    root = work / "root"
    root.mkdir()
    packages = []
    for name in spec.packages:
        deb = fetch(name)
        extract(deb, root)
        packages.append(deb.provenance())
    _usrmerge(root)
    pypi = [_copy_pure_python(name, root) for name in spec.pypi_pure]
    _precompile(root)
    python = root / "usr" / "bin" / f"python{PYTHON}"
    if not python.is_file():
        raise AssetError(f"the userland has no usr/bin/python{PYTHON}", "check UserlandSpec.packages")
    out = work / f"userland-{spec.arch}.tar"
    _reproducible_tar(root, out, epoch)
    return out, {"packages": packages, "pypi_pure": pypi, "python": f"/usr/bin/python{PYTHON}",
                 "dist_packages": "/" + DIST_PACKAGES, "tar_sha256": sha256_file(out)}


def unpack_userland(entry: CacheEntry, cache: AssetCache | None = None) -> Path:
    """The userland tar expanded once under the cache root (by its sha256); returns the tree's root."""
    cache = cache or AssetCache()
    dest = cache.root / "trees" / entry.sha256
    if (dest / ".complete").exists():
        return dest
    with cache.lock(f"tree-{entry.sha256[:16]}"):
        if (dest / ".complete").exists():
            return dest
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tarfile.open(entry.path) as tar:
            tar.extractall(tmp, filter="tar")
        (tmp / ".complete").write_text(entry.sha256 + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest
