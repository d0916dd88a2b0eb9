"""A Debian 12 root filesystem (minbase + systemd) as a raw ext4 image, without mounting anything.

debootstrap fills a directory (it chroots into it to run maintainer scripts: needs root), the
tree is made boot-ready (hostname, fstab, root without a password so `login:` leads somewhere)
and stripped of what differs between runs (logs, apt lists and caches, machine-id, the shadow
"last changed" day), every mtime is set to SOURCE_DATE_EPOCH, and `mke2fs -d` writes the image
with a fixed UUID, hash seed and E2FSPROGS_FAKE_TIME. Same mirror state -> same bytes as far as
dpkg's own outputs allow (see the report: debootstrap is best effort, the initramfs is exact).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness.assets.cache import sha256_file
from harness.assets.initramfs import HOSTNAME, source_date_epoch
from harness.errors import AssetError

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "udev")
FS_UUID = "6a1e55e5-0000-4000-8000-000000000001"   # fixed: the image must not differ per build
HASH_SEED = "6a1e55e5-0000-4000-8000-000000000002"
_SCRUB = ("var/log", "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf/templates.dat-old",
          "var/cache/debconf/config.dat-old", "var/cache/ldconfig/aux-cache", "var/lib/dpkg/status-old",
          "var/lib/dpkg/diversions-old", "etc/shadow-", "etc/passwd-", "etc/group-", "etc/gshadow-",
          "var/lib/systemd/random-seed", "etc/ssh/ssh_host_")


def build_debian_rootfs(work: Path, arch: str = "x86_64") -> tuple[Path, dict[str, Any]]:
    if arch != "x86_64":
        raise AssetError(f"the rootfs recipe builds x86_64 only, not {arch}", "use debian-systemd-rootfs-amd64")
    for tool in ("debootstrap", "mke2fs"):
        if shutil.which(tool) is None:
            raise AssetError(f"{tool} is not installed", "apt-get install debootstrap e2fsprogs")
    if os.geteuid() != 0:
        raise AssetError("debootstrap needs root (it chroots to run package scripts)",
                         "run `harness assets build debian-systemd-rootfs-amd64` as root (once; it is cached)")
    root = work / "rootfs"
    epoch = source_date_epoch()
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "--arch=amd64",
          SUITE, str(root), MIRROR], env, "debootstrap")
    _configure(root)
    _scrub(root)
    _fix_mtimes(root, epoch)
    image = work / "rootfs.ext4"
    size_mib = _image_size_mib(root)
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "harness-root", "-U", FS_UUID,
          "-E", f"hash_seed={HASH_SEED},root_owner=0:0", "-d", str(root), str(image), f"{size_mib}M"],
         {**env, "E2FSPROGS_FAKE_TIME": str(epoch)}, "mke2fs -d")
    skipped = _fix_ctimes(root, image, epoch)
    version = (root / "etc/debian_version").read_text().strip()
    return image, {"suite": SUITE, "mirror": MIRROR, "variant": "minbase", "packages": list(PACKAGES),
                   "debian_version": version, "size_mib": size_mib, "fs_uuid": FS_UUID,
                   "dpkg_status_sha256": sha256_file(root / "var/lib/dpkg/status"),
                   "ctime_not_fixed": skipped,
                   "file_sha256": sha256_file(image)}


def _configure(root: Path) -> None:
    (root / "etc/hostname").write_text(HOSTNAME + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    (root / "etc/machine-id").write_text("")   # systemd makes one at first boot
    shadow = root / "etc/shadow"
    lines = []
    for line in shadow.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root":
            fields[1] = ""            # no password: typing root at login: gets a shell
        if len(fields) > 2:
            fields[2] = "19518"       # "last changed" day: fixed (2023-06-10) instead of today
        lines.append(":".join(fields))
    shadow.write_text("\n".join(lines) + "\n")


def _scrub(root: Path) -> None:
    for rel in _SCRUB:
        target = root / rel
        if rel.endswith("_"):
            for p in target.parent.glob(target.name + "*"):
                p.unlink()
        elif target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif target.exists() or target.is_symlink():
            target.unlink()
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def _fix_mtimes(root: Path, epoch: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def _fix_ctimes(root: Path, image: Path, epoch: int) -> list[str]:
    """mke2fs -d copies each file's ctime (which no one can set) and atime: rewrite them in the image.

    debugfs edits the unmounted image (no mount, no root trick); paths debugfs cannot quote are
    skipped and reported in provenance (none in a Debian minbase tree).
    """
    commands, skipped = [f"sif / ctime @{epoch}", f"sif / atime @{epoch}"], []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            rel = "/" + os.path.relpath(os.path.join(dirpath, name), root)
            if '"' in rel or "\n" in rel:
                skipped.append(rel)
                continue
            # atime too: mke2fs reading the tree moved it (relatime) after we had set it
            commands += [f'sif "{rel}" ctime @{epoch}', f'sif "{rel}" atime @{epoch}']
    script = image.parent / "ctime.debugfs"
    script.write_text("\n".join(commands) + "\n")
    _run(["debugfs", "-w", "-f", str(script), str(image)], {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch)},
         "debugfs (fixing ctimes)")
    return skipped


def _image_size_mib(root: Path) -> int:
    used = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                used += os.path.getsize(p)
    # Room for metadata, the journal and what systemd writes at boot (the overlay takes writes).
    return int(used * 1.4 / (1 << 20)) + 256


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-4:]
        raise AssetError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}",
                         "check network access to deb.debian.org and free disk space")
