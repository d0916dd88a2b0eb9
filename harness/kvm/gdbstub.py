"""A GDB remote serial protocol server for the built-in VMM (one client at a time, all-stop).

    gdb -ex 'target remote 127.0.0.1:1234' vmlinux
One thread per vCPU (thread id = vCPU index + 1). Packets served: qSupported, qXfer:features:read
(target.xml from gdbtarget), ?, g/G, p/P, m/M/X (guest-virtual through the selected vCPU's page
tables via KVM_TRANSLATE, or guest-physical after `monitor phys on` / Qqemu.PhyMemMode:1),
Z0-Z4/z0-z4, c/s, vCont (c, C, s, S, t), Ctrl-C, H, T, qfThreadInfo, qC, qAttached, qRcmd
(monitor), D (detach: breakpoints removed, guest resumed), k (kill: the VM ends). Every address
and length from the client is bounds-checked before guest RAM is touched (GuestRam raises; the
reply is an error packet).
"""
from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass
from typing import Callable

from harness.errors import GuestMemoryError
from harness.kvm import debugregs as dr
from harness.kvm import gdbtarget
from harness.kvm.debugger import CONTINUE, INT3, STAY, STEP, Debugger, StopEvent

MAX_PACKET = 0x4000
MAX_MEMORY_READ = 0x2000          # per m packet; gdb asks again for the rest
POLL_S = 0.05
_Z_KINDS = {"1": dr.RW_EXEC, "2": dr.RW_WRITE, "3": dr.RW_ACCESS, "4": dr.RW_ACCESS}


def checksum(data: bytes) -> bytes:
    return f"{sum(data) & 0xFF:02x}".encode()


def escape_binary(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes:
    out, it = bytearray(), iter(data)
    for b in it:
        out.append((next(it, 0) ^ 0x20) if b == 0x7D else b)
    return bytes(out)


@dataclass
class Hooks:
    """What the VMM does when the client ends the session."""
    kill: Callable[[], None]
    detach: Callable[[], None] = lambda: None


class GdbServer:
    def __init__(self, debugger: Debugger, host: str, port: int, hooks: Hooks) -> None:
        self.debugger = debugger
        self.hooks = hooks
        self.listener = socket.create_server((host, port), reuse_port=False)
        self.address = self.listener.getsockname()[:2]
        self.client: socket.socket | None = None
        self.ack = True
        self.thread_g = self.thread_c = 0          # selected vCPU index for registers/memory and for steps
        self._lock = threading.Lock()
        self._waiting_for_stop = False
        self._closed = False
        self._inbuf = b""

    def start(self) -> None:
        threading.Thread(target=self._serve, name="gdbstub", daemon=True).start()

    def shutdown(self) -> None:
        """The VM ended: tell a client waiting on a resume (W00), then close everything."""
        self._closed = True
        self._exited()
        self._close_client()
        try:
            self.listener.close()
        except OSError:
            pass

    def _exited(self) -> None:
        """Tell a client that waits for a stop that the VM is gone (once, whoever notices first)."""
        with self._lock:
            if self.client is not None and self._waiting_for_stop:
                self._waiting_for_stop = False
                try:
                    self._send_raw(b"W00")
                except OSError:
                    pass

    # -- connection --------------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.client, self.ack, self._inbuf = client, True, b""
            self.debugger.interrupt()               # gdb expects a stopped target on connect
            self.debugger.wait_stopped()
            try:
                self._session()
            except (OSError, ConnectionError):
                pass
            self._close_client()

    def _close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except OSError:
                pass

    def _session(self) -> None:
        while not self._closed and self.client is not None:
            packet = self._read_packet()
            if packet is None:
                return
            reply = self._dispatch(packet)
            if reply is not None:
                self._send(reply)

    def _read_packet(self, timeout: float | None = None) -> bytes | None:
        """The next packet's payload (b'\\x03' for an interrupt); None when the client left or on timeout."""
        assert self.client is not None
        while True:
            while self._inbuf[:1] in (b"+", b"-"):
                self._inbuf = self._inbuf[1:]
            if self._inbuf[:1] == b"\x03":
                self._inbuf = self._inbuf[1:]
                return b"\x03"
            start = self._inbuf.find(b"$")
            end = self._inbuf.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(self._inbuf) >= end + 3:
                payload, sum_ = self._inbuf[start + 1:end], self._inbuf[end + 1:end + 3]
                self._inbuf = self._inbuf[end + 3:]
                if self.ack:
                    self.client.sendall(b"+" if checksum(payload) == sum_.lower() else b"-")
                if checksum(payload) != sum_.lower() and self.ack:
                    continue
                return payload
            if len(self._inbuf) > MAX_PACKET * 2:
                self._inbuf = b""             # garbage without a packet in it: drop it
            ready, _, _ = select.select([self.client], [], [], timeout)
            if not ready:
                return None if timeout is not None else None
            data = self.client.recv(65536)
            if not data:
                self.client = None
                return None
            self._inbuf += data

    def _send(self, payload: str | bytes) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        with self._lock:
            self._send_raw(data)

    def _send_raw(self, data: bytes) -> None:
        if self.client is not None:
            self.client.sendall(b"$" + data + b"#" + checksum(data))

    # -- packets -----------------------------------------------------------------------------------
    def _dispatch(self, packet: bytes) -> str | bytes | None:
        if packet == b"\x03":
            return None                       # interrupt while stopped: nothing to do
        text = packet.decode("latin-1")
        head = text[:1]
        handler = {"?": self._stop_reason, "g": self._read_registers, "G": self._write_registers,
                   "p": self._read_register, "P": self._write_register, "m": self._read_memory,
                   "M": self._write_memory, "X": self._write_binary, "Z": self._breakpoint,
                   "z": self._breakpoint, "c": self._continue, "s": self._step, "H": self._select_thread,
                   "T": self._thread_alive, "D": self._detach, "k": self._kill, "q": self._query,
                   "Q": self._set, "v": self._v_packet}.get(head)
        if handler is None:
            return ""
        try:
            return handler(text)
        except GuestMemoryError:
            return "E14"
        except Exception:  # a malformed packet (or a stub bug) is an error reply, never a dead session
            return "E01"

    def _vcpu(self, index: int | None = None):
        return self.debugger.loop_of(self.thread_g if index is None else index).vcpu

    def _stop_reason(self, _text: str) -> str:
        event = self.debugger.stop
        return stop_reply(event) if event else "S05"

    def _read_registers(self, _text: str) -> str:
        return gdbtarget.read_all(self._vcpu())

    def _write_registers(self, text: str) -> str:
        return "OK" if gdbtarget.write_all(self._vcpu(), text[1:]) else "E01"

    def _read_register(self, text: str) -> str:
        value = gdbtarget.read_one(self._vcpu(), int(text[1:], 16))
        return "E01" if value is None else value

    def _write_register(self, text: str) -> str:
        num, value = text[1:].split("=", 1)
        return "OK" if gdbtarget.write_one(self._vcpu(), int(num, 16), value) else "E01"

    def _read_memory(self, text: str) -> str:
        addr, length = (int(x, 16) for x in text[1:].split(","))
        return self.debugger.read_memory(self.thread_g, addr, min(length, MAX_MEMORY_READ)).hex()

    def _write_memory(self, text: str) -> str:
        where, data = text[1:].split(":", 1)
        addr, length = (int(x, 16) for x in where.split(","))
        raw = bytes.fromhex(data)
        if len(raw) != length:
            return "E01"
        self.debugger.write_memory(self.thread_g, addr, raw)
        return "OK"

    def _write_binary(self, text: str) -> str:
        where, data = text[1:].split(":", 1)
        addr, length = (int(x, 16) for x in where.split(","))
        raw = unescape_binary(data.encode("latin-1"))
        if len(raw) != length:
            return "E01"
        if length:
            self.debugger.write_memory(self.thread_g, addr, raw)
        return "OK"

    def _breakpoint(self, text: str) -> str:
        insert = text[0] == "Z"
        kind, addr_s, length_s = text[1:].split(";", 1)[0].split(",")[:3]
        addr, length = int(addr_s, 16), int(length_s, 16)
        if kind == "0":
            ok = self.debugger.add_software(self.thread_g, addr) if insert else self.debugger.remove_software(addr)
        elif kind in _Z_KINDS:
            rw = _Z_KINDS[kind]
            if kind == "3" and self.debugger.data_breakpoints:
                return ""                       # x86 has no read-only data breakpoint; gdb uses Z4
            length = 1 if rw == dr.RW_EXEC else length
            ok = (self.debugger.add_hardware(self.thread_g, addr, rw, length) if insert
                  else self.debugger.remove_hardware(addr, rw, length))
            if not ok and insert:
                return "E28" if rw == dr.RW_EXEC or self.debugger.data_breakpoints else ""
        else:
            return ""
        return "OK" if ok else "E01"

    def _continue(self, _text: str) -> str | None:
        return self._resume({}, CONTINUE)

    def _step(self, _text: str) -> str | None:
        return self._resume({self.thread_c: STEP}, STAY)

    def _resume(self, actions: dict[int, str], default: str) -> str | None:
        with self._lock:
            self._waiting_for_stop = True
        self.debugger.resume(actions, default)
        return self._wait_for_stop()

    def _wait_for_stop(self) -> str | None:
        """Wait for the VM to stop again, serving Ctrl-C; W00 when it ends instead."""
        while True:
            event = self.debugger.wait_stopped(POLL_S)
            if event is not None and not self.debugger.ended:
                break
            if self.debugger.ended:
                self._exited()
                return None
            packet = self._read_packet(timeout=0)
            if packet == b"\x03":
                self.debugger.interrupt()
            elif packet is None and self.client is None:
                return None
        with self._lock:
            self._waiting_for_stop = False
        self.thread_g = self.thread_c = event.vcpu
        return stop_reply(event)

    def _select_thread(self, text: str) -> str:
        index = _thread_index(text[2:], self.debugger.vcpu_indexes())
        if index is None:
            return "E01"
        if text[1] == "g":
            self.thread_g = index
        else:
            self.thread_c = index
        return "OK"

    def _thread_alive(self, text: str) -> str:
        return "OK" if _thread_index(text[1:], self.debugger.vcpu_indexes()) is not None else "E01"

    def _detach(self, _text: str) -> str:
        self.debugger.clear_all()
        self._send("OK")
        self.hooks.detach()
        self.debugger.resume({}, CONTINUE)
        self._close_client()
        return None  # type: ignore[return-value]

    def _kill(self, _text: str) -> None:
        self.hooks.kill()
        self._close_client()
        return None

    def _query(self, text: str) -> str:
        if text.startswith("qSupported"):
            return (f"PacketSize={MAX_PACKET:x};qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+;"
                    "vContSupported+")
        if text.startswith("qXfer:features:read:"):
            annex, _, span = text[len("qXfer:features:read:"):].partition(":")
            if annex != "target.xml":
                return "E00"
            offset, length = (int(x, 16) for x in span.split(","))
            xml = gdbtarget.target_xml().encode()
            chunk = xml[offset:offset + length]
            return (b"l" if offset + length >= len(xml) else b"m") + escape_binary(chunk)  # type: ignore[return-value]
        if text == "qAttached":
            return "1"
        if text == "qC":
            return f"QC{self.thread_g + 1:x}"
        if text == "qfThreadInfo":
            return "m" + ",".join(f"{i + 1:x}" for i in self.debugger.vcpu_indexes())
        if text == "qsThreadInfo":
            return "l"
        if text.startswith("qThreadExtraInfo,"):
            index = _thread_index(text.split(",", 1)[1], self.debugger.vcpu_indexes())
            return f"vCPU {index}".encode().hex() if index is not None else "E01"
        if text.startswith("qSymbol"):
            return "OK"
        if text.startswith("qRcmd,"):
            return self._monitor(bytes.fromhex(text[6:]).decode(errors="replace").strip())
        if text == "qqemu.PhyMemMode":
            return "1" if self.debugger.phys_mode else "0"
        return ""

    def _set(self, text: str) -> str:
        if text == "QStartNoAckMode":
            self._send("OK")
            self.ack = False
            return None  # type: ignore[return-value]
        if text.startswith("Qqemu.PhyMemMode:"):
            self.debugger.phys_mode = text.endswith("1")
            return "OK"
        return ""

    def _monitor(self, command: str) -> str:
        words = command.split()
        if words[:1] == ["phys"] and len(words) == 2 and words[1] in ("on", "off"):
            self.debugger.phys_mode = words[1] == "on"
            out = f"memory accesses are guest-{'physical' if self.debugger.phys_mode else 'virtual'}\n"
        elif words[:1] == ["info"]:
            d = self.debugger
            out = (f"vCPUs: {len(d.vcpu_indexes())}; memory: guest-{'physical' if d.phys_mode else 'virtual'}; "
                   f"data breakpoints: {'debug registers' if d.data_breakpoints else 'single-step emulation (this host reports none)'}; "
                   f"execute breakpoints: {'debug registers' if d.exec_breakpoints else 'software (this host reports none)'}; "
                   f"software breakpoints as: {'INT3' if d.patch == INT3 else 'in al, TRAP_PORT (INT3 never exits here)'}; "
                   f"software breakpoints: {len(d.software)}; hardware slots used: "
                   f"{sum(s is not None for s in d.hardware)}/4; stepped watchpoints: {len(d.stepped)}\n")
        else:
            out = "monitor commands: info | phys on | phys off\n"
        self._send("O" + out.encode().hex())
        return "OK"

    def _v_packet(self, text: str) -> str | None:
        if text == "vCont?":
            return "vCont;c;C;s;S;t"
        if text.startswith("vCont;"):
            return self._vcont(text[len("vCont;"):])
        if text == "vMustReplyEmpty":
            return ""
        return ""

    def _vcont(self, spec: str) -> str | None:
        indexes = self.debugger.vcpu_indexes()
        actions: dict[int, str] = {}
        default = STAY
        for part in spec.split(";"):
            action, _, tid = part.partition(":")
            kind = {"c": CONTINUE, "C": CONTINUE, "s": STEP, "S": STEP, "t": STAY}.get(action[:1])
            if kind is None:
                return "E01"
            if not tid:
                default = kind if default == STAY else default
                continue
            index = _thread_index(tid, indexes)
            if index is None:
                if tid == "-1":
                    default = kind
                continue
            actions.setdefault(index, kind)
        step = next((i for i, a in actions.items() if a == STEP), None)
        if step is not None:
            self.thread_c = step
        return self._resume(actions, default)


def stop_reply(event: StopEvent) -> str:
    reason = {"swbreak": "swbreak:;", "hwbreak": "hwbreak:;"}.get(event.why, "")
    if event.why == "watch" and event.addr is not None:
        reason = f"watch:{event.addr:x};"
    return f"T{event.signal:02x}thread:{event.vcpu + 1:x};{reason}"


def _thread_index(tid: str, indexes: list[int]) -> int | None:
    """gdb thread id -> vCPU index; 0 and -1 (any, all) pick the first vCPU."""
    if tid in ("0", "-1", ""):
        return indexes[0] if indexes else None
    try:
        index = int(tid, 16) - 1
    except ValueError:
        return None
    return index if index in indexes else None
