"""The lab's assets: a Debian generic kernel and a busybox initramfs that gives it a usable /dev/kvm.

The lab is a small Linux VM that QEMU runs with TCG and emulated virtualization (AMD SVM on
x86-64, EL2 on aarch64), so a real KVM runs inside it (see harness.hosts.lab). Everything that
differs between architectures is one `LabParams` record in `LAB_PARAMS`; the recipes, the init
script and the QEMU command line are the same code for every arch.

The init script (PID 1, busybox sh) loads the modules in dependency order, mounts the read-only
9p shares named on the kernel command line (`harness.shares=tag:/mount,...`), checks /dev/kvm
and hands over to the lab agent (`python3 -S -m harness.hosts.agent`). Every failure before the
agent runs is one `harness-lab: error: PROBLEM (fix: FIX)` line on the lab's serial console,
which the host turns into a HarnessError.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.assets import initramfs
from harness.assets.cpio import CpioBuilder

LAB_ERROR_PREFIX = "harness-lab: error: "
LAB_STAGE_PREFIX = "harness-lab: "
# Where the init script puts things inside the lab (the host's lab code uses the same names).
BUSYBOX_DIR = "/bb"
MODULE_DIR = "/modules"
AGENT_MODULE = "harness.hosts.agent"
INIT_STAGES = "/run/init-stages"    # "UPTIME STAGE" lines, one per step of the init script


@dataclass(frozen=True)
class LabParams:
    """Everything about the lab of one architecture: how to run it, what it is made of."""
    arch: str                        # x86_64 | aarch64 (the guests' and the lab's arch)
    qemu_binary: str
    qemu_package: str                # Debian package of qemu_binary (for the error's fix)
    machine: str
    cpu: str
    accel: str
    virt_flag: str                   # the /proc/cpuinfo flag (or feature) the lab's KVM needs
    kvm_module: str                  # the KVM vendor module that must come up inside
    kernel_meta: str                 # Debian meta package, resolved to the concrete kernel package
    kernel_pattern: str              # the concrete package's name pattern
    modules: tuple[str, ...]         # wanted modules; their dependencies are added, in order
    console_tty: str
    smp: int = 2
    memory_mib: int = 2048
    kernel_asset: str = ""           # the kernel package's image (vmlinuz / Image), with provenance
    initramfs_asset: str = ""
    boot_asset: str = ""             # what QEMU boots; x86-64: the vmlinux inside kernel_asset, entered
                                     # through its PVH note (measured: /dev/kvm usable in 16 s instead of
                                     # 33 s under load, the bzImage's decompression under TCG skipped)
    userland_asset: str = ""         # the lab's /usr + site-packages; "" = this machine's own (same arch)

    @property
    def boot_kernel_asset(self) -> str:
        return self.boot_asset or self.kernel_asset

    @property
    def deb_arch(self) -> str:
        return {"x86_64": "amd64", "aarch64": "arm64"}[self.arch]


_X86_MODULES = ("kvm_amd", "virtio_pci", "virtio_console", "9pnet_virtio", "9p")

LAB_PARAMS: dict[str, LabParams] = {
    "x86_64": LabParams(
        arch="x86_64", qemu_binary="qemu-system-x86_64", qemu_package="qemu-system-x86",
        machine="q35", cpu="max", accel="tcg,thread=multi", virt_flag="svm", kvm_module="kvm_amd",
        kernel_meta="linux-image-amd64", kernel_pattern=r"linux-image-\d+\.\d+\.\d+-\d+-amd64(-unsigned)?",
        modules=_X86_MODULES, console_tty="ttyS0",
        kernel_asset="lab-kernel-amd64", initramfs_asset="lab-initramfs-amd64",
        boot_asset="lab-kernel-amd64-vmlinux"),
    # Issue 12's aarch64 lab: the same code with these parameters (KVM is built in there).
    "aarch64": LabParams(
        arch="aarch64", qemu_binary="qemu-system-aarch64", qemu_package="qemu-system-arm",
        # pauth-impdef: QEMU's fast pointer-authentication algorithm instead of QARMA, which under
        # TCG kept the agent from getting ready in 120 s.
        machine="virt,virtualization=on,gic-version=3", cpu="max,pauth-impdef=on", accel="tcg,thread=multi",
        virt_flag="", kvm_module="kvm", kernel_meta="linux-image-arm64",
        kernel_pattern=r"linux-image-\d+\.\d+\.\d+-\d+-arm64(-unsigned)?",
        modules=("virtio_pci", "virtio_console", "9pnet_virtio", "9p"), console_tty="ttyAMA0",
        kernel_asset="lab-kernel-arm64", initramfs_asset="lab-initramfs-arm64",
        userland_asset="lab-userland-arm64"),
}


def generator_sha256() -> str:
    """Hash of this module's source: a lab initramfs built by other code is rebuilt (harness.hosts.lab)."""
    import hashlib
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def lab_params(arch: str) -> LabParams:
    from harness.errors import lookup
    return lookup(LAB_PARAMS, arch, "lab arch", where="harness/assets/lab.py")


# -- the init script ------------------------------------------------------------------------------
def _fail(problem: str, fix: str) -> str:
    return f'fail "{problem}" "{fix}"'


def _module_failure(params: LabParams, ko: Path) -> str:
    if ko.stem.replace("-", "_") == params.kvm_module:
        return _fail(f"insmod {ko.stem} failed: the lab's CPU offers no usable {params.virt_flag or 'virtualization'}",
                     f"run the lab as {params.qemu_binary} -M {params.machine} -cpu {params.cpu} (see harness lab status)")
    return _fail(f"insmod {ko.stem} failed", "the lab kernel and its modules differ: rebuild with "
                 f"harness assets build {params.initramfs_asset} --rebuild")


def init_script(params: LabParams, modules: list[Path]) -> str:
    """PID 1 of the lab. Mount points come from the command line, so one image serves every share set."""
    bb = BUSYBOX_DIR
    lines = [
        f"#!{bb}/busybox sh",
        "# Generated by harness.assets.lab",
        f"{bb}/busybox --install -s {bb}",
        f"export PATH={bb}",
        "fail() { echo \"" + LAB_ERROR_PREFIX + "$1 (fix: $2)\" >/dev/console; poweroff -f; }",
        "mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev",
        "mount -t tmpfs -o mode=0755,size=64m tmpfs /run",
        # Where the kernel + init time goes (lab facts: init_stages); `read` is a builtin: no fork.
        "stage() { read up _ </proc/uptime; echo \"$up $1\" >>" + INIT_STAGES + "; }",
        "stage init",
    ]
    if params.virt_flag:
        lines.append(f"grep -qw {params.virt_flag} /proc/cpuinfo || " +
                     _fail(f"the lab CPU has no {params.virt_flag} flag: this QEMU does not emulate it",
                           f"use {params.qemu_binary} >= 7.0 with -cpu {params.cpu} ({params.qemu_package})"))
    for ko in modules:
        lines.append(f"insmod {MODULE_DIR}/{ko.name} || " + _module_failure(params, ko))
        lines.append(f"stage {ko.stem}")
    lines += [
        "shares=$(sed -n 's/.*harness\\.shares=\\([^ ]*\\).*/\\1/p' /proc/cmdline)",
        "for share in $(echo \"$shares\" | tr , ' '); do",
        "  tag=${share%%:*}; rest=${share#*:}; dir=${rest%%:*}; cache=${rest#*:}",
        "  mkdir -p \"$dir\"",
        "  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=$cache \"$tag\" \"$dir\" || " +
        _fail("cannot mount share $tag at $dir", "start the lab with harness.hosts.lab (it passes the shares)"),
        "done",
        "stage shares",
        "[ -c /dev/kvm ] || " + _fail(f"/dev/kvm did not appear ({params.kvm_module} did not load)",
                                      f"run the lab with -cpu {params.cpu}: the lab's CPU needs {params.virt_flag or 'EL2'}"),
        "cat /proc/uptime > /run/kvm-ready",   # the agent reports when /dev/kvm became usable
        "[ -x /usr/bin/python3 ] || " + _fail("no /usr/bin/python3 in the lab", "share the host's /usr (apt-get install python3)"),
        f"echo '{LAB_STAGE_PREFIX}init done, starting the agent' >/dev/console",
        "cd /run",
        "export PYTHONPATH=$(cat /proc/cmdline | sed -n 's/.*harness\\.pythonpath=\\([^ ]*\\).*/\\1/p')",
        "export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/run",
        f"/usr/bin/python3 -S -m {AGENT_MODULE} 2>/dev/console || " +
        _fail("the lab agent exited", "see the lab console log above this line"),
        "poweroff -f",
    ]
    return "\n".join(lines) + "\n"


def build_lab_initramfs(params: LabParams, busybox: Path, modules: list[Path], dest: Path) -> Path:
    """busybox in /bb, the modules in /modules, /init; /usr, /lib, /lib64 come from the host's /usr share."""
    cpio = CpioBuilder()
    for d in ("proc", "sys", "dev", "run", "tmp", "usr", "etc", BUSYBOX_DIR.strip("/"), MODULE_DIR.strip("/")):
        cpio.directory(d)
    # A merged-/usr userland: these are symlinks into the /usr share, as on the host.
    for link in ("lib", "lib64", "bin", "sbin"):
        cpio.symlink(link, f"usr/{link}")
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3, perm=0o666)
    cpio.file(f"{BUSYBOX_DIR.strip('/')}/busybox", busybox.read_bytes(), perm=0o755)
    cpio.file("init", init_script(params, modules).encode(), perm=0o755)
    cpio.file("etc/passwd", b"root::0:0:root:/run:/bb/sh\n")
    cpio.file("etc/group", b"root:x:0:\n")
    for ko in modules:
        cpio.file(f"{MODULE_DIR.strip('/')}/{ko.name}", ko.read_bytes())
    dest.write_bytes(cpio.to_gzip(initramfs.source_date_epoch()))
    return dest
