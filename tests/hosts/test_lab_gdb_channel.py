"""The lab's gdb channel without a lab: the host's bridge and the agent's relay joined by a
socketpair standing in for the harness.gdb virtio-serial port, a TCP stub standing in for the
VMM child's. What a debugger sends arrives in order (Ctrl-C included) even when it connects
before the stub listens; either side's end reaches the other; a port in use is one line."""
from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from harness.errors import BackendUnavailable
from harness.hosts.agent import write_all
from harness.hosts.gdbbridge import GdbBridge, RspActivity
from harness.hosts.gdbmux import DATA, HEADER, MAX_PAYLOAD, OPEN, AgentRelay, Frame, FrameError, FrameReader


class Channel:
    """A bridge (host) and a relay (agent) on the two ends of one socketpair, each with its loop."""

    def __init__(self, stub_port: int) -> None:
        self.host_end, self.lab_end = socket.socketpair()
        self.bridge = GdbBridge(("127.0.0.1", 0), target=f"127.0.0.1:{stub_port}")
        conns = iter(range(1, 1000))
        self.bridge.start(self.host_end.sendall, lambda: next(conns))
        self.relay = AgentRelay(self.lab_end.fileno(), write_all)
        self.running = True
        self.threads = [threading.Thread(target=self._host_reader, daemon=True),
                        threading.Thread(target=self._agent_loop, daemon=True)]
        for t in self.threads:
            t.start()

    def _host_reader(self) -> None:
        reader = FrameReader()
        while self.running:
            try:
                chunk = self.host_end.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            for frame in reader.feed(chunk):
                self.bridge.on_frame(frame)

    def _agent_loop(self) -> None:
        while self.running:
            readable, _, _ = select.select(self.relay.fds(), [], [], 0.05)
            self.relay.readable(readable)

    def debugger(self) -> socket.socket:
        return socket.create_connection(self.bridge.address, timeout=5)

    def close(self) -> None:
        self.running = False
        self.bridge.close()
        self.host_end.close()
        for t in self.threads:
            t.join(2)
        self.lab_end.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"closed after {out!r}"
        out += chunk
    return out


def test_a_debugger_that_connects_before_the_stub_listens_loses_nothing_and_ctrl_c_arrives():
    port = _free_port()
    channel = Channel(port)
    try:
        gdb = channel.debugger()
        gdb.sendall(b"+$qSupported#37")               # sent while no stub listens: held by the bridge
        time.sleep(0.5)                               # the relay's connects are refused meanwhile
        stub_listener = socket.create_server(("127.0.0.1", port))
        stub, _ = stub_listener.accept()
        assert _recv_exactly(stub, 15) == b"+$qSupported#37"
        stub.sendall(b"+$PacketSize=4000#00")
        assert _recv_exactly(gdb, 20) == b"+$PacketSize=4000#00"
        gdb.sendall(b"\x03")                          # Ctrl-C is one raw byte
        assert _recv_exactly(stub, 1) == b"\x03"
        big = bytes(range(256)) * 600                 # more than one frame's payload
        stub.sendall(big)
        assert _recv_exactly(gdb, len(big)) == big
        gdb.close()                                   # the debugger leaves: the stub sees its end
        stub.settimeout(5)
        assert stub.recv(10) == b""
        gdb2 = channel.debugger()                     # and a second debugger gets a connection of its own
        stub2, _ = stub_listener.accept()
        stub2.sendall(b"$T05#b9")
        assert _recv_exactly(gdb2, 7) == b"$T05#b9"
        stub2.close()                                 # the stub ends it (gdb's kill): the debugger sees EOF
        gdb2.settimeout(5)
        assert gdb2.recv(10) == b""
        stub_listener.close()
    finally:
        channel.close()


def test_the_end_of_the_cell_closes_every_debugger_connection():
    stub_listener = socket.create_server(("127.0.0.1", 0))
    channel = Channel(stub_listener.getsockname()[1])
    try:
        gdb = channel.debugger()
        gdb.sendall(b"+")
        stub, _ = stub_listener.accept()
        assert _recv_exactly(stub, 1) == b"+"
        channel.bridge.close()
        gdb.settimeout(5)
        assert gdb.recv(10) == b""
        with pytest.raises(OSError):
            socket.create_connection(channel.bridge.address, timeout=1).recv(1)
    finally:
        channel.close()
        stub_listener.close()


def test_a_port_in_use_is_the_same_one_line_error_as_natively():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(BackendUnavailable) as err:
            GdbBridge(("127.0.0.1", port))
    assert err.value.one_line() == (f"error: the gdb stub cannot listen on 127.0.0.1:{port}: Address already in use "
                                    "(fix: pick another port (--gdb PORT; --gdb 0 takes any free one))")
    assert GdbBridge.for_request({}) is None
    bridge = GdbBridge.for_request({"debug": {"listen": None, "wait": False, "on_failure": True}})
    assert bridge.address[0] == "127.0.0.1" and bridge.address[1] > 0   # loopback, any free port
    bridge.close()


def test_frames_from_the_lab_are_bounded_and_checked():
    reader = FrameReader()
    frame = Frame(DATA, 7, b"$g#67").encode()
    assert reader.feed(frame[:3]) == [] and reader.feed(frame[3:]) == [Frame(DATA, 7, b"$g#67")]
    with pytest.raises(FrameError):
        reader.feed(HEADER.pack(DATA, 1, MAX_PAYLOAD + 1))
    with pytest.raises(FrameError):
        reader.feed(HEADER.pack(b"Z", 1, 0))
    assert reader.feed(Frame(OPEN, 2).encode()) == [Frame(OPEN, 2)]   # the reader starts afresh after an error


def test_stops_and_resumes_are_read_from_the_packets_going_by():
    seen: list[str] = []
    activity = RspActivity(seen.append)
    activity.from_debugger(b"+$qSupported:multiprocess+#c6")
    activity.from_stub(b"+$PacketSize=1000#00")
    assert seen == []
    activity.from_debugger(b"$vCo")                   # a packet cut by the chunk's end
    activity.from_debugger(b"nt;c:p1.-1#0f")
    activity.from_stub(b"+$T05thread:01;#07")
    activity.from_debugger(b"$s#73")
    activity.from_stub(b"$S05#b8")
    activity.from_debugger(b"$m1000,4#8d")
    activity.from_stub(b"$W00#b7")
    activity.from_debugger(b"$D#44")                  # detach: the stub lets the guest run
    assert seen == ["resume", "stop", "resume", "stop", "stop", "resume"]
