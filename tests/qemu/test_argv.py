"""QEMU command lines per boot method and arch, availability checks, log parsing (no QEMU run)."""
import os
from pathlib import Path

import pytest

from harness.backends import qemu
from harness.backends.qemu_gaps import decode_x86, parse_kvm_failure, parse_log_line
from harness.backends.registry import get_backend
from harness.errors import BackendUnavailable, ConfigError
from harness.model.gap import FATE_STOPPED, HOST_EMULATION_FAILURE, QEMU_GUEST_ERROR, QEMU_UNIMPLEMENTED
from harness.model.session import BootRequest


def req(tmp_path, **kw):
    base = dict(cell_id="c", guest="g", family="linux", arch="x86_64", boot="bzimage",
                kernel=Path("/k/bzImage"), initrd=Path("/k/initrd"), cmdline="console=ttyS0",
                memory_mib=256, vcpus=2, workdir=tmp_path)
    base.update(kw)
    return BootRequest(**base)


def after(argv, flag):
    return argv[argv.index(flag) + 1]


def test_common_flags(tmp_path):
    argv = qemu.QemuBackend("tcg").build_argv(req(tmp_path), qmp_socket=Path("/s/q.sock"))
    assert argv[0] == "qemu-system-x86_64"
    assert after(argv, "-accel") == "tcg" and after(argv, "-m") == "256" and after(argv, "-smp") == "2"
    for flag in ("-nographic", "-no-reboot", "-nodefaults"):
        assert flag in argv
    assert after(argv, "-serial") == "stdio" and after(argv, "-monitor") == "none"
    assert after(argv, "-d") == "unimp,guest_errors" and after(argv, "-D") == str(tmp_path / "qemu.log")
    assert after(argv, "-qmp") == "unix:/s/q.sock,server=on,wait=off"
    assert after(argv, "-kernel") == "/k/bzImage" and after(argv, "-initrd") == "/k/initrd"
    assert after(argv, "-append") == "console=ttyS0"
    assert all(isinstance(a, str) for a in argv)


@pytest.mark.parametrize("boot,machine", [("bzimage", "pc"), ("multiboot", "pc"), ("pvh", "microvm,acpi=off")])
def test_x86_machine_per_boot_method(tmp_path, boot, machine):
    assert after(qemu.QemuBackend("kvm").build_argv(req(tmp_path, boot=boot)), "-M") == machine


def test_guest_options_override_machine_and_cpu_and_append_args(tmp_path):
    r = req(tmp_path, options={"machine": "q35", "cpu": "max,-xsave", "extra_args": ["-rtc", "base=utc"]})
    argv = qemu.QemuBackend("tcg").build_argv(r)
    assert after(argv, "-M") == "q35" and after(argv, "-cpu") == "max,-xsave" and argv[-2:] == ["-rtc", "base=utc"]


def test_unknown_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown qemu option"):
        qemu.QemuBackend("tcg").build_argv(req(tmp_path, options={"machnie": "pc"}))


def test_aarch64_image(tmp_path):
    argv = qemu.QemuBackend("tcg").build_argv(req(tmp_path, arch="aarch64", boot="image",
                                                  cmdline="console=ttyAMA0"))
    assert argv[0] == "qemu-system-aarch64"
    assert after(argv, "-M") == "virt,gic-version=3" and after(argv, "-cpu") == "cortex-a57"
    assert after(argv, "-append") == "console=ttyAMA0"


def test_aarch64_firmware_boot_uses_uefi_and_disk(tmp_path):
    r = req(tmp_path, arch="aarch64", boot="firmware", kernel=None, initrd=None, disk=Path("/img/mini.img"),
            options={"firmware": "/fw/QEMU_EFI.fd"})
    argv = qemu.QemuBackend("tcg").build_argv(r, disk_overlay=tmp_path / "disk.qcow2")
    assert after(argv, "-bios") == "/fw/QEMU_EFI.fd" and "-kernel" not in argv
    assert f"file={tmp_path / 'disk.qcow2'},format=qcow2,if=none,id=hd0" in argv
    assert after(argv, "-device") == "virtio-blk-pci,drive=hd0"
    assert "/img/mini.img" not in " ".join(argv)  # only the overlay is handed to QEMU


def test_disk_on_microvm_is_virtio_mmio(tmp_path):
    argv = qemu.QemuBackend("tcg").build_argv(req(tmp_path, boot="pvh", disk=Path("/img/root.ext4")))
    assert after(argv, "-device") == "virtio-blk-device,drive=hd0"


def test_bsd_native_boot_is_unavailable_on_qemu(tmp_path):
    with pytest.raises(BackendUnavailable, match="boot method 'openbsd'") as e:
        qemu.QemuBackend("tcg").build_argv(req(tmp_path, family="openbsd", boot="openbsd"))
    assert "builtin" in e.value.fix


def test_auto_boot_detects_bzimage(tmp_path):
    k = tmp_path / "bz"
    head = bytearray(0x400)
    head[0x1FE:0x200] = b"\x55\xaa"
    head[0x202:0x206] = b"HdrS"
    k.write_bytes(bytes(head))
    assert qemu.boot_method(req(tmp_path, boot="auto", kernel=k)) == "bzimage"


def test_missing_binary_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu.shutil, "which", lambda name: None)
    with pytest.raises(BackendUnavailable) as e:
        qemu.QemuBackend("tcg").check(req(tmp_path, arch="aarch64", boot="image"))
    assert "apt-get install qemu-system-arm" in e.value.fix


def test_qemu_kvm_without_dev_kvm_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu.shutil, "which", lambda name: "/usr/bin/" + name)
    real_access = os.access
    monkeypatch.setattr(qemu.os, "access", lambda p, m: False if p == "/dev/kvm" else real_access(p, m))
    with pytest.raises(BackendUnavailable, match="/dev/kvm"):
        qemu.QemuBackend("kvm").check(req(tmp_path))


def test_backend_names():
    assert get_backend("qemu-tcg").name == "qemu-tcg" and get_backend("qemu-kvm").accel == "kvm"


# -- log lines -> gaps ---------------------------------------------------------------------------------
def test_unimplemented_device_line():
    g = parse_log_line("pl061: unimplemented device write (size 4, offset 0x400, value 0xff)")
    assert (g.kind, g.key, g.access, g.values) == (QEMU_UNIMPLEMENTED, "pl061+0x400", "write", [0xFF])


def test_rejected_access_line():
    g = parse_log_line("Invalid read at addr 0xFED00000, size 4, region '(null)', reason: rejected")
    assert (g.kind, g.key, g.access) == (QEMU_GUEST_ERROR, "0xfed00000", "read")


def test_free_form_lines_fold_by_device_and_masked_numbers():
    a = parse_log_line("gic_dist_writeb: Bad offset 0x123 write 5")
    b = parse_log_line("gic_dist_writeb: Bad offset 0x456 write 7")
    assert a.key_tuple() == b.key_tuple() and a.kind == QEMU_GUEST_ERROR
    assert parse_log_line("   ") is None


def test_kvm_internal_error_becomes_a_stopped_host_emulation_gap():
    stderr = ("KVM internal error. Suberror: 1\nextra data[0]: 0x0000000000000000\nemulation failure\n"
              "RAX=0000000000000000 RBX=0000000000000001\nRIP=ffffffff81234567 RFL=00000046\n"
              "Code=48 89 e5 <f0> 48 0f c7 0e 5d c3\n")
    f = parse_kvm_failure(stderr)
    assert f.suberror == 1 and f.rip == 0xFFFFFFFF81234567
    gap = f.gap(1.0)
    assert gap.kind == HOST_EMULATION_FAILURE and gap.fate == FATE_STOPPED
    assert gap.key == "lock cmpxchg16b" and gap.detail["bytes"].startswith("f0480fc70e")
    assert gap.detail["insn"] == "lock cmpxchg16b xmmword ptr [rsi]"
    assert parse_kvm_failure("qemu-system-x86_64: some other error") is None
    assert decode_x86("") == ""


def test_qemu_kvm_in_the_lab_takes_disk_writes_in_its_own_snapshot_overlay(tmp_path):
    """In the lab the image sits on a read-only 9p share and nothing runs qemu-img there: the drive
    is the image itself with snapshot=on (QEMU's temporary overlay in the agent's TMPDIR, the cell's
    work dir) and no image locking (9p has no OFD locks)."""
    from harness.hosts.backend import LabQemuBackend
    r = req(tmp_path, disk=Path("/lab/in/7/disk-root.ext4"), options={"disk_format": "raw"})
    argv = LabQemuBackend().build_argv(r)
    assert after(argv, "-drive") == "file=/lab/in/7/disk-root.ext4,format=raw,snapshot=on,file.locking=off,if=none,id=hd0"
    assert after(argv, "-device") == "virtio-blk-pci,drive=hd0"
    native = qemu.QemuBackend("kvm").build_argv(r, disk_overlay=tmp_path / "disk.qcow2")
    assert after(native, "-drive") == f"file={tmp_path / 'disk.qcow2'},format=qcow2,if=none,id=hd0"
