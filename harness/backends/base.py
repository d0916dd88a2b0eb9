"""What a backend is: something that starts a guest and hands back a console and events.

Every backend runs its VM in a child process (the built-in VMM as `python -m
harness.backends.builtin_vm`, QEMU as itself). That gives one shape for both: the child's
stdout is the guest console, its stdin feeds the guest's UART, it appends VmEvents to
`<workdir>/events.jsonl`, and a hung guest is killed with its process group. The runner
(harness.runner.execute) never needs to know which backend it is talking to.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BootRequest:
    """Everything a backend needs to boot one cell. Paths are resolved, read-only inputs."""
    cell_id: str
    guest: str
    family: str                 # linux | netbsd | openbsd | freebsd | fixture | xen | other
    arch: str                   # x86_64 | aarch64
    boot: str                   # bzimage | pvh | multiboot | netbsd | openbsd | freebsd | firmware | image
    kernel: Path | None
    initrd: Path | None = None
    disk: Path | None = None    # never written: backends put a copy-on-write overlay in workdir
    cmdline: str = ""
    memory_mib: int = 256
    vcpus: int = 1
    cpu_profile: str = "default"
    gap_policy: str = "emulate"
    workdir: Path = Path(".")
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific section of the guest file
    host_quirks: list[str] = field(default_factory=list)   # of the KVM it runs on (the lab agent probes them)

    @property
    def events_path(self) -> Path:
        return self.workdir / "events.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.workdir / "summary.json"


@dataclass
class SessionSummary:
    """What a backend knows after the guest stopped, beyond the console and events."""
    exit_code: int | None
    exit_counts: dict[str, int] = field(default_factory=dict)
    flight_recorder: list[dict[str, Any]] = field(default_factory=list)
    host: dict[str, Any] = field(default_factory=dict)        # kvm module, hardware-backed?, qemu version
    command: list[str] = field(default_factory=list)          # the child's argv, for reproducing
    stderr_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class BackendSession(ABC):
    """A running guest. The runner reads `console_fd`, calls `send`, tails `request.events_path`."""

    def __init__(self, request: BootRequest) -> None:
        self.request = request
        self.start_time = time.monotonic()

    @property
    @abstractmethod
    def console_fd(self) -> int:
        """Readable fd of raw console bytes; EOF when the guest is gone."""

    @abstractmethod
    def send(self, data: bytes) -> None:
        """Bytes typed on the guest console (dialog answers)."""

    @abstractmethod
    def poll_exit(self) -> int | None:
        """The child's exit code, or None while it runs."""

    @abstractmethod
    def stop(self) -> SessionSummary:
        """Stop the guest (if it still runs) and return what the backend learned."""

    def hold_for_debugger(self) -> None:
        """--gdb-on-failure: keep the failed guest until it ends by itself (the debugger kills it)."""
        while self.poll_exit() is None:
            time.sleep(0.2)


class ProcessSession(BackendSession):
    """A BackendSession around one child process in its own process group."""

    def __init__(self, request: BootRequest, argv: list[str], env: dict[str, str] | None = None) -> None:
        super().__init__(request)
        request.workdir.mkdir(parents=True, exist_ok=True)
        self.argv = argv
        self._stderr_path = request.workdir / "backend.stderr.log"
        self._stderr = open(self._stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, start_new_session=True, bufsize=0, preexec_fn=_die_with_parent)
        self.start_time = time.monotonic()

    @property
    def console_fd(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, data: bytes) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the guest is gone; the runner sees EOF on the console

    def poll_exit(self) -> int | None:
        return self.proc.poll()

    def terminate(self, grace_s: float = 3.0) -> int:
        """SIGTERM the process group, then SIGKILL after `grace_s`."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stderr_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self._stderr_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode(errors="replace")


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the runner dies. A VM child runs in its own session
    (so a hung guest can be killed as a group), which also means a killed runner's Ctrl-C or kill -9
    would not reach it; without this, a guest spinning in `b .` outlives the run forever."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:   # the parent died before prctl took effect
            os._exit(1)
    except OSError:
        pass


class Backend(ABC):
    name: str = ""

    @abstractmethod
    def check(self, request: BootRequest) -> None:
        """Raise BackendUnavailable (with the fix) when this backend cannot run `request` here."""

    @abstractmethod
    def start(self, request: BootRequest) -> BackendSession:
        """Boot the guest; return at once with the session running."""


BACKEND_NAMES = ("builtin", "qemu-tcg", "qemu-kvm", "replay")


def get_backend(name: str, host: str = "native") -> Backend:
    """The backend called `name` (imported lazily: the QEMU backend must not need cffi, and back).
    `host` other than native: the backend whose VM child runs there (harness.hosts)."""
    if host != "native":
        from harness.hosts.backend import host_backend
        return host_backend(name, host)
    if name == "builtin":
        from harness.backends.builtin import BuiltinBackend
        return BuiltinBackend()
    if name in ("qemu-tcg", "qemu-kvm"):
        from harness.backends.qemu import QemuBackend
        return QemuBackend(accel=name.split("-", 1)[1])
    if name == "replay":
        from harness.backends.replay import ReplayBackend
        return ReplayBackend()
    from harness.errors import ConfigError
    raise ConfigError(f"unknown backend {name!r}", f"use one of {', '.join(BACKEND_NAMES)}")
