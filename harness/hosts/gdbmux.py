"""The lab's gdb channel: debugger connections multiplexed over one virtio-serial port (harness.gdb).

A virtio-serial port is one byte stream with no notion of a connection, and the host keeps its
end open for the lab's whole life; gdb connects, disconnects and reconnects. So the port carries
frames, each `kind (1 byte) | connection id (u32) | length (u32) | payload`:
  OPEN   host -> lab   a debugger connected on the host; payload: the stub's "HOST:PORT" in the lab
         lab -> host   the agent reached the stub (until then the host holds the debugger's bytes;
                       a CLOSE instead means no stub listens yet, and the host asks again)
  DATA   both ways     bytes of that connection, in order (gdb's Ctrl-C is a raw 0x03 among them)
  CLOSE  both ways     that side of the connection ended (payload: why, for the log)
Connection ids are the host's and never reused within a lab, so a frame of a connection that
ended (or of an earlier cell) reaches nobody. Standard library only: the lab's agent imports it
(harness.hosts.agent, which forks the VMM child; see AgentRelay), and so does the host's bridge
(harness.hosts.gdbbridge).
"""
from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable

OPEN, DATA, CLOSE = b"O", b"D", b"C"
KINDS = (OPEN, DATA, CLOSE)
HEADER = struct.Struct("!cII")
MAX_PAYLOAD = 64 << 10          # a gdb packet is at most a few KiB (the stub's MAX_PACKET is 16 KiB)
LAB_STUB_PORT = 1234            # the stub's port inside the lab: one cell at a time there, so one port
LAB_STUB_HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 2.0


# <linux/sockios.h>, <net/if.h>: the lab's init brings up no network, not even the loopback
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ_FLAGS = struct.Struct("16sH")


def loopback_up() -> str | None:
    """Bring the lab's `lo` up (its stubs listen on 127.0.0.1); the error, if it cannot be."""
    import fcntl
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            _, flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(s, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(b"lo", 0)))
            if not flags & IFF_UP:
                fcntl.ioctl(s, SIOCSIFFLAGS, _IFREQ_FLAGS.pack(b"lo", flags | IFF_UP))
    except OSError as exc:
        return f"cannot bring the lab's loopback up: {exc}"
    return None


class FrameError(ValueError):
    """A malformed frame: the stream cannot be trusted past it."""


@dataclass(frozen=True)
class Frame:
    kind: bytes
    conn: int
    payload: bytes = b""

    def encode(self) -> bytes:
        return HEADER.pack(self.kind, self.conn, len(self.payload)) + self.payload


def frames_of(kind: bytes, conn: int, data: bytes) -> bytes:
    """`data` of one connection as DATA frames of at most MAX_PAYLOAD bytes (or one frame of another kind)."""
    if kind != DATA:
        return Frame(kind, conn, data[:MAX_PAYLOAD]).encode()
    return b"".join(Frame(DATA, conn, data[i:i + MAX_PAYLOAD]).encode() for i in range(0, len(data), MAX_PAYLOAD))


class FrameReader:
    """Frames out of a byte stream read in arbitrary chunks. The lab's side is untrusted (a guest
    that escaped the VMM is in it): a frame of an unknown kind or over MAX_PAYLOAD is an error."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buf += chunk
        out: list[Frame] = []
        while len(self._buf) >= HEADER.size:
            kind, conn, length = HEADER.unpack_from(self._buf)
            if kind not in KINDS or length > MAX_PAYLOAD:
                header = bytes(self._buf[:HEADER.size]).hex()
                self._buf.clear()
                raise FrameError(f"bad gdb-channel frame header {header}")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            out.append(Frame(kind, conn, bytes(self._buf[HEADER.size:end])))
            del self._buf[:end]
        return out


def parse_target(payload: bytes) -> tuple[str, int]:
    host, _, port = payload.decode("ascii", "replace").rpartition(":")
    return host or LAB_STUB_HOST, int(port)


class AgentRelay:
    """The agent's end: each OPEN becomes a TCP connection to the VMM child's stub in the lab.
    Single-threaded like the agent: it hands its fds to the agent's select() and is told what is
    readable. Writes to the stub are blocking (loopback, small packets)."""

    def __init__(self, port_fd: int, write_port: Callable[[int, bytes], None]) -> None:
        self.port_fd = port_fd
        self._write_port = write_port
        self._reader = FrameReader()
        self.conns: dict[int, socket.socket] = {}

    def fds(self) -> list[int]:
        return [self.port_fd, *(s.fileno() for s in self.conns.values())]

    def readable(self, fds: list[int]) -> None:
        if self.port_fd in fds:
            self._from_host()
        for conn, sock in list(self.conns.items()):
            if sock.fileno() in fds:
                self._from_stub(conn, sock)

    def close_all(self, why: str) -> None:
        for conn in list(self.conns):
            self._close(conn, why)

    def _from_host(self) -> None:
        try:
            data = os.read(self.port_fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            time.sleep(0.05)   # no host on the port: a virtio port reads EOF then
            return
        try:
            frames = self._reader.feed(data)
        except FrameError as exc:
            self.close_all(str(exc))
            return
        for frame in frames:
            self._frame(frame)

    def _frame(self, frame: Frame) -> None:
        if frame.kind == OPEN:
            try:
                sock = socket.create_connection(parse_target(frame.payload), timeout=CONNECT_TIMEOUT_S)
            except (OSError, ValueError) as exc:
                self._send(CLOSE, frame.conn, f"no gdb stub in the lab: {exc}".encode())
                return
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[frame.conn] = sock
            self._send(OPEN, frame.conn, b"")
        elif frame.kind == DATA and frame.conn in self.conns:
            try:
                self.conns[frame.conn].sendall(frame.payload)
            except OSError as exc:
                self._close(frame.conn, f"stub: {exc}")
        elif frame.kind == CLOSE and frame.conn in self.conns:
            self.conns.pop(frame.conn).close()   # the debugger left: the stub sees its end

    def _from_stub(self, conn: int, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:
            self._send(DATA, conn, data)
        else:
            self._close(conn, "the stub closed the connection")

    def _close(self, conn: int, why: str) -> None:
        sock = self.conns.pop(conn, None)
        if sock is not None:
            sock.close()
        self._send(CLOSE, conn, why.encode())

    def _send(self, kind: bytes, conn: int, data: bytes) -> None:
        self._write_port(self.port_fd, frames_of(kind, conn, data))
