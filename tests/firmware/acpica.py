"""Run ACPICA's own tools on our tables: the checks are theirs, not ours."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

_PROBLEM = re.compile(r"\b(Error|Warning)\b(?! ?s?:? *0)", re.IGNORECASE)


def disassemble(iasl: str, blob: bytes, workdir: Path, name: str) -> str:
    """`iasl -d` one table; returns the .dsl text. Fails on a non-zero exit or any error/warning line."""
    path = workdir / f"{name}.dat"
    path.write_bytes(blob)
    proc = subprocess.run([iasl, "-d", str(path)], capture_output=True, text=True, timeout=60, cwd=workdir)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    problems = [line for line in output.splitlines() if _PROBLEM.search(line)]
    assert not problems, output
    dsl = (workdir / f"{name}.dsl").read_text()
    assert "**** Unknown" not in dsl and "Invalid" not in dsl, dsl
    return dsl


def compile_asl(iasl: str, asl: str, workdir: Path, name: str = "t") -> bytes:
    """Compile a DefinitionBlock with iasl; returns the AML table bytes."""
    src = workdir / f"{name}.asl"
    src.write_text(asl)
    proc = subprocess.run([iasl, "-p", str(workdir / name), str(src)], capture_output=True, text=True,
                          timeout=60, cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (workdir / f"{name}.aml").read_bytes()


def acpiexec_run(acpiexec: str, dsdt: bytes, workdir: Path, commands: list[str]) -> str:
    """Load `dsdt` into ACPICA's interpreter and run batch commands; returns its output."""
    path = workdir / "dsdt.aml"
    path.write_bytes(dsdt)
    proc = subprocess.run([acpiexec, "-b", "; ".join(commands), str(path)], capture_output=True, text=True,
                          timeout=120, cwd=workdir)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "successfully acquired and loaded" in output, output
    assert not re.search(r"ACPI Error|AE_[A-Z_]+(?<!AE_OK)\b", output), output
    return output
