"""Backends whose VM child runs in the lab: the built-in VMM child, forked by the lab's agent."""
from __future__ import annotations

import contextlib
import shutil
from typing import Any

from harness.assets.lab import lab_params
from harness.backends.base import Backend, BackendSession
from harness.backends.builtin import BuiltinBackend
from harness.backends.builtin_vm import HVC_LOG
from harness.backends.debugopts import DebugOptions
from harness.backends.qemu import QemuBackend
from harness.errors import BackendUnavailable, HarnessError
from harness.hosts.gdbbridge import GdbBridge, RspActivity
from harness.hosts.gdbmux import LAB_STUB_HOST, LAB_STUB_PORT
from harness.hosts.lab import LabError, LabSession, check_qemu
from harness.model import events as ev
from harness.model.session import BootRequest

# What a built-in VMM child leaves in its workdir besides the console and events: the virtio
# console's stream (harness.backends.builtin_vm.HVC_LOG), brought back from the lab (as text).
BUILTIN_COLLECT = (HVC_LOG, HVC_LOG.replace(".log", ".timing.jsonl"))


class LabBuiltinBackend(BuiltinBackend):
    """`builtin` with `host: lab`: the same VMM child, on the lab's real (nested) KVM."""
    host = "lab"

    def check(self, request: BootRequest) -> None:
        self.check_guest(request, lab_params(request.arch).arch)   # a lab runs guests of its own arch
        try:
            check_qemu(lab_params(request.arch))
        except HarnessError as exc:
            raise BackendUnavailable(exc.problem, exc.fix) from None

    def start(self, request: BootRequest) -> LabSession:
        request.workdir.mkdir(parents=True, exist_ok=True)
        request.summary_path.unlink(missing_ok=True)
        return run_in_lab(request, collect=BUILTIN_COLLECT)


def run_in_lab(request: BootRequest, **run: Any) -> LabSession:
    """Start `request` in the warm lab of its arch (Lab.run's keywords in `run`). A --gdb address
    is listened on first, so a port in use fails before any lab starts."""
    from harness.hosts.pool import lab_for
    gdb = GdbBridge.for_request(request.options)
    try:
        lab = lab_for(request.arch)
    except BaseException:
        if gdb is not None:
            gdb.close()
        raise
    try:
        return lab.run(request, gdb=gdb, **run)
    except LabError:
        lab.kill()   # a lab that cannot start a cell is replaced for the retry
        raise


class LabQemuSession(LabSession):
    """QEMU with `-accel kvm` in the lab: the same KVM as the built-in VMM there (the differential)."""

    def hold_for_debugger(self) -> None:
        """QEMU keeps a failed guest itself (-action ...=pause): only wait for its end."""
        BackendSession.hold_for_debugger(self)

    def watch_gdb(self, wait: bool) -> None:
        """QEMU's stub in the lab: announce the bridge's address; its stops and resumes are read
        from the packets (its QMP stays in the lab), as QMP's STOP/RESUME are natively."""
        assert self.gdb is not None
        host, port = self.gdb.address
        kinds = {"stop": ev.DEBUG_STOP, "resume": ev.DEBUG_RESUME}
        self.gdb.activity = RspActivity(lambda what: self.emit_host_event({"stub": "qemu"}, kinds[what]))
        self.emit_host_event({"host": host, "port": port, "stub": "qemu",
                              "lab_stub": f"{LAB_STUB_HOST}:{LAB_STUB_PORT}"}, ev.DEBUG_LISTEN)
        if wait:
            self.emit_host_event({"why": "start", "stub": "qemu"}, ev.DEBUG_STOP)

    def summary_data(self, exited: dict[str, Any]) -> dict[str, Any]:
        from harness.backends.qemu_gaps import parse_log_line
        from harness.gaps.ledger import dedup
        lines = (exited.get("files") or {}).get("qemu.log", "").splitlines()
        gaps = dedup(g for g in map(parse_log_line, lines) if g is not None)   # the one merge rule
        return {"exit_code": exited.get("code"), "host": dict(self.qemu_host),
                "command": list(self.argv), "extra": {"gaps": [g.to_json() for g in gaps]}}


class LabQemuBackend(QemuBackend):
    """`qemu-kvm` with `host: lab`: the lab's own QEMU binary (the host's /usr) on the lab's KVM."""
    host = "lab"

    def __init__(self) -> None:
        super().__init__(accel="kvm")

    def check(self, request: BootRequest) -> None:
        if request.arch != "x86_64":
            raise BackendUnavailable(f"the x86-64 lab cannot run an {request.arch} guest on KVM", "use qemu-tcg")
        try:
            check_qemu(lab_params(request.arch))
        except HarnessError as exc:
            raise BackendUnavailable(exc.problem, exc.fix) from None
        self.build_argv(request)   # option and boot-method errors, before a lab is started

    def drive_source(self, request: BootRequest, overlay: Any) -> str:
        """In the lab the image is on a read-only share and nothing runs qemu-img there: QEMU's own
        temporary overlay (snapshot=on, in the cell's work dir: the agent's TMPDIR) takes the writes.
        9p has no OFD locks, and the share is read-only anyway: no image locking."""
        fmt = (request.options or {}).get("disk_format", "raw")
        return f"file={request.disk},format={fmt},snapshot=on,file.locking=off"

    def start(self, request: BootRequest) -> LabSession:
        from harness.backends.qemu import qemu_version
        request.workdir.mkdir(parents=True, exist_ok=True)
        built: list[list[str]] = []

        def command(lab_request: BootRequest) -> list[str]:
            argv = self.build_argv(lab_request)
            argv[0] = shutil.which(argv[0]) or argv[0]     # the same path in the lab: /usr is shared
            built.append(argv)
            return argv

        session = run_in_lab(request, command=command, collect=("qemu.log",), session_class=LabQemuSession)
        lab = session.lab
        session.argv = built[0]
        session.qemu_host = {"qemu_version": qemu_version(built[0][0]), "accel": "kvm", "binary": built[0][0],
                             "machine": built[0][built[0].index("-M") + 1]}
        with contextlib.suppress(OSError, ValueError):
            session.emit_host_event({"host": {**session.qemu_host, "host": "lab", "lab": lab.describe()},
                                     "command": built[0]})
            if session.gdb is not None:
                session.watch_gdb(DebugOptions.from_options(request.options).wait)
        return session


