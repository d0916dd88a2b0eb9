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
from typing import Any, Callable

from harness.model.session import BootRequest, SessionSummary


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

    def __init__(self, request: BootRequest, argv: list[str], env: dict[str, str] | None = None,
                 spawn: Callable[[int], Any] | None = None) -> None:
        """`spawn(stderr_fd)`, when given, starts the child some other way than exec'ing `argv` (the
        built-in VMM's fork server) and returns an object with Popen's pid/stdin/stdout/poll/wait/
        returncode; the child must be its own process group and die with the runner, as here."""
        super().__init__(request)
        request.workdir.mkdir(parents=True, exist_ok=True)
        self.argv = argv
        self._stderr_path = request.workdir / "backend.stderr.log"
        self._stderr = open(self._stderr_path, "wb")
        try:
            self.proc = spawn(self._stderr.fileno()) if spawn is not None else None
        except OSError:     # the other way is not available after all: exec as usual
            self.proc = None
        if self.proc is None:
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
