"""The VMM's forkers warm what its children run: a forked child of a real fixture boot (PVH ELF,
firmware tables, virtio setup, the summary's decoded vCPU state) imports nothing itself, while an
exec'd child, which starts cold, reports what it had to import (so the measure is not vacuous)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.backends import vmm_warm

needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")


def boot_fixture_and_stop(tmp_path: Path, name: str) -> dict:
    from harness.assets.fixtures import build_fixture
    from harness.backends.registry import get_backend
    from harness.model.session import BootRequest
    req = BootRequest(name, "fixture-pvh", "fixture", "x86_64", "pvh", Path(build_fixture("fixture-pvh")),
                      cmdline="console=ttyS0", memory_mib=64, workdir=tmp_path / name)
    session = get_backend("builtin").start(req)
    seen = b""
    while b"fixture: entry pvh" not in seen:      # the guest runs: the build is done
        chunk = os.read(session.console_fd, 4096)
        assert chunk, f"console ended before the fixture's entry line: {seen[-300:]!r}"
        seen += chunk
    summary = session.stop()
    assert summary.exit_code == 0, summary.stderr_tail
    return summary.extra


@needs_kvm
def test_a_forked_child_imports_nothing_itself(tmp_path: Path):
    extra = boot_fixture_and_stop(tmp_path, "forked")
    assert extra["vcpus"] and extra["vcpus"][0]["insn"]["text"], "the summary decodes the stopped vCPU"
    late = extra["imports_in_child"]
    assert late == [], f"a forked child imported {late}: add them to harness.backends.vmm_warm's lists"


@needs_kvm
def test_an_execd_child_reports_its_own_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARNESS_VMM_FORK", "0")
    late = boot_fixture_and_stop(tmp_path, "execd")["imports_in_child"]
    assert {"harness.kvm.machine", "harness.devices.virtio", "harness.firmware", "capstone", "elftools"} <= set(late)


def test_warm_lists_name_importable_modules():
    import importlib.util
    for name in vmm_warm.COMMON + vmm_warm.BY_ARCH["x86_64"] + vmm_warm.BY_ARCH["aarch64"]:
        assert importlib.util.find_spec(name) is not None, name


def test_every_x86_loader_names_the_module_its_load_function_imports():
    import inspect

    from harness.boot import LOADERS
    for method, loader in LOADERS.items():
        assert f"from {loader.module} import" in inspect.getsource(loader.load), method
    assert set(vmm_warm.loader_modules("x86_64")) == {loader.module for loader in LOADERS.values()}


def test_the_vmm_childs_own_module_imports_none_of_the_stdlib_it_avoids():
    """An exec'd child's start-up (bench/vmm_start) without them (platform alone: 0.34 s under TCG, measured)."""
    import subprocess
    import sys
    code = ("import sys, harness.backends.builtin_vm; "
            "print(sorted({'platform', 'ctypes', 'tempfile', 'hashlib'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"
