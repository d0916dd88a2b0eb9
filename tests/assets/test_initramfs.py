"""The busybox initramfs: reproducible bytes, a cpio the kernel (and cpio(1)) can read, a sane /init."""
import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.assets import initramfs
from harness.assets.cpio import CpioBuilder


@pytest.fixture
def fake_busybox(tmp_path):
    p = tmp_path / "busybox"
    p.write_bytes(b"\x7fELF" + bytes(range(256)) * 8)
    p.chmod(0o755)
    return p


def test_same_inputs_same_bytes(tmp_path, fake_busybox, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    spec = initramfs.InitramfsSpec("x86_64", fake_busybox)
    a = initramfs.build_initramfs(spec, tmp_path / "a.cpio.gz").read_bytes()
    os.utime(fake_busybox, (12345, 12345))  # host mtimes must not leak in
    b = initramfs.build_initramfs(spec, tmp_path / "b.cpio.gz").read_bytes()
    assert a == b
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    c = initramfs.build_initramfs(spec, tmp_path / "c.cpio.gz").read_bytes()
    assert c != a  # the epoch is an input


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) not installed")
def test_cpio_tool_reads_it(tmp_path, fake_busybox):
    spec = initramfs.InitramfsSpec("aarch64", fake_busybox)
    data = gzip.decompress(initramfs.build_initramfs(spec, tmp_path / "i.gz").read_bytes())
    listing = subprocess.run(["cpio", "-itv"], input=data, capture_output=True, check=True).stdout.decode()
    names = subprocess.run(["cpio", "-it"], input=data, capture_output=True, check=True).stdout.decode().split()
    assert names == sorted(names)
    for must in ("init", "bin/busybox", "etc/inittab", "dev/console"):
        assert must in names
    assert "crw-------" in next(line for line in listing.splitlines() if line.endswith("dev/console"))
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--no-absolute-filenames", "etc/inittab", "init"], input=data, cwd=out,
                   capture_output=True, check=True)
    assert "ttyAMA0::respawn:/sbin/getty" in (out / "etc/inittab").read_text()
    init = (out / "init").read_text()
    # devtmpfs before anything opens a tty; then busybox init runs getty
    assert init.index("devtmpfs") < init.index("exec /sbin/init")
    assert "hostname harness" in init


def test_switch_root_init_waits_for_the_disk(fake_busybox, tmp_path):
    ko = tmp_path / "virtio_blk.ko"
    ko.write_bytes(b"x")
    script = initramfs.init_script(initramfs.InitramfsSpec("x86_64", fake_busybox, [ko], "/dev/vda"))
    assert "insmod /lib/modules/virtio_blk.ko" in script
    assert script.index("insmod") < script.index("mount -t ext4 /dev/vda /newroot")
    assert "exec switch_root /newroot /sbin/init" in script


def test_unknown_arch_is_a_clear_error(fake_busybox):
    from harness.errors import AssetError
    with pytest.raises(AssetError, match="console tty"):
        initramfs.inittab("riscv64")


def test_cpio_rejects_escaping_paths():
    with pytest.raises(ValueError):
        CpioBuilder().file("../etc/passwd", b"")
