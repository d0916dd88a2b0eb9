"""/dev/kvm probing: one-line actionable errors, host description."""
from __future__ import annotations

import os

import pytest

from harness.errors import KvmUnavailable
from harness.kvm.system import host_info, kvm_module, open_kvm
from kvm_guests import needs_kvm


def test_absent_device_says_load_kvm(tmp_path):
    with pytest.raises(KvmUnavailable) as exc:
        open_kvm(str(tmp_path / "no-kvm"))
    assert "does not exist" in exc.value.problem
    assert "load kvm" in exc.value.fix
    assert "\n" not in exc.value.one_line()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_device_says_group_kvm(tmp_path):
    dev = tmp_path / "kvm"
    dev.write_text("")
    dev.chmod(0)
    with pytest.raises(KvmUnavailable) as exc:
        open_kvm(str(dev))
    assert "group kvm" in exc.value.fix


def test_eacces_message_via_monkeypatched_open(monkeypatch):
    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(KvmUnavailable) as exc:
        open_kvm("/dev/kvm")
    assert "EACCES" in exc.value.problem and "group kvm" in exc.value.fix


def test_not_a_kvm_device(tmp_path):
    f = tmp_path / "plain"
    f.write_text("x")
    with pytest.raises(KvmUnavailable) as exc:
        open_kvm(str(f))
    assert "not a KVM device" in exc.value.problem


def test_host_info_without_kvm_reports_error(tmp_path):
    info = host_info(str(tmp_path / "none"))
    assert info["usable"] is False and "error" in info
    assert info["kvm_module"] == kvm_module()


@needs_kvm
def test_host_info_describes_this_host():
    info = host_info()
    assert info["usable"] and info["api_version"] == 12
    assert info["caps"]["USER_MEMORY"] > 0
    if info["kvm_module"] == "kvm_pvm":
        assert info["hardware_backed"] is False
