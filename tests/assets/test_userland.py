"""The aarch64 lab's userland: Debian arm64 packages unpacked into a merged /usr, reproducibly, and
the VMM child's code importing and running in it (arm64 Python under qemu-aarch64-static)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.assets.userland import (DIST_PACKAGES, PYTHON, VMM_IMPORTS, _copy_pure_python, _reproducible_tar,
                                     _usrmerge, unpack_userland)
from harness.errors import AssetError

REPO = Path(__file__).resolve().parents[2]
QEMU_USER = shutil.which("qemu-aarch64-static")


def test_usrmerge_moves_top_level_dirs_under_usr(tmp_path):
    (tmp_path / "lib" / "aarch64-linux-gnu").mkdir(parents=True)
    (tmp_path / "lib" / "ld-linux-aarch64.so.1").write_text("ld")
    (tmp_path / "usr" / "lib" / "aarch64-linux-gnu").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "aarch64-linux-gnu" / "libz.so.1").write_text("z")
    (tmp_path / "lib" / "aarch64-linux-gnu" / "libc.so.6").write_text("c")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sh").write_text("sh")
    _usrmerge(tmp_path)
    assert (tmp_path / "lib").is_symlink() and (tmp_path / "bin").is_symlink()
    assert (tmp_path / "usr/lib/ld-linux-aarch64.so.1").read_text() == "ld"
    assert sorted(p.name for p in (tmp_path / "usr/lib/aarch64-linux-gnu").iterdir()) == ["libc.so.6", "libz.so.1"]
    assert (tmp_path / "lib/aarch64-linux-gnu/libc.so.6").read_text() == "c"     # through the symlink


def test_tar_is_reproducible(tmp_path):
    for name in ("a", "b"):
        root = tmp_path / name
        (root / "usr" / "bin").mkdir(parents=True)
        (root / "usr" / "bin" / "python").write_bytes(b"\x7fELF")
        (root / "lib").symlink_to("usr/lib")
    _reproducible_tar(tmp_path / "a", tmp_path / "a.tar", 1686355200)
    (tmp_path / "b" / "usr" / "bin" / "python").touch()              # another mtime
    _reproducible_tar(tmp_path / "b", tmp_path / "b.tar", 1686355200)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_pure_python_copy_refuses_compiled_packages(tmp_path):
    info = _copy_pure_python("fdt", tmp_path)
    assert info["pypi"] == "fdt" and (tmp_path / DIST_PACKAGES / "fdt" / "__init__.py").is_file()
    with pytest.raises(AssetError, match="not pure Python"):
        _copy_pure_python("yaml", tmp_path)                          # PyYAML ships _yaml.*.so inside


# The VMM child's aarch64 path, run by the arm64 Python of the tree.
_CHILD_CHECK = f"""
import sys, platform
sys.path[:0] = [{str(REPO)!r}, '/{DIST_PACKAGES}'.replace('/', TREE + '/', 1)]
for name in {VMM_IMPORTS!r}:
    __import__(name)
import harness.backends.builtin_vm, harness.kvm.arch.aarch64.machine
from harness.kvm.arch.aarch64.ffi import ffi, KVM_ARM_VCPU_INIT
from harness.boot.arm64 import load_aarch64
from harness.boot.fdt import Aarch64Machine
from harness.memory import GuestRam
from pathlib import Path
ram = GuestRam.aarch64(64 << 20)
boot = load_aarch64('auto', ram, Path(sys.argv[1]), None, Aarch64Machine(64 << 20, vcpus=2))
print(platform.machine(), ffi.sizeof('struct kvm_run'), hex(KVM_ARM_VCPU_INIT), hex(boot.plan.entry.pc),
      ram.read(boot.machine.fdt_addr, 4).hex())
"""


@pytest.mark.slow
@pytest.mark.skipif(QEMU_USER is None, reason="qemu-user-static not installed")
def test_vmm_child_code_runs_on_the_arm64_python(tmp_path):
    """~3-4 min the first time (apt-get download of ~20 arm64 packages); ~15 s from the cache."""
    from harness.assets.fixtures import build_fixture
    from harness.assets.recipes import build_asset
    try:
        entry = build_asset("lab-userland-arm64")
    except AssetError as exc:
        pytest.skip(f"lab-userland-arm64 cannot be built here: {exc.problem}")
    tree = unpack_userland(entry)
    assert (tree / "lib").is_symlink() and (tree / "usr" / "lib" / "ld-linux-aarch64.so.1").exists()
    kernel = build_fixture("fixture-arm64")
    code = "TREE = " + repr(str(tree)) + "\n" + _CHILD_CHECK
    proc = subprocess.run([QEMU_USER, "-L", str(tree), str(tree / "usr" / "bin" / f"python{PYTHON}"), "-S", "-B",
                           "-c", code, str(kernel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    machine, run_size, vcpu_init, pc, magic = proc.stdout.split()
    assert machine == "aarch64" and int(run_size) == 2352 and magic == "d00dfeed"
    assert int(vcpu_init, 16) == 0x4020AEAE and int(pc, 16) == 0x4000_0000
