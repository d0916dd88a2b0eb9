"""A fork server for the built-in VMM: import the VMM once, fork a child per cell.

A fresh `python -m harness.backends.builtin_vm SPEC` spends most of its start-up importing the
VMM (the interpreter, the stdlib it needs, ~60 modules of the harness) before the guest runs its
first instruction. The server (one per runner process, started on the first built-in cell) has
done that once; each cell's VMM is a fork of it that goes straight to building the VM.

    client (BuiltinBackend.start)                 server (this module's `serve`)
    socket.send_fds("SPEC\\n", [stdin, stdout, stderr])  --->  fork: the child setsid()s, takes the
    <--- "PID\\n"                                              three fds as 0/1/2, dies with the
    ...                                                       server (PR_SET_PDEATHSIG), runs
    <--- "EXIT CODE\\n" (CODE: as Popen.returncode)             builtin_vm.main([SPEC])

The child is its own session and process group, as a Popen'd VMM is, so the runner stops it
with killpg exactly the same way; the server dies with the runner (PR_SET_PDEATHSIG), and every
child with the server, so a killed runner still takes its guests with it. The server is single-
threaded: forking it is safe.
"""
from __future__ import annotations

import atexit
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

MAX_SPEC = 4096


def _warm() -> None:
    """Import what every VMM child of this machine's architecture runs (harness.backends.vmm_warm,
    the one list; the lab's agent warms its children from it too). A guest of another
    architecture than the host's is refused before a child starts."""
    from harness.backends.vmm_warm import warm
    warm()


def _die_with(sig: int = signal.SIGKILL) -> None:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, sig, 0, 0, 0)   # PR_SET_PDEATHSIG


def _child(spec: str, fds: list[int], listener: socket.socket, conns: list[socket.socket]) -> None:
    """In the forked child: become a VMM process exactly like `python -m harness.backends.builtin_vm SPEC`."""
    try:
        listener.close()
        for conn in conns:
            conn.close()
        os.setsid()
        _die_with()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        for name in os.listdir("/proc/self/fd"):   # the server's sockets, pipes and epoll fd
            if int(name) > 2:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        if os.getppid() == 1:       # the server died before prctl took effect
            os._exit(1)
        sys.argv = ["harness.backends.builtin_vm", spec]
        from harness.backends import builtin_vm
        code = builtin_vm.main([spec])
    except BaseException:       # noqa: B902  a child must never return into the server's loop
        code = 2
    os._exit(code)


def _exit_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve(address: str) -> None:
    """Listen on the abstract Unix socket `address` (no file to clean up after a SIGKILL), say
    "ready" on stdout once listening, then fork a VMM child per request until the runner dies."""
    _die_with()
    _warm()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + address)
    listener.listen(16)
    os.write(1, b"ready\n")
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel.register(wake_r, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                _start(conn, listener, children)
            elif key.fileobj == wake_r:
                os.read(wake_r, 512)
        _reap(children)


def _start(conn: socket.socket, listener: socket.socket, children: dict[int, socket.socket]) -> None:
    try:
        msg, fds, _, _ = socket.recv_fds(conn, MAX_SPEC, 3)
    except OSError:
        conn.close()
        return
    if len(fds) != 3 or not msg.endswith(b"\n"):
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        _child(msg.decode().rstrip("\n"), fds, listener, [conn, *children.values()])
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    try:
        conn.sendall(f"{pid}\n".encode())
    except OSError:
        pass


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(f"EXIT {_exit_code(status)}\n".encode())
            except OSError:
                pass
            conn.close()


# -- the client: used by BuiltinBackend in the runner's process ------------------------------------
FORK_ENV = "HARNESS_VMM_FORK"      # "0": start every VMM child with exec, as before the server
_lock = threading.Lock()
_server: dict[str, Any] = {}


class ServerChild:
    """A VMM child forked by the server, with the part of Popen's interface ProcessSession uses."""

    def __init__(self, conn: socket.socket, pid: int, stdin: int, stdout: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(stdin, "wb", buffering=0)
        self.stdout = os.fdopen(stdout, "rb", buffering=0)
        self.returncode: int | None = None
        self._conn = conn
        self._buf = b""

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"vmm child {self.pid}", timeout or 0)
            self._read(left)
        return self.returncode

    def _read(self, timeout: float | None) -> None:
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            return
        data = self._conn.recv(256)
        if not data:              # the server is gone, and with it (PR_SET_PDEATHSIG) the child
            self.returncode = -signal.SIGKILL
            self._conn.close()
            return
        self._buf += data
        if b"\n" in self._buf and self._buf.startswith(b"EXIT "):
            self.returncode = int(self._buf.split(b"\n", 1)[0].split()[1])
            self._conn.close()


def _server_address(env: dict[str, str]) -> str | None:
    """The running server's socket address, the server started on first use; None when it cannot
    start here (then every child is exec'd)."""
    with _lock:
        proc = _server.get("proc")
        if proc is not None and proc.poll() is None:
            return _server["address"]
        from harness.backends.base import _die_with_parent
        address = f"harness-vmm-{os.getpid()}-{os.urandom(6).hex()}"
        proc = subprocess.Popen([sys.executable, "-m", "harness.backends.vmm_server", address], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else b""
        proc.stdout.close()
        if line != b"ready\n":
            proc.kill()
            proc.wait()
            return None
        _server.update(proc=proc, address=address)
        atexit.register(_stop_server, proc)
        return address


def _stop_server(proc: subprocess.Popen) -> None:
    """At the runner's normal exit (a killed runner takes it down by PR_SET_PDEATHSIG instead)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def spawner(spec: Path, env: dict[str, str]) -> Callable[[int], ServerChild] | None:
    """A function that starts the VMM child for `spec` through the server (given the stderr fd the
    child should write to), or None: no server here (then the backend execs the child itself)."""
    if os.environ.get(FORK_ENV, "1") == "0":
        return None
    address = _server_address(env)
    if address is None:
        return None

    def spawn(stderr_fd: int) -> ServerChild:
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect("\0" + address)
            socket.send_fds(conn, [f"{spec}\n".encode()], [stdin_r, stdout_w, stderr_fd])
            reply = b""
            while b"\n" not in reply:
                chunk = conn.recv(64)
                if not chunk:
                    raise OSError("the VMM server closed the connection")
                reply += chunk
        except OSError:
            conn.close()
            for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
                os.close(fd)
            raise
        finally:
            if conn.fileno() >= 0:
                os.close(stdin_r)
                os.close(stdout_w)
        pid, rest = reply.split(b"\n", 1)
        child = ServerChild(conn, int(pid), stdin_w, stdout_r)
        child._buf = rest          # "EXIT n" already, when the child ended at once
        if rest.endswith(b"\n"):
            child.poll()
        return child
    return spawn


if __name__ == "__main__":
    serve(sys.argv[1])
