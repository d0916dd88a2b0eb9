"""Real guests on QEMU TCG: Debian's cloud kernel to `login:` (amd64 bzImage and PVH, arm64),
a guest reset reported as a RESET event, QEMU's own errors as results, the whole cell via the runner.

The assets come from the default cache ($HARNESS_CACHE or ~/.cache/harness), built on first use
from Debian packages (needs the Debian mirror once).
"""
import json
import os
import select
import shutil
import time
from pathlib import Path

import pytest

from harness.backends.qemu import QemuBackend
from harness.model import events as ev
from harness.model.session import BootRequest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or shutil.which("apt-get") is None,
                                 reason="needs qemu-system-x86 and apt-get (apt-get install qemu-system-x86)")]
REPO = Path(__file__).resolve().parents[2]


def asset(name: str) -> Path:
    from harness.assets.recipes import build_asset
    return build_asset(name).path


def boot_until(session, pattern: bytes, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while pattern not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([session.console_fd], [], [], 0.5)
        if ready:
            chunk = os.read(session.console_fd, 65536)
            if not chunk:
                break
            buf += chunk
    return buf


def events(request: BootRequest) -> list[ev.VmEvent]:
    return ev.EventReader(request.events_path).poll()


CASES = {
    "amd64-bzimage": ("x86_64", "bzimage", "debian-cloud-kernel-amd64", "busybox-initramfs-amd64", "console=ttyS0"),
    "amd64-pvh": ("x86_64", "pvh", "debian-cloud-kernel-amd64-vmlinux", "busybox-initramfs-amd64", "console=ttyS0"),
    "arm64": ("aarch64", "image", "debian-cloud-kernel-arm64", "busybox-initramfs-arm64", "console=ttyAMA0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_linux_boots_to_login(tmp_path, case):
    arch, boot, kernel, initrd, cmdline = CASES[case]
    if shutil.which(f"qemu-system-{arch}") is None:
        pytest.skip(f"qemu-system-{arch} not installed")
    request = BootRequest(cell_id=case, guest=case, family="linux", arch=arch, boot=boot, kernel=asset(kernel),
                          initrd=asset(initrd), cmdline=cmdline, workdir=tmp_path)
    backend = QemuBackend("tcg")
    backend.check(request)
    session = backend.start(request)
    try:
        console = boot_until(session, b"login:", 90)
    finally:
        summary = session.stop()
    assert b"Run /init as init process" in console
    assert b"harness login:" in console, console[-2000:].decode(errors="replace")
    assert summary.host["accel"] == "tcg" and summary.host["qemu_version"] != "unknown"
    assert summary.extra["stopped_by_harness"] and summary.command[0] == f"qemu-system-{arch}"
    types = [e.type for e in events(request)]
    assert types[0] == ev.VM_START and types[-1] == ev.VM_EXIT
    assert ev.RESET not in types  # we stopped it: that is not the guest resetting
    assert json.loads(request.summary_path.read_text())["exit_code"] == summary.exit_code


def test_guest_reset_is_a_reset_event(tmp_path):
    request = BootRequest(cell_id="reset", guest="reset", family="linux", arch="x86_64", boot="pvh",
                          kernel=asset("debian-cloud-kernel-amd64-vmlinux"), initrd=asset("busybox-initramfs-amd64"),
                          cmdline="console=ttyS0", workdir=tmp_path)
    session = QemuBackend("tcg").start(request)
    try:
        assert b"login:" in boot_until(session, b"login:", 90)
        session.send(b"root\n")                        # no password in the busybox initramfs
        boot_until(session, b"# ", 20)
        session.send(b"reboot -f\n")                   # -no-reboot turns the reset into an exit
        deadline = time.monotonic() + 30
        while session.poll_exit() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session.poll_exit() == 0
    finally:
        summary = session.stop()
    types = [e.type for e in events(request)]
    assert ev.RESET in types and types[-1] == ev.VM_EXIT
    assert summary.extra["shutdown_reason"] == "guest-reset" and not summary.extra["stopped_by_harness"]


def test_bad_kernel_is_a_result_not_a_crash(tmp_path):
    bad = tmp_path / "not-a-kernel"
    bad.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 4089)   # an ELF header and nothing behind it
    request = BootRequest(cell_id="bad", guest="bad", family="linux", arch="x86_64", boot="pvh", kernel=bad,
                          workdir=tmp_path / "w")
    session = QemuBackend("tcg").start(request)
    assert boot_until(session, b"never", 20) == b""   # console EOF: QEMU refused the file
    summary = session.stop()
    assert summary.exit_code not in (0, None)
    assert "Error while loading elf kernel" in summary.stderr_tail
    errors = [e for e in events(request) if e.type == ev.BACKEND_ERROR]
    assert errors and "exited with" in errors[0].data["message"]


@pytest.mark.parametrize("name", ["linux-amd64-pvh", "linux-arm64", "xen-amd64"])
def test_catalog_guest_cell_through_the_runner(tmp_path, name):
    """The guest file as written, its {asset:} sources resolved from the cache, a whole runner cell."""
    from harness.runner.execute import RunOptions, run_cell
    from harness.runner.guestfile import load_guest
    from harness.runner.matrix import Cell
    guest = load_guest(REPO / "guests" / f"{name}.yaml")
    if shutil.which(f"qemu-system-{guest.arch}") is None:
        pytest.skip(f"qemu-system-{guest.arch} not installed")
    for source in (guest.kernel, guest.initrd):
        if source:
            asset(source["asset"])
    cell = Cell(guest=guest, backend="qemu-tcg", cpu_profile="default", gap_policy="emulate", vcpus=1,
                memory=guest.memory, tier="quick")
    result = run_cell(cell, RunOptions(run_dir=tmp_path))
    if name == "xen-amd64":   # no dom0: Xen runs to its panic, which is the expected end
        assert result.outcome == "fail" and "dom0 kernel not specified" in result.reason, result.reason
        assert [m.name for m in result.milestones] == ["xen", "cmdline"]
    else:
        assert result.outcome == "pass", result.reason
        assert [m.name for m in result.milestones] == [m.name for m in guest.milestones]
    assert result.host.get("accel") == "tcg"


def test_debian_systemd_from_a_read_only_disk(tmp_path):
    """Nightly guest: runs only when its disk is already built (it takes minutes to debootstrap)."""
    from harness.assets.cache import AssetCache
    from harness.runner.execute import RunOptions, run_cell
    from harness.runner.guestfile import load_guest
    from harness.runner.matrix import Cell
    disk = AssetCache().lookup("debian-systemd-rootfs-amd64")
    if disk is None or AssetCache().lookup("debian-systemd-initramfs-amd64") is None:
        pytest.skip("nightly asset not built: harness assets build --tier nightly")
    before = disk.path.stat().st_mtime_ns
    guest = load_guest(REPO / "guests" / "debian-systemd-amd64.yaml")
    cell = Cell(guest=guest, backend="qemu-tcg", cpu_profile="default", gap_policy="emulate", vcpus=1,
                memory=guest.memory, tier="nightly")
    result = run_cell(cell, RunOptions(run_dir=tmp_path))
    assert result.outcome == "pass", result.reason
    assert "root" in [m.name for m in result.milestones]
    assert disk.path.stat().st_mtime_ns == before  # the image is never written: the overlay took the writes
    assert AssetCache().verify("debian-systemd-rootfs-amd64") is not None


def test_aarch64_firmware_boot_reaches_uefi(tmp_path):
    """The BSD arm64 path (boot: firmware): UEFI from qemu-efi-aarch64 starts on a blank overlay'd disk."""
    from harness.errors import BackendUnavailable
    if shutil.which("qemu-system-aarch64") is None or shutil.which("qemu-img") is None:
        pytest.skip("qemu-system-aarch64 / qemu-img not installed")
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * (1 << 20))
    request = BootRequest(cell_id="fw", guest="fw", family="other", arch="aarch64", boot="firmware", kernel=None,
                          disk=blank, memory_mib=512, workdir=tmp_path / "w")
    backend = QemuBackend("tcg")
    try:
        backend.check(request)
    except BackendUnavailable as e:
        pytest.skip(e.one_line())
    session = backend.start(request)
    try:
        console = boot_until(session, b"UEFI firmware", 30)
    finally:
        session.stop()
    assert b"UEFI firmware" in console
    assert (tmp_path / "w" / "disk.qcow2").is_file() and blank.read_bytes() == b"\0" * (1 << 20)


def test_qemu_guest_errors_become_gap_events(tmp_path):
    """A five-instruction arm64 guest writes to a PL061 offset that does not exist; QEMU logs it
    under -d guest_errors and the backend turns the line into a qemu-guest-error gap."""
    import struct
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 not installed")
    code = struct.pack("<5I",
                       0xD2A12060,   # mov  x0, #0x09030000   (virt's PL061 GPIO)
                       0xF2810000,   # movk x0, #0x800        (no register there)
                       0x52801FE1,   # mov  w1, #0xff
                       0xB9000001,   # str  w1, [x0]
                       0x14000000)   # b    .
    kernel = tmp_path / "poke.bin"
    kernel.write_bytes(code.ljust(4096, b"\0"))
    request = BootRequest(cell_id="poke", guest="poke", family="other", arch="aarch64", boot="image",
                          kernel=kernel, memory_mib=128, workdir=tmp_path / "w")
    session = QemuBackend("tcg").start(request)
    deadline = time.monotonic() + 20
    log = request.workdir / "qemu.log"
    while time.monotonic() < deadline and not (log.is_file() and log.stat().st_size):
        time.sleep(0.1)
    time.sleep(0.3)  # one watcher poll
    summary = session.stop()
    gaps = [e.data for e in events(request) if e.type == ev.GAP]
    assert gaps, (request.workdir / "qemu.log").read_text()
    g = gaps[0]
    assert (g["kind"], g["key"], g["access"]) == ("qemu-guest-error", "pl061_write: Bad offset N", "write")
    assert g["first_t"] is not None
    assert [x["key"] for x in summary.extra["gaps"]] == ["pl061_write: Bad offset N"]
