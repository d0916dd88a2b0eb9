"""The built-in backend: our own Python VMM on /dev/kvm, run as a child process.

check() refuses what cannot work here (no usable /dev/kvm, not x86_64, a boot method we have
no loader for) with a one-line BackendUnavailable; start() writes the spec JSON into the
cell's workdir and spawns `python -m harness.backends.builtin_vm spec.json`.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from harness.backends.base import Backend, ProcessSession
from harness.errors import BackendUnavailable, KvmUnavailable
from harness.model.session import BootRequest, SessionSummary

SPEC_NAME = "builtin-spec.json"
ARCHES = ("x86_64", "aarch64")          # a guest runs on a host of its own architecture
AARCH64_BOOT_METHODS = {"auto", "image", "netbsd"}   # harness.boot.arm64
# Accepted on aarch64 although nothing loads it: the child records a `firmware-boot` gap (no UEFI
# flash emulation yet), so such a cell ends as a gap with its record, not as an unavailable backend.
AARCH64_GAP_BOOT_METHODS = {"firmware"}


def supported_boot_methods() -> set[str]:
    """Boot methods the child can load: the loaders' table and auto-detection."""
    from harness import boot
    return set(boot.LOADERS) | {boot.AUTO}


class BuiltinSession(ProcessSession):
    def hold_for_debugger(self) -> None:
        """Stop the guest's vCPUs in the child (SIGUSR2: builtin_gdb.HOLD_SIGNAL), then wait for its end."""
        import signal
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGUSR2)
        super().hold_for_debugger()

    def stop(self) -> SessionSummary:
        code = self.terminate()
        summary = read_summary(self.request.summary_path, code)
        summary.command = summary.command or list(self.argv)
        summary.stderr_tail = self.stderr_tail()
        return summary


def read_summary(path: Path, exit_code: int | None) -> SessionSummary:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return SessionSummary(exit_code=exit_code, extra={"summary_missing": True,
                                                          "note": f"the VMM child wrote no {path.name} "
                                                                  "(killed before it could, or crashed)"})
    except (OSError, ValueError) as exc:
        return SessionSummary(exit_code=exit_code, extra={"summary_missing": True, "note": f"unreadable: {exc}"})
    summary = SessionSummary.from_json(data)
    summary.exit_code = exit_code
    return summary


def _fork_server(spec: Path, env: dict[str, str]) -> Any:
    """The VMM fork server's spawner (the child skips the imports; see vmm_server.py), or None."""
    from harness.backends import vmm_server
    try:
        return vmm_server.spawner(spec, env)
    except OSError:
        return None


class BuiltinBackend(Backend):
    name = "builtin"

    def __init__(self, kvm_path: str = "/dev/kvm") -> None:
        self.kvm_path = kvm_path

    def check(self, request: BootRequest) -> None:
        self.check_guest(request, platform.machine())
        from harness.kvm.vm import require_kvm
        try:
            require_kvm(self.kvm_path)
        except KvmUnavailable as exc:
            raise BackendUnavailable(exc.problem, exc.fix) from None

    def check_guest(self, request: BootRequest, host_arch: str) -> None:
        """What the VMM child can boot on a host of `host_arch` (this machine, or a lab)."""
        if request.arch not in ARCHES or host_arch != request.arch:
            raise BackendUnavailable(f"the built-in VMM runs {host_arch} guests on this {host_arch} host, "
                                     f"not {request.arch}",
                                     "use the qemu-tcg backend for this cell, or host: lab (the lab of its arch)")
        from harness.backends.debugopts import DebugOptions
        if request.arch == "aarch64" and DebugOptions.from_options(request.options).enabled:
            raise BackendUnavailable("the built-in gdb stub serves x86-64 guests only (its aarch64 half is not "
                                     "written yet)", "debug this guest on qemu-tcg (--backend qemu-tcg --gdb PORT)")
        methods = AARCH64_BOOT_METHODS | AARCH64_GAP_BOOT_METHODS if request.arch == "aarch64" \
            else supported_boot_methods()
        if request.boot not in methods:
            raise BackendUnavailable(f"the built-in VMM cannot boot {request.boot!r} guests",
                                     f"use one of {', '.join(sorted(methods))}, or the qemu-tcg backend")

    def start(self, request: BootRequest) -> BuiltinSession:
        from harness.backends.builtin_vm import request_to_json
        request.workdir.mkdir(parents=True, exist_ok=True)
        spec = request.workdir / SPEC_NAME
        spec.write_text(request_to_json(request))
        for stale in (request.summary_path,):
            stale.unlink(missing_ok=True)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        argv = [sys.executable, "-m", "harness.backends.builtin_vm", str(spec)]
        return BuiltinSession(request, argv, env=env, spawn=_fork_server(spec, env))
