"""Check a DTB with Debian's device-tree-compiler tools (dtc, fdtget), never with our own parser."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_dtc = pytest.mark.skipif(shutil.which("dtc") is None or shutil.which("fdtget") is None,
                               reason="device-tree-compiler (dtc, fdtget) not installed")


def dtc_decompile(blob: bytes, tmp_path: Path) -> str:
    """`dtc -I dtb -O dts` of `blob`; fails the test on any warning or error."""
    path = tmp_path / "checked.dtb"
    path.write_bytes(blob)
    proc = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", f"dtc warnings:\n{proc.stderr}"
    return proc.stdout


def fdtget(blob: bytes, tmp_path: Path, node: str, prop: str, kind: str = "x") -> str:
    """`fdtget -t KIND` of one property (kind x: hex cells, s: string)."""
    path = tmp_path / "get.dtb"
    path.write_bytes(blob)
    proc = subprocess.run(["fdtget", "-t", kind, str(path), node, prop], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def fdt_nodes(blob: bytes, tmp_path: Path, node: str = "/") -> list[str]:
    path = tmp_path / "list.dtb"
    path.write_bytes(blob)
    proc = subprocess.run(["fdtget", "-l", str(path), node], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()
