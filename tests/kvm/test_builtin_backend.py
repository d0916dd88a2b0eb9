"""The builtin backend end to end: child process, console on stdout, events file, summary."""
from __future__ import annotations

import json
import os
import select
import time
from pathlib import Path

import pytest

from kvm_guests import needs_as, needs_kvm
from kvm_guests import assemble
from harness.backends.builtin import BuiltinBackend, read_summary
from harness.backends.builtin_vm import request_from_json, request_to_json
from harness.backends.registry import get_backend
from harness.errors import BackendUnavailable
from harness.model import events as ev
from harness.model.session import BootRequest

HELLO = """
    mov ax, cs
    mov ds, ax
    mov si, offset msg
    mov dx, 0x3f8
1:  lodsb
    test al, al
    jz 2f
    out dx, al
    jmp 1b
2:  mov dx, 0x2f0
    in al, dx
    mov dx, 0x3fd          # wait for a byte from the host on COM1 RX
3:  in al, dx
    test al, 1
    jz 3b
    mov dx, 0x3f8
    in al, dx
    inc al
    out dx, al             # echo it back, plus one
4:  jmp 4b
msg: .asciz "hello from the builtin VMM\\n"
"""


def _request(tmp_path: Path, name: str, code: bytes | None = None, **kw) -> BootRequest:
    kernel = tmp_path / f"{name}.bin"
    if code is not None:
        kernel.write_bytes(code)
    fields = dict(cell_id=name, guest="tiny", family="fixture", arch="x86_64", boot="raw", kernel=kernel,
                  memory_mib=16, workdir=tmp_path / name)
    fields.update(kw)
    return BootRequest(**fields)


def _read_until(fd: int, needle: bytes, timeout: float = 15.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            out += chunk
    return out


def test_request_json_round_trip(tmp_path):
    req = _request(tmp_path, "rt", initrd=tmp_path / "i", cmdline="console=ttyS0", options={"rescue": False})
    back = request_from_json(request_to_json(req))
    assert back == req


def test_check_refuses_what_it_cannot_run(tmp_path):
    be = BuiltinBackend()
    with pytest.raises(BackendUnavailable) as exc:
        be.check(_request(tmp_path, "arm", arch="aarch64"))
    assert "qemu-tcg" in exc.value.fix
    req = _request(tmp_path, "fw")
    req.boot = "firmware"
    with pytest.raises(BackendUnavailable) as exc:
        be.check(req)
    assert "raw" in exc.value.fix
    with pytest.raises(BackendUnavailable) as exc:
        BuiltinBackend(kvm_path=str(tmp_path / "nokvm")).check(_request(tmp_path, "nokvm"))
    assert "load kvm" in exc.value.fix


def test_missing_summary_is_reported(tmp_path):
    s = read_summary(tmp_path / "summary.json", -15)
    assert s.exit_code == -15 and s.extra["summary_missing"]


@needs_kvm
@needs_as
def test_child_end_to_end_console_stdin_events_summary(tmp_path):
    req = _request(tmp_path, "hello", assemble(HELLO))
    backend = get_backend("builtin")
    backend.check(req)
    session = backend.start(req)
    try:
        out = _read_until(session.console_fd, b"VMM\n")
        assert out == b"hello from the builtin VMM\n"
        session.send(b"A")
        assert _read_until(session.console_fd, b"B") == b"B"
        time.sleep(0.25)                  # at least two exit-count snapshots
    finally:
        summary = session.stop()
    assert summary.exit_code == 0
    assert summary.host["kvm_module"]
    assert summary.exit_counts["io"] >= 3
    assert any(g["kind"] == "io-port" and g["key"] == "0x2f0" for g in summary.extra["gaps"])
    assert summary.extra["stop"]["reason"] == "stopped"
    assert summary.flight_recorder and summary.command[1:3] == ["-m", "harness.backends.builtin_vm"]
    events = ev.EventReader(req.events_path).poll()
    types = [e.type for e in events]
    assert types[0] == ev.VM_START and types[-1] == ev.VM_EXIT
    assert events[0].data["host"]["usable"] and events[0].data["boot"]["method"] == "raw"
    assert ev.GAP in types and types.count(ev.EXIT_COUNTS) >= 2
    snap = next(e for e in events if e.type == ev.EXIT_COUNTS)
    assert "counts" in snap.data and snap.data["user_time_s"] >= 0
    gap_events = [e for e in events if e.type == ev.GAP and e.data["key"] == "0x2f0"]
    assert len(gap_events) == 1


@needs_kvm
@needs_as
def test_two_child_processes_at_once(tmp_path):
    backend = get_backend("builtin")
    sessions = [backend.start(_request(tmp_path, f"vm{i}", assemble(HELLO))) for i in range(2)]
    try:
        outs = [_read_until(s.console_fd, b"VMM\n") for s in sessions]
    finally:
        summaries = [s.stop() for s in sessions]
    assert outs == [b"hello from the builtin VMM\n"] * 2
    assert all(s.exit_code == 0 and s.exit_counts for s in summaries)


@needs_kvm
@needs_as
def test_guest_failure_ends_child_with_structured_stop(tmp_path):
    code = assemble("mov dx, 0x3f8\nmov al, 0x21\nout dx, al\nlidt [idt]\nud2\nidt: .word 0\n.long 0", 32)
    req = _request(tmp_path, "tf", code, options={"raw_mode": "protected32"})
    session = get_backend("builtin").start(req)
    deadline = time.monotonic() + 15
    while session.poll_exit() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    out = _read_until(session.console_fd, b"!", 1)
    summary = session.stop()
    assert out == b"!"
    assert summary.exit_code == 0 and summary.extra["stop"]["reason"] == "triple-fault"
    types = [e.type for e in ev.EventReader(req.events_path).poll()]
    assert ev.TRIPLE_FAULT in types and types[-1] == ev.VM_EXIT


def test_bad_kernel_is_one_line_and_exit_2(tmp_path):
    req = _request(tmp_path, "bad")       # kernel file never written
    session = BuiltinBackend().start(req)
    deadline = time.monotonic() + 15
    while session.poll_exit() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    summary = session.stop()
    assert summary.exit_code == 2
    lines = [ln for ln in summary.stderr_tail.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in summary.stderr_tail
    events = ev.EventReader(req.events_path).poll()
    assert [e.type for e in events] == [ev.BACKEND_ERROR]
    assert json.loads(req.summary_path.read_text())["extra"]["error"] == lines[0]
