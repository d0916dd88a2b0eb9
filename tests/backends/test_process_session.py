"""Backend child processes never outlive the runner, even when it is killed with SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RUNNER = r'''
import sys, time
from pathlib import Path
from harness.backends.base import ProcessSession
from harness.model.session import BootRequest, SessionSummary

class Session(ProcessSession):
    def stop(self):
        return SessionSummary(exit_code=self.terminate())

request = BootRequest("c", "g", "other", "x86_64", "raw", None, workdir=Path(sys.argv[1]))
session = Session(request, ["sleep", "300"])
print(session.proc.pid, flush=True)
time.sleep(300)
'''


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie awaiting its reaper counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_vm_child_dies_when_the_runner_is_killed(tmp_path: Path):
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(runner.stdout.readline())
    assert alive(child)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the backend child outlived a killed runner"


def test_stop_kills_the_whole_process_group(tmp_path: Path):
    from harness.backends.base import ProcessSession
    from harness.model.session import BootRequest, SessionSummary
    from harness.backends.base import ProcessSession
    from harness.model.session import BootRequest, SessionSummary

    class Session(ProcessSession):
        def stop(self) -> SessionSummary:
            return SessionSummary(exit_code=self.terminate(grace_s=1))

    request = BootRequest("c", "g", "other", "x86_64", "raw", None, workdir=tmp_path)
    # a shell that ignores SIGTERM and has a grandchild: both must be gone after stop()
    session = Session(request, ["bash", "-c", "trap '' TERM; sleep 300 & echo $!; wait"])
    grandchild = int(os.read(session.console_fd, 100).split()[0])
    summary = session.stop()
    assert summary.exit_code == -signal.SIGKILL
    time.sleep(0.2)
    assert not alive(grandchild)
