"""Recipes: guest assets built reproducibly from Debian packages, by name.

`build_asset(name)` returns the cached, verified asset, building it (and the assets it needs)
when absent. Each recipe records where every input came from (package, resolved version,
sha256 of the .deb and of the extracted file) in the cache entry's provenance.

Downloaded .deb files are cached too (as `deb.<package>.<arch>.<version>`), so the kernel is
fetched once for the kernel, the PVH vmlinux and the module-carrying initramfs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.assets import initramfs
from harness.assets.cache import AssetCache, CacheEntry, sha256_file, sha256_text
from harness.assets.debian import Apt, DebPackage, extract, inspect_deb
from harness.errors import AssetError, lookup
from harness.model.tiers import NIGHTLY, QUICK

_KERNEL_PKG = r"linux-image-\d+\.\d+\.\d+-\d+-cloud-{arch}(-unsigned)?"


@dataclass
class BuildContext:
    cache: AssetCache
    rebuild: bool = False

    def asset(self, name: str) -> CacheEntry:
        """Another asset this one is made from (built first when missing)."""
        return build_asset(name, cache=self.cache)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    arch: str                 # x86_64 | aarch64
    kind: str                 # kernel | initrd | disk | rootfs (a tree for the lab, not a guest input)
    tier: str                 # quick | nightly (nightly ones take minutes)
    build: Callable[[BuildContext, Path], tuple[Path, dict[str, Any]]]


RECIPES: dict[str, Recipe] = {}


def _recipe(name: str, description: str, arch: str, kind: str, tier: str = QUICK) -> Callable:
    def register(fn: Callable[[BuildContext, Path], tuple[Path, dict[str, Any]]]) -> Callable:
        RECIPES[name] = Recipe(name, description, arch, kind, tier, fn)
        return fn
    return register


def get_recipe(name: str) -> Recipe:
    return lookup(RECIPES, name, "asset recipe", where="harness assets list", names=sorted(RECIPES), error=AssetError)


def build_asset(name: str, *, cache: AssetCache | None = None, rebuild: bool = False) -> CacheEntry:
    recipe = get_recipe(name)
    cache = cache or AssetCache()
    ctx = BuildContext(cache, rebuild)

    def builder(work: Path) -> tuple[Path, dict[str, Any]]:
        path, provenance = recipe.build(ctx, work)
        provenance = {"recipe": name, "arch": recipe.arch, **provenance,
                      "source_date_epoch": initramfs.source_date_epoch()}
        return path, provenance

    return cache.get_or_build(name, builder, rebuild=rebuild)


# -- Debian inputs -----------------------------------------------------------------------------
def _version(apt: Apt, package: str, quiet: bool) -> str:
    """The candidate version; "" when apt knows no such package and `quiet` (a fallback follows)."""
    try:
        return apt.show_field(package, "Version")
    except AssetError:
        if quiet:
            return ""
        raise


def fetch_deb(ctx: BuildContext, arch: str, package: str) -> DebPackage:
    """The .deb of `package` (candidate version), from the cache or downloaded once."""
    apt = Apt(arch, ctx.cache)
    apt.ensure_lists()
    version = _version(apt, package, quiet=apt.foreign and ":" not in package)
    if not version and apt.foreign and ":" not in package:
        # An Architecture: all package (pure Python, data) has no :<arch> name in a foreign list.
        version = _version(apt, f"{package}:all", quiet=True)
        package = f"{package}:all" if version else package
    if not version:
        raise AssetError(f"apt knows no package {package} for {apt.arch}",
                         "check the package name and /etc/apt/sources.list")
    name = "deb." + re.sub(r"[^A-Za-z0-9._+-]", "_", f"{package.split(':')[0]}.{apt.arch}.{version}")

    def download(work: Path) -> tuple[Path, dict[str, Any]]:
        deb = apt.download(package, work)
        return deb.path, deb.provenance()

    entry = ctx.cache.get_or_build(name, download)
    deb = inspect_deb(entry.path)
    return DebPackage(deb.package, deb.version, deb.arch, entry.path, entry.sha256,
                      str(entry.provenance.get("deb_file", "")))


def kernel_deb(ctx: BuildContext, arch: str) -> tuple[DebPackage, str]:
    """The concrete cloud kernel package behind linux-image-cloud-<arch>, and the meta name."""
    deb_arch = {"x86_64": "amd64", "aarch64": "arm64"}[arch]
    meta = f"linux-image-cloud-{deb_arch}"
    concrete = Apt(arch, ctx.cache).resolve_meta(meta, _KERNEL_PKG.format(arch=deb_arch))
    return fetch_deb(ctx, arch, concrete), meta


def _one(root: Path, pattern: str, what: str) -> Path:
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        raise AssetError(f"expected one {what} ({pattern}) in the package, found {len(found)}",
                         "the package layout changed: update harness/assets/recipes.py")
    return found[0]


def _extracted(deb: DebPackage, work: Path) -> Path:
    return extract(deb, work / f"x-{deb.package}")


# -- kernels -------------------------------------------------------------------------------------
def _kernel(ctx: BuildContext, work: Path, arch: str) -> tuple[Path, dict[str, Any]]:
    deb, meta = kernel_deb(ctx, arch)
    return _kernel_image(deb, meta, work)


def _kernel_image(deb: DebPackage, meta: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """/boot/vmlinuz-* of a kernel package, with where it came from."""
    tree = _extracted(deb, work)
    vmlinuz = _one(tree, "boot/vmlinuz-*", "kernel image")
    out = work / vmlinuz.name
    vmlinuz.rename(out)
    release = vmlinuz.name.removeprefix("vmlinuz-")
    return out, {"meta_package": meta, **deb.provenance(), "kernel_release": release,
                 "file": f"/boot/{vmlinuz.name}", "file_sha256": sha256_file(out)}


@_recipe("debian-cloud-kernel-amd64", "Debian 12 cloud kernel, x86-64 bzImage", "x86_64", "kernel")
def _kernel_amd64(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    return _kernel(ctx, work, "x86_64")


@_recipe("debian-cloud-kernel-arm64", "Debian 12 cloud kernel, arm64 Image", "aarch64", "kernel")
def _kernel_arm64(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    return _kernel(ctx, work, "aarch64")


@_recipe("debian-cloud-kernel-amd64-vmlinux", "the ELF inside the amd64 bzImage (PVH entry note)",
         "x86_64", "kernel")
def _kernel_amd64_vmlinux(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    return _vmlinux_of(ctx, work, "debian-cloud-kernel-amd64")


def _vmlinux_of(ctx: BuildContext, work: Path, kernel_asset: str) -> tuple[Path, dict[str, Any]]:
    from harness.assets.vmlinux import extract_vmlinux
    bz = ctx.asset(kernel_asset)
    out = extract_vmlinux(bz.path, work / "vmlinux")
    return out, {"from_asset": bz.name, "from_sha256": bz.sha256,
                 "kernel": {k: bz.provenance.get(k) for k in ("package", "version", "kernel_release")},
                 "file_sha256": sha256_file(out)}


@_recipe("xen-hypervisor-amd64", "Debian 12's Xen 4.17 hypervisor, ELF32 with multiboot headers",
         "x86_64", "kernel")
def _xen_amd64(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    import gzip
    deb = fetch_deb(ctx, "x86_64", "xen-hypervisor-4.17-amd64")
    packed = _one(_extracted(deb, work), "boot/xen-*-amd64.gz", "Xen image")
    out = work / packed.name.removesuffix(".gz")
    out.write_bytes(gzip.decompress(packed.read_bytes()))  # QEMU's multiboot loader wants the raw ELF
    return out, {**deb.provenance(), "file": f"/boot/{packed.name}", "file_sha256": sha256_file(out)}


# -- initramfs images ------------------------------------------------------------------------------
def _busybox(ctx: BuildContext, work: Path, arch: str) -> tuple[Path, dict[str, Any]]:
    deb = fetch_deb(ctx, arch, "busybox-static")
    binary = _one(_extracted(deb, work), "bin/busybox", "busybox binary")
    return binary, {**deb.provenance(), "file": "/bin/busybox", "file_sha256": sha256_file(binary)}


def _kernel_modules(ctx: BuildContext, work: Path, arch: str, kernel_asset: str,
                    wanted: tuple[str, ...] = initramfs.VIRTIO_MODULES) -> tuple[list[Path], dict]:
    """`wanted` modules (and their dependencies) from the very package the cached kernel asset
    came from (ABI must match)."""
    kernel = ctx.asset(kernel_asset)
    package = kernel.provenance.get("package")
    if not package:
        raise AssetError(f"asset {kernel_asset} has no package in its provenance",
                         f"rebuild it: harness assets build {kernel_asset} --rebuild")
    deb = fetch_deb(ctx, arch, package)
    if deb.version != kernel.provenance.get("version"):
        raise AssetError(f"{package} is now {deb.version}, the cached kernel is {kernel.provenance.get('version')}",
                         f"rebuild the kernel: harness assets build {kernel_asset} --rebuild")
    tree = _extracted(deb, work)
    mod_root = _one(tree, "lib/modules/*", "module directory")
    order = initramfs.module_load_order(mod_root, wanted)
    return order, {"modules_from": deb.provenance(), "modules": [p.stem for p in order]}


def _initramfs(ctx: BuildContext, work: Path, arch: str, *, kernel_asset: str | None = None,
               switch_root: str | None = None) -> tuple[Path, dict[str, Any]]:
    busybox, bb_prov = _busybox(ctx, work, arch)
    modules: list[Path] = []
    prov: dict[str, Any] = {"busybox": bb_prov, "console": initramfs.CONSOLE_TTY[arch],
                            "hostname": initramfs.HOSTNAME}
    if kernel_asset:
        modules, mod_prov = _kernel_modules(ctx, work, arch, kernel_asset)
        prov.update(mod_prov)
    if switch_root:
        prov["switch_root"] = switch_root
    spec = initramfs.InitramfsSpec(arch, busybox, modules, switch_root)
    out = initramfs.build_initramfs(spec, work / "initramfs.cpio.gz")
    return out, prov


@_recipe("busybox-initramfs-amd64", "busybox userland, getty on ttyS0 -> login:", "x86_64", "initrd")
def _initramfs_amd64(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    return _initramfs(ctx, work, "x86_64")


@_recipe("busybox-initramfs-arm64", "busybox userland, getty on ttyAMA0 -> login:", "aarch64", "initrd")
def _initramfs_arm64(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    return _initramfs(ctx, work, "aarch64")


@_recipe("busybox-initramfs-virtio-amd64", "busybox userland + the cloud kernel's virtio modules",
         "x86_64", "initrd")
def _initramfs_virtio_amd64(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    return _initramfs(ctx, work, "x86_64", kernel_asset="debian-cloud-kernel-amd64")


@_recipe("busybox-initramfs-virtio-arm64", "busybox userland + the cloud kernel's virtio modules",
         "aarch64", "initrd")
def _initramfs_virtio_arm64(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    return _initramfs(ctx, work, "aarch64", kernel_asset="debian-cloud-kernel-arm64")


@_recipe("lab-userland-arm64", "the aarch64 lab's /usr: Debian arm64 Python 3.11 + cffi, capstone, pyelftools",
         "aarch64", "rootfs")   # quick: the default matrix boots aarch64 guests in the aarch64 lab
def _userland_arm64(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    from harness.assets.userland import UserlandSpec, build_userland
    return build_userland(UserlandSpec("aarch64"), lambda package: fetch_deb(ctx, "aarch64", package), work,
                          initramfs.source_date_epoch())


@_recipe("debian-systemd-initramfs-amd64", "virtio modules, then switch_root to /dev/vda", "x86_64",
         "initrd", NIGHTLY)
def _systemd_initramfs_amd64(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    return _initramfs(ctx, work, "x86_64", kernel_asset="debian-cloud-kernel-amd64", switch_root="/dev/vda")


@_recipe("debian-systemd-rootfs-amd64", "debootstrap'd Debian 12 (minbase + systemd), raw ext4 image",
         "x86_64", "disk", NIGHTLY)
def _systemd_rootfs_amd64(ctx: BuildContext, work: Path) -> tuple[Path, dict[str, Any]]:
    from harness.assets.rootfs import build_debian_rootfs
    return build_debian_rootfs(work, arch="x86_64")


# -- the lab: a generic Debian kernel with KVM and 9p, and its init (harness.assets.lab) ------------
def lab_kernel_deb(ctx: BuildContext, arch: str) -> tuple[DebPackage, str]:
    from harness.assets.lab import lab_params
    params = lab_params(arch)
    concrete = Apt(arch, ctx.cache).resolve_meta(params.kernel_meta, params.kernel_pattern)
    return fetch_deb(ctx, arch, concrete), params.kernel_meta


def _lab_kernel(ctx: BuildContext, work: Path, arch: str) -> tuple[Path, dict[str, Any]]:
    deb, meta = lab_kernel_deb(ctx, arch)
    return _kernel_image(deb, meta, work)


def _lab_initramfs(ctx: BuildContext, work: Path, arch: str) -> tuple[Path, dict[str, Any]]:
    from harness.assets import lab
    params = lab.lab_params(arch)
    busybox, bb_prov = _busybox(ctx, work, arch)
    modules, mod_prov = _kernel_modules(ctx, work, arch, params.kernel_asset, params.modules)
    out = lab.build_lab_initramfs(params, busybox, modules, work / "lab-initramfs.cpio.gz")
    return out, {"busybox": bb_prov, **mod_prov, "init_sha256": sha256_text(lab.init_script(params, modules)),
                 "generator_sha256": lab.generator_sha256()}


def _register_lab_recipes() -> None:
    """One kernel and one initramfs recipe per lab arch: the same code, the arch's LabParams."""
    from functools import partial
    from harness.assets.lab import LAB_PARAMS
    for arch, params in LAB_PARAMS.items():
        tier = QUICK   # both labs serve quick-tier cells (tests/assets/test_quick_assets.py checks it)
        _recipe(params.kernel_asset, f"the lab's kernel: Debian 12 generic {params.deb_arch} ({params.kvm_module}, "
                "9p, virtio)", arch, "kernel", tier)(partial(_lab_kernel, arch=arch))
        if params.boot_asset:
            _recipe(params.boot_asset, "the lab kernel's vmlinux (PVH entry: no decompression under TCG)", arch,
                    "kernel", tier)(partial(_vmlinux_of, kernel_asset=params.kernel_asset))
        _recipe(params.initramfs_asset, f"the lab's init: busybox, {params.kvm_module}/9p/virtio modules, "
                "the agent's launcher", arch, "initrd", tier)(partial(_lab_initramfs, arch=arch))


_register_lab_recipes()
