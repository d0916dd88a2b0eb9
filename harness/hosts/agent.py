"""The lab agent: PID 1's child inside the lab, `python3 -S -m harness.hosts.agent`.

It is a fork server for the built-in VMM child. It imports `harness.backends.builtin_vm` and
everything that imports lazily once, when the lab boots, then forks one child per cell, so a
cell in a warm lab pays neither Python's start-up nor its imports under TCG. Only standard
library modules and the VMM's own are imported here (no rich, pexpect, yaml or report code).

Four virtio-serial ports connect it to the host (harness.hosts.lab):
  harness.control   JSON lines both ways: ready/beat/pong/started/exited up, ping/run/stop/hold/quit down
  harness.console   the VMM child's stdout (the guest console) up; the guest's UART input down
  harness.events    the child's events.jsonl lines up (the events file is a FIFO the agent drains)
  harness.gdb       debugger connections, framed (harness.hosts.gdbmux): each one the agent
                    relays to the gdb stub the cell's child serves on the lab's loopback
The agent is single-threaded (a fork server must be) and multiplexes with select(). It writes
every byte of a cell to the ports before it reports `exited` with the byte counts, so the host
can cut each port's stream at exactly the cell's end. Times in messages and events are the lab's
CLOCK_MONOTONIC; the host re-bases them (see harness.hosts.lab, ClockSync).
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

from harness.hosts.gdbmux import AgentRelay, loopback_up

PORT_NAMES = ("harness.control", "harness.console", "harness.events", "harness.gdb")
PORTS_DIR = "/sys/class/virtio-ports"
CELLS_DIR = "/run/cells"
BEAT_S = 1.0
STOP_GRACE_S = 5.0
STDERR_TAIL = 8000
COLLECT_MAX = 4 << 20
# The init script's stage log (harness.assets.lab.INIT_STAGES; not imported: ~1 s under TCG).
INIT_STAGES = "/run/init-stages"
# The VMM child's exit-count snapshots: every 100 ms natively; each costs ~50 ms of emulated CPU
# in the lab, so there they come every 500 ms (phase profiles are that much coarser).
LAB_SNAPSHOT_PERIOD_S = 0.5


def find_ports(timeout_s: float = 10.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        for entry in sorted(os.listdir(PORTS_DIR)) if os.path.isdir(PORTS_DIR) else []:
            try:
                with open(f"{PORTS_DIR}/{entry}/name") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name in PORT_NAMES:
                found[name] = f"/dev/{entry}"
        if len(found) == len(PORT_NAMES) and all(os.path.exists(p) for p in found.values()):
            return found
        time.sleep(0.05)
    raise SystemExit(f"harness-lab: error: virtio-serial ports {sorted(set(PORT_NAMES) - set(found))} "
                     "missing (fix: start the lab with harness.hosts.lab)")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]


class Cell:
    """One VMM child and the pipes the agent relays."""

    def __init__(self, cell_id: str, pid: int, out_fd: int, err_fd: int, in_fd: int, events_rd: int,
                 events_wr: int, workdir: str) -> None:
        self.id, self.pid, self.workdir = cell_id, pid, workdir
        self.out_fd, self.err_fd, self.in_fd = out_fd, err_fd, in_fd
        self.events_rd, self.events_wr = events_rd, events_wr
        self.pidfd = os.pidfd_open(pid)
        self.console_bytes = 0
        self.events_bytes = 0
        self.stderr = bytearray()
        self.stop_deadline: float | None = None
        self.code: int | None = None
        self.collect: list[str] = []


class Agent:
    def __init__(self, ports: dict[str, str]) -> None:
        self.ctl = os.open(ports["harness.control"], os.O_RDWR)
        self.con = os.open(ports["harness.console"], os.O_RDWR)
        self.evt = os.open(ports["harness.events"], os.O_RDWR)
        self.gdb = AgentRelay(os.open(ports["harness.gdb"], os.O_RDWR), write_all)
        self.ctl_buf = b""
        self.cell: Cell | None = None
        self.running = True
        self.last_beat = 0.0
        self.shell: tuple[int, int] | None = None   # (pid, pidfd) of `harness lab shell`'s sh
        self.quirks: list[str] = []   # of this lab's KVM (harness.hosts.quirks), given to every VMM child

    def send(self, msg: dict) -> None:
        write_all(self.ctl, (json.dumps(msg, separators=(",", ":")) + "\n").encode())

    # -- the loop ---------------------------------------------------------------------------
    def serve(self) -> None:
        while self.running:
            fds = [self.ctl] if self.shell else [self.ctl, self.con]   # the shell reads the console itself
            if self.shell:
                fds.append(self.shell[1])
            fds += self.gdb.fds()
            c = self.cell
            if c is not None:
                fds += [c.out_fd, c.err_fd, c.events_rd, c.pidfd]
            try:
                readable, _, _ = select.select(fds, [], [], BEAT_S / 2)
            except InterruptedError:
                continue
            now = time.monotonic()
            if now - self.last_beat >= BEAT_S:
                self.send({"type": "beat", "t": now})
                self.last_beat = now
            if self.ctl in readable:
                self._control()
            if self.con in readable:
                self._input()
            if self.shell and self.shell[1] in readable:
                self._shell_exited()
            self.gdb.readable(readable)
            c = self.cell
            if c is None:
                continue
            if c.out_fd in readable:
                self._relay_console(c)
            if c.events_rd in readable:
                self._relay_events(c)
            if c.err_fd in readable:
                self._read_stderr(c)
            if c.pidfd in readable:
                self._finish(c)
            elif c.stop_deadline is not None and now > c.stop_deadline:
                _kill_group(c.pid, signal.SIGKILL)

    def _control(self) -> None:
        data = _read(self.ctl)
        if not data:
            time.sleep(0.05)  # the host is not connected (a virtio port reads EOF then)
            return
        self.ctl_buf += data
        *lines, self.ctl_buf = self.ctl_buf.split(b"\n")
        for line in lines:
            if line.strip():
                self._handle(json.loads(line))

    def _handle(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "ping":
            self.send({"type": "pong", "id": msg.get("id"), "t": time.monotonic()})
        elif kind == "run":
            if self.cell is not None:
                self.send({"type": "error", "id": msg.get("id"), "message": "a cell is already running"})
                return
            self._start(str(msg["id"]), msg.get("spec"), msg.get("argv"), msg.get("collect") or [])
        elif kind == "stop":
            c = self.cell
            if c is not None and c.id == str(msg.get("id")) and c.stop_deadline is None:
                _kill_group(c.pid, signal.SIGTERM)
                c.stop_deadline = time.monotonic() + STOP_GRACE_S
        elif kind == "hold":   # --gdb-on-failure: the runner saw a failure; the child stops for the debugger
            c = self.cell
            if c is not None and c.id == str(msg.get("id")) and c.stop_deadline is None:
                from harness.backends.builtin_gdb import HOLD_SIGNAL
                try:
                    os.kill(c.pid, HOLD_SIGNAL)
                except ProcessLookupError:
                    pass   # it ended meanwhile: its `exited` is on its way
        elif kind == "shell" and self.cell is None and self.shell is None:
            self._start_shell()
        elif kind == "quit":
            self.running = False

    def _input(self) -> None:
        data = _read(self.con)
        if not data:
            time.sleep(0.05)
            return
        c = self.cell
        if c is not None:   # input between cells belongs to no guest
            try:
                os.write(c.in_fd, data)
            except OSError:
                pass

    # -- a person's shell (harness lab shell) ------------------------------------------------
    def _start_shell(self) -> None:
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                for fd in (0, 1, 2):
                    os.dup2(self.con, fd)
                os.closerange(3, 1024)
                os.execv("/bb/sh", ["sh", "-i"])
            finally:
                os._exit(127)
        self.shell = (pid, os.pidfd_open(pid))
        self.send({"type": "shell-started", "pid": pid})

    def _shell_exited(self) -> None:
        pid, pidfd = self.shell  # type: ignore[misc]
        os.waitpid(pid, 0)
        os.close(pidfd)
        self.shell = None
        self.send({"type": "shell-exited"})

    # -- one cell -------------------------------------------------------------------------------
    def _start(self, cell_id: str, spec: dict | None, argv: list[str] | None, collect: list[str]) -> None:
        """Fork the VMM child for `spec`, or exec `argv` (qemu-kvm in the lab) in the same harness."""
        workdir = f"{CELLS_DIR}/{cell_id}"
        os.makedirs(workdir, exist_ok=True)
        spec_path = f"{workdir}/builtin-spec.json"
        if spec is not None:
            with open(spec_path, "w") as f:
                json.dump({**spec, "workdir": workdir, "host_quirks": self.quirks}, f)
        events = f"{workdir}/events.jsonl"
        os.mkfifo(events)
        events_rd = os.open(events, os.O_RDONLY | os.O_NONBLOCK)
        events_wr = os.open(events, os.O_WRONLY)   # held until the child is gone: no EOF before it opens
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            _child(spec_path if argv is None else argv, workdir, in_r, out_w, err_w)
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        os.set_blocking(in_w, False)
        self.cell = Cell(cell_id, pid, out_r, err_r, in_w, events_rd, events_wr, workdir)
        self.cell.collect = [name for name in collect if "/" not in name]
        self.send({"type": "started", "id": cell_id, "pid": pid, "t": time.monotonic()})

    def _relay_console(self, c: Cell) -> bool:
        data = _read(c.out_fd)
        if data:
            write_all(self.con, data)
            c.console_bytes += len(data)
        return bool(data)

    def _relay_events(self, c: Cell) -> bool:
        data = _read(c.events_rd)
        if data:
            write_all(self.evt, data)
            c.events_bytes += len(data)
        return bool(data)

    def _read_stderr(self, c: Cell) -> bool:
        data = _read(c.err_fd)
        if data:
            c.stderr.extend(data)
            del c.stderr[:-STDERR_TAIL]
        return bool(data)

    def _finish(self, c: Cell) -> None:
        _, status = os.waitpid(c.pid, 0)
        c.code = os.waitstatus_to_exitcode(status)
        os.close(c.events_wr)
        os.set_blocking(c.events_rd, True)
        while self._relay_console(c):   # the child is gone: each read ends at EOF
            pass
        while self._relay_events(c):
            pass
        while self._read_stderr(c):
            pass
        summary = None
        try:
            with open(f"{c.workdir}/summary.json") as f:
                summary = json.load(f)
        except (OSError, ValueError):
            pass
        files = {}
        for name in c.collect:   # e.g. qemu.log of a qemu-kvm cell, parsed into gaps on the host
            try:
                with open(f"{c.workdir}/{name}", "rb") as f:
                    files[name] = f.read(COLLECT_MAX).decode(errors="replace")
            except OSError:
                pass
        for fd in (c.out_fd, c.err_fd, c.in_fd, c.events_rd, c.pidfd):
            os.close(fd)
        _remove_tree(c.workdir)
        self.gdb.close_all("the cell ended")
        self.cell = None
        self.send({"type": "exited", "id": c.id, "code": c.code, "console_bytes": c.console_bytes,
                   "events_bytes": c.events_bytes, "summary": summary, "files": files, "t": time.monotonic(),
                   "stderr": c.stderr.decode(errors="replace")})


def _child(what: str | list[str], workdir: str, in_r: int, out_w: int, err_w: int) -> None:
    """In the forked child: become the VMM child `python -m harness.backends.builtin_vm SPEC`, or
    exec `what` when it is an argv."""
    code = 3
    try:
        os.setpgid(0, 0)
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.closerange(3, 1024)
        os.chdir(workdir)
        os.environ["TMPDIR"] = workdir   # temporary files (QEMU's snapshot=on overlay) go with the cell
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if isinstance(what, list):
            os.execv(what[0], what)
        spec_path = what
        from harness.backends import builtin_vm
        sys.argv = ["harness.backends.builtin_vm", spec_path]
        code = builtin_vm.main([spec_path])
    except BaseException as exc:  # noqa: BLE001 - the child must never return into the agent's loop
        try:
            os.write(2, f"lab agent child: {type(exc).__name__}: {exc}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError:
        return b""


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _remove_tree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


def lab_facts(import_s: float, quirks: list[str], quirk_probe: str) -> dict:
    from harness.kvm.system import host_info
    info = host_info()
    return {"kvm": info, "quirks": quirks, "quirk_probe": quirk_probe, "kernel_release": os.uname().release, "uptime_s": _uptime("/proc/uptime"),
            "kvm_ready_uptime_s": _uptime("/run/kvm-ready"), "init_stages": _init_stages(), "import_s": round(import_s, 3),
            "python": sys.version.split()[0], "nested_paging": _nested_paging()}


def _uptime(path: str) -> float | None:
    try:
        with open(path) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _init_stages() -> list[list]:
    """[uptime, stage] per step of the lab's init (harness.assets.lab: init, each module, shares)."""
    stages = []
    try:
        with open(INIT_STAGES) as f:
            for line in f:
                up, _, name = line.strip().partition(" ")
                stages.append([float(up), name])
    except (OSError, ValueError):
        pass
    return stages


def _nested_paging() -> str | None:
    for path in ("/sys/module/kvm_amd/parameters/npt", "/sys/module/kvm_intel/parameters/ept"):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            continue
    return None


def warm_up() -> None:
    """Everything a forked child would otherwise do first (harness.backends.vmm_warm: imports and
    cffi's type cache, which a fork inherits), and the lab's snapshot period."""
    from harness.backends import builtin_vm
    from harness.backends.vmm_warm import warm
    warm()
    builtin_vm.SNAPSHOT_PERIOD_S = LAB_SNAPSHOT_PERIOD_S


def host_quirks() -> tuple[list[str], str]:
    """This lab's KVM quirks and how the probe went ("ok", or why it found nothing). A probe that
    cannot run is no reason to refuse the lab; its reason is a lab fact (result.host.lab.quirk_probe)."""
    if os.uname().machine != "x86_64":
        return [], "not probed: the probes are x86 guests"
    from harness.hosts.quirks import probe_host_quirks
    try:
        return probe_host_quirks(), "ok"
    except Exception as exc:  # noqa: BLE001 - reported, and the lab stays usable
        print(f"lab agent: host quirk probe failed: {exc}", file=sys.stderr)
        return [], f"failed: {type(exc).__name__}: {exc}"


def main() -> int:
    ports = find_ports()
    t0 = time.monotonic()
    warm_up()
    import_s = time.monotonic() - t0
    agent = Agent(ports)
    agent.quirks, quirk_probe = host_quirks()
    facts = lab_facts(import_s, agent.quirks, quirk_probe)
    facts["loopback_error"] = loopback_up()    # gdb stubs in the lab listen on its 127.0.0.1
    agent.send({"type": "ready", "t": time.monotonic(), "facts": facts})
    agent.last_beat = time.monotonic()
    agent.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
