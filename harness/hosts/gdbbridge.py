"""The host's end of the lab's gdb channel: a TCP listener at the user's `--gdb [HOST:]PORT`.

Each debugger that connects becomes one connection of the multiplexed harness.gdb port
(harness.hosts.gdbmux): OPEN with the stub's address in the lab, then its bytes both ways, then
CLOSE. Until the agent answers OPEN (it reached the stub) the debugger's bytes are held here; a
CLOSE instead (no stub listens yet: the VMM child is still building its VM, or QEMU has not
opened its socket) makes the bridge ask again every RETRY_S while the cell runs. So a debugger
may connect as soon as the address is announced, and nothing it sends is lost or sent twice.
One thread per debugger connection reads it; the lab's gdb-port reader delivers the other way.

A stub that reports no stops and resumes of its own (QEMU's, whose QMP stays in the lab) gets
them from RspActivity, which reads the packets going by: a resume command from the debugger,
a stop reply from the stub; the runner's watcher stops its clocks in between, as for QMP's
STOP/RESUME natively.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from harness.backends.debugopts import DebugOptions, listen_error
from harness.hosts.gdbmux import CLOSE, DATA, LAB_STUB_HOST, LAB_STUB_PORT, OPEN, Frame, frames_of

RETRY_S = 0.2
GIVE_UP_S = 120.0           # no stub in the lab for this long after a debugger connected: drop it
MAX_HELD = 1 << 20          # bytes held for a connection the stub has not accepted yet
READ_POLL_S = 0.1


# GDB remote protocol: packets are `$data#xx`; '$' never occurs inside (escaped in binary data).
RESUME_COMMANDS = (b"c", b"C", b"s", b"S", b"vCont;c", b"vCont;C", b"vCont;s", b"vCont;S", b"D")  # D: detach runs it
STOP_REPLIES = (b"T", b"S", b"W", b"X")
_LONGEST_PREFIX = max(len(x) for x in RESUME_COMMANDS)


class RspActivity:
    """Stops and resumes seen in a connection's packets: `notify("stop" | "resume")`."""

    def __init__(self, notify: Callable[[str], None]) -> None:
        self.notify = notify
        self._tails = {"debugger": b"", "stub": b""}

    def from_debugger(self, data: bytes) -> None:
        if any(p.startswith(RESUME_COMMANDS) for p in self._packets("debugger", data)):
            self.notify("resume")

    def from_stub(self, data: bytes) -> None:
        if any(p[:1] in STOP_REPLIES for p in self._packets("stub", data)):
            self.notify("stop")

    def _packets(self, side: str, data: bytes) -> list[bytes]:
        """The starts of the packets in `data` (a start cut by the chunk's end is kept for the next)."""
        text = self._tails[side] + data
        starts = text.split(b"$")[1:]
        self._tails[side] = b""
        if starts and b"#" not in starts[-1] and len(starts[-1]) < _LONGEST_PREFIX:
            self._tails[side] = b"$" + starts.pop()
        return starts


@dataclass
class _Client:
    conn: int
    sock: socket.socket
    connected: bool = False
    held: bytearray = field(default_factory=bytearray)
    retry_at: float | None = None
    since: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


class GdbBridge:
    """Listens from its creation (a port in use is an error before any lab starts); carries
    connections once `start` has given it the lab's gdb port."""

    def __init__(self, listen: tuple[str, int], target: str = f"{LAB_STUB_HOST}:{LAB_STUB_PORT}") -> None:
        host, port = listen
        try:
            self.listener = socket.create_server((host, port))
        except OSError as exc:
            raise listen_error(host, port, exc) from None
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._target = target.encode()
        self._send: Callable[[bytes], None] = lambda data: None
        self._new_conn: Callable[[], int] = lambda: 0
        self._clients: dict[int, _Client] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.activity: RspActivity | None = None    # set for stubs that report no stops of their own

    @classmethod
    def for_request(cls, options: dict | None) -> "GdbBridge | None":
        """The bridge a cell's debug options ask for (--gdb, --gdb-wait, --gdb-on-failure), or None."""
        debug = DebugOptions.from_options(options)
        return cls(debug.address()) if debug.enabled else None

    def start(self, send: Callable[[bytes], None], new_conn: Callable[[], int]) -> "GdbBridge":
        """`send` writes frames to the lab's gdb port; `new_conn` gives a connection id unique in the lab."""
        self._send, self._new_conn = send, new_conn
        threading.Thread(target=self._accept, name="lab-gdb-listen", daemon=True).start()
        return self

    def close(self) -> None:
        """The cell ended: no more debuggers; the connected ones see their connection close."""
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the accept (a close alone does not)
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            self._drop(client)

    # -- frames from the lab (the lab's gdb-port reader thread) ---------------------------------
    def on_frame(self, frame: Frame) -> None:
        with self._lock:
            client = self._clients.get(frame.conn)
        if client is None:
            return                      # a connection that already ended, or another cell's
        if frame.kind == OPEN:
            with client.lock:
                client.connected, held = True, bytes(client.held)
                client.held.clear()
            if held:
                self._send(frames_of(DATA, client.conn, held))
        elif frame.kind == DATA:
            if self.activity is not None:
                self.activity.from_stub(frame.payload)
            try:
                client.sock.sendall(frame.payload)
            except OSError:
                self._drop(client)
        elif frame.kind == CLOSE:
            with client.lock:
                retry = not client.connected and time.monotonic() - client.since < GIVE_UP_S
                if retry:              # no stub listens yet: ask again
                    client.retry_at = time.monotonic() + RETRY_S
                    return
            self._drop(client)

    def drop_all(self) -> None:
        """The channel's stream cannot be trusted any more (a malformed frame): end every connection."""
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            self._drop(client)

    # -- debuggers on this machine ----------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            if self._closed:
                sock.close()
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(self._new_conn(), sock)
            with self._lock:
                self._clients[client.conn] = client
            threading.Thread(target=self._serve, args=(client,), name=f"lab-gdb-{client.conn}", daemon=True).start()

    def _serve(self, client: _Client) -> None:
        self._send(Frame(OPEN, client.conn, self._target).encode())
        client.sock.settimeout(READ_POLL_S)
        while not self._closed:
            try:
                data = client.sock.recv(65536)
            except TimeoutError:
                self._maybe_retry(client)
                continue
            except OSError:
                break
            if not data:
                break
            if not self._forward(client, data):
                break
        if not self._closed:   # a closed bridge's cell has ended: the agent has dropped its connections
            self._send(Frame(CLOSE, client.conn, b"the debugger left").encode())
        self._drop(client)

    def _forward(self, client: _Client, data: bytes) -> bool:
        if self.activity is not None:
            self.activity.from_debugger(data)
        with client.lock:
            if not client.connected:
                client.held += data
                return len(client.held) <= MAX_HELD
        self._send(frames_of(DATA, client.conn, data))
        return True

    def _maybe_retry(self, client: _Client) -> None:
        with client.lock:
            due = client.retry_at is not None and time.monotonic() >= client.retry_at
            if due:
                client.retry_at = None
        if due:
            self._send(Frame(OPEN, client.conn, self._target).encode())

    def _drop(self, client: _Client) -> None:
        with self._lock:
            self._clients.pop(client.conn, None)
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            client.sock.close()
