"""Recipes from Debian packages: reproducible, with provenance. Needs the Debian mirror (apt)."""
import shutil
import subprocess

import pytest

from harness.assets.cache import AssetCache
from harness.assets.recipes import RECIPES, build_asset
from harness.errors import AssetError

needs_apt = pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
                               reason="apt-get/dpkg-deb not available (not a Debian host)")


@needs_apt
def test_busybox_initramfs_is_reproducible_across_caches(tmp_path):
    a = build_asset("busybox-initramfs-amd64", cache=AssetCache(tmp_path / "a"))
    b = build_asset("busybox-initramfs-amd64", cache=AssetCache(tmp_path / "b"))
    assert a.sha256 == b.sha256
    bb = a.provenance["busybox"]
    assert bb["package"] == "busybox-static" and bb["version"] and len(bb["deb_sha256"]) == 64
    assert len(bb["file_sha256"]) == 64 and a.provenance["console"] == "ttyS0"


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(AssetError) as e:
        build_asset("no-such-asset", cache=AssetCache("/nonexistent-never-created"))
    assert "debian-cloud-kernel-amd64" in e.value.fix


def test_catalog_has_the_promised_recipes():
    for name in ("debian-cloud-kernel-amd64", "debian-cloud-kernel-arm64", "debian-cloud-kernel-amd64-vmlinux",
                 "busybox-initramfs-amd64", "busybox-initramfs-arm64", "debian-systemd-rootfs-amd64",
                 "debian-systemd-initramfs-amd64", "xen-hypervisor-amd64"):
        assert name in RECIPES
    assert RECIPES["debian-systemd-rootfs-amd64"].tier == "nightly"


@needs_apt
@pytest.mark.slow
def test_cloud_kernel_resolves_meta_package_and_records_it():
    """Uses the default cache (the kernel is 27 MB; built once and shared with the boot tests)."""
    kernel = build_asset("debian-cloud-kernel-amd64")
    prov = kernel.provenance
    assert prov["meta_package"] == "linux-image-cloud-amd64"
    assert prov["package"].startswith("linux-image-6.") and prov["package"].endswith("-cloud-amd64")
    assert prov["file"].startswith("/boot/vmlinuz-") and prov["file_sha256"] == kernel.sha256
    vmlinux = build_asset("debian-cloud-kernel-amd64-vmlinux")
    data = vmlinux.path.read_bytes()
    assert data[:4] == b"\x7fELF"
    from harness.boot.image import parse_elf
    elf = parse_elf(data, "vmlinux")
    notes = [(n.owner, n.type) for n in elf.notes]
    assert ("Xen", 18) in notes  # XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry QEMU microvm needs


@needs_apt
@pytest.mark.slow
def test_virtio_initramfs_carries_modules_in_dependency_order(tmp_path):
    entry = build_asset("busybox-initramfs-virtio-amd64")
    mods = entry.provenance["modules"]
    for before, after in (("virtio_ring", "virtio_blk"), ("virtio", "virtio_pci"), ("virtio", "virtio_mmio"),
                          ("virtio_pci_modern_dev", "virtio_pci")):
        assert mods.index(before) < mods.index(after)
    assert entry.provenance["modules_from"]["version"] == build_asset("debian-cloud-kernel-amd64").provenance["version"]
    listing = subprocess.run(f"zcat {entry.path} | cpio -it", shell=True, capture_output=True, text=True).stdout
    assert "lib/modules/virtio_blk.ko" in listing
