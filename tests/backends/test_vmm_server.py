"""The built-in VMM's fork server: children start from it, behave like exec'd ones (own process
group, exit codes, console), and neither the server nor a guest outlives a killed runner."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_process_session import alive

REPO = Path(__file__).resolve().parents[2]
needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")
# out 0x80, al ; mov al, '!' ; mov dx, 0x3f8 ; out dx, al ; cli ; 1: hlt ; jmp 1b
GUEST = bytes.fromhex("e680" "b021" "baf803" "ee" "fa" "f4" "ebfd")

RUNNER = r'''
import os, sys, time
from pathlib import Path
from harness.backends.registry import get_backend
from harness.model.session import BootRequest
work = Path(sys.argv[1])
(work / "g.bin").write_bytes(bytes.fromhex(sys.argv[2]))
req = BootRequest("c", "g", "fixture", "x86_64", "raw", work / "g.bin", memory_mib=16, workdir=work / "c")
session = get_backend("builtin").start(req)
assert os.read(session.console_fd, 1) == b"!"
from harness.backends import vmm_server
print(type(session.proc).__name__, session.proc.pid, vmm_server._server["proc"].pid, flush=True)
time.sleep(300)
'''


@needs_kvm
def test_children_fork_from_the_server_and_die_with_the_runner(tmp_path: Path):
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path), GUEST.hex()], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    kind, child, server = runner.stdout.readline().split()
    child, server = int(child), int(server)
    assert kind == "ServerChild" and alive(child) and alive(server)
    assert os.getpgid(child) == child                 # its own process group, like an exec'd VMM
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    deadline = time.monotonic() + 5
    while (alive(child) or alive(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(server), "the VMM server outlived a killed runner"
    assert not alive(child), "a forked VMM child outlived a killed runner"


@needs_kvm
def test_forked_child_reports_exit_code_and_summary(tmp_path: Path):
    from harness.backends.registry import get_backend
    from harness.backends.vmm_server import ServerChild
    from harness.model.session import BootRequest
    (tmp_path / "g.bin").write_bytes(GUEST)
    req = BootRequest("c", "g", "fixture", "x86_64", "raw", tmp_path / "g.bin", memory_mib=16, workdir=tmp_path / "c")
    session = get_backend("builtin").start(req)
    assert isinstance(session.proc, ServerChild)
    assert os.read(session.console_fd, 1) == b"!"
    assert session.poll_exit() is None
    summary = session.stop()                          # SIGTERM: the VMM writes its summary and exits 0
    assert summary.exit_code == 0 and summary.exit_counts.get("io", 0) >= 2
    assert summary.command[-3:] == ["-m", "harness.backends.builtin_vm", str(req.workdir / "builtin-spec.json")]
    bad = BootRequest("d", "g", "fixture", "x86_64", "raw", tmp_path / "missing.bin", workdir=tmp_path / "d")
    failed = get_backend("builtin").start(bad)
    assert failed.proc.wait(10) == 2                  # EXIT_SETUP_ERROR, reported through the server
    assert "missing.bin" in failed.stderr_tail()
    assert failed.stop().exit_code == 2
