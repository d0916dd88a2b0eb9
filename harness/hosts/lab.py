"""The lab: a Linux VM under QEMU TCG with emulated SVM, in which a real KVM runs our VMM child.

Only the VMM child runs in the lab (forked by harness.hosts.agent); the runner, the console
watcher, the gap ledger and the reports stay on the host. What the lab sees of this machine is
four read-only 9p shares and nothing else (docs/hosts.md says why):
  /usr          the host's /usr: python3, its standard library, shared libraries (merged /usr)
  /lab/src      the `harness` package directory only (no repository, no .git, no reports)
  /lab/site     the site-packages directory holding cffi, capstone and pyelftools
  /lab/in       a per-lab inbox: each cell's kernel and initrd, copied in by the host, removed after
No home directory, no /etc, no credentials; the lab's own / is its initramfs and a tmpfs.

Four virtio-serial ports carry a cell (see the agent's docstring); the fourth, harness.gdb,
carries debugger connections to the VMM's stub in the lab (harness.hosts.gdbbridge). The host cuts each port's
stream at the byte counts the agent reports at the cell's end, so no byte is lost or given to
the wrong cell, and within a port the order is the order the child wrote. Times: before each
cell the host pings the agent three times and keeps the sample with the smallest round trip;
offset = (host send + host receive) / 2 - lab time, so a lab time t becomes t + offset on the
host's CLOCK_MONOTONIC, with an error of at most rtt/2 (recorded as `clock_rtt_s`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.assets.lab import LAB_ERROR_PREFIX, LabParams, generator_sha256, lab_params
from harness.backends.base import BackendSession, _die_with_parent
from harness.errors import HarnessError
from harness.model import events as ev
from harness.model.session import BootRequest, SessionSummary
from harness.backends.debugopts import OPTION_KEY as DEBUG_OPTION_KEY
from harness.hosts.gdbbridge import GdbBridge
from harness.hosts.gdbmux import LAB_STUB_HOST, LAB_STUB_PORT, FrameError, FrameReader

READY_TIMEOUT_S = 120.0       # lab boot under TCG on a loaded 2-core machine; measured ~5-10 s idle
WEDGE_S = 30.0                # no word from the agent for this long: the lab is wedged
STOP_TIMEOUT_S = 15.0         # after `stop`, the agent must report `exited` within this
PING_SAMPLES = 3
PORTS = ("control", "console", "events", "gdb")
LAB_CELLS_DIR = "/run/cells"    # the agent's CELLS_DIR


class LabError(HarnessError):
    """The lab could not be started or died: infrastructure, so the cell ends `error` (retried)."""


@dataclass(frozen=True)
class Share:
    tag: str
    host_path: Path
    mount: str
    cache: str = "loose"      # loose: files that do not change while the lab runs; none: the inbox


@dataclass
class ClockSync:
    offset_s: float = 0.0     # host_time = lab_time + offset_s
    rtt_s: float = float("inf")

    def to_host(self, lab_t: float) -> float:
        return lab_t + self.offset_s


def python_site_dir() -> Path:
    """The site-packages directory holding the VMM child's third-party modules."""
    import importlib.util

    def package_dir(module: str) -> Path:   # found, not imported: the runner never loads cffi/capstone
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise LabError(f"{module} is not installed", "install the harness into a virtualenv (bash scripts/setup.sh)")
        return Path(spec.origin).resolve().parent.parent

    site = package_dir("cffi")
    for module in ("capstone", "elftools"):
        if package_dir(module) != site:
            raise LabError(f"{module} is not installed beside cffi in {site}",
                           "install the harness into one virtualenv (bash scripts/setup.sh)")
    return site


LAB_PYTHON = "/usr/bin/python3"


def check_lab_python() -> None:
    """The lab runs the system's Python from the /usr share with our site-packages, so their
    minor versions must agree (the .pyc files and cffi's extension are per minor version)."""
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        out = subprocess.run([LAB_PYTHON, "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    if not out:
        raise LabError(f"{LAB_PYTHON} is missing: the lab runs the system Python from the shared /usr",
                       "apt-get install python3")
    if out != mine:
        raise LabError(f"the lab's {LAB_PYTHON} is Python {out}, the harness's packages are for {mine}",
                       f"make .venv from {LAB_PYTHON}: rm -rf .venv && PATH=/usr/bin:$PATH bash scripts/setup.sh")


def lab_shares(inbox: Path, params: LabParams | None = None) -> list[Share]:
    harness_pkg = Path(__file__).resolve().parents[1]
    if params is not None and params.userland_asset:
        # A lab of another architecture: its /usr and site-packages are the unpacked userland asset.
        from harness.assets.recipes import build_asset
        from harness.assets.userland import DIST_PACKAGES, unpack_userland
        tree = unpack_userland(build_asset(params.userland_asset))
        usr, site = tree / "usr", tree / DIST_PACKAGES
    else:
        check_lab_python()
        usr, site = Path("/usr"), python_site_dir()
    return [Share("usr", usr, "/usr"),
            Share("src", harness_pkg, "/lab/src/harness"),
            Share("site", site, "/lab/site"),
            Share("in", inbox, "/lab/in", cache="none")]


# Under TCG every emulated instruction counts: no speculation mitigations (the lab's CPU is an
# emulator, and the lab runs one VMM child at a time), no TSC watchdog or self-tests.
LAB_KERNEL_SPEEDUPS = ("mitigations=off", "tsc=reliable", "no_timer_check", "cryptomgr.notests",
                       "random.trust_cpu=on")


def qemu_argv(params: LabParams, kernel: Path, initrd: Path, shares: list[Share], labdir: Path) -> list[str]:
    """The lab's QEMU command line (pure)."""
    cmdline = " ".join([
        f"console={params.console_tty}", "panic=-1", "loglevel=4", "rdinit=/init", *LAB_KERNEL_SPEEDUPS,
        "harness.shares=" + ",".join(f"{s.tag}:{s.mount}:{s.cache}" for s in shares),
        "harness.pythonpath=/lab/src:/lab/site"])
    argv = [params.qemu_binary, "-M", params.machine, "-accel", params.accel, "-cpu", params.cpu,
            "-smp", str(params.smp), "-m", str(params.memory_mib), "-nodefaults", "-nographic",
            "-no-reboot", "-monitor", "none", "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            "-chardev", f"file,id=labcon,path={labdir / 'lab-console.log'}", "-serial", "chardev:labcon",
            "-device", "virtio-serial-pci,id=vser"]
    for name in PORTS:
        argv += ["-chardev", f"socket,id={name},path={labdir / (name + '.sock')},server=on,wait=off",
                 "-device", f"virtserialport,bus=vser.0,chardev={name},name=harness.{name}"]
    for s in shares:
        argv += ["-fsdev", f"local,id=fs{s.tag},path={s.host_path},security_model=none,readonly=on,"
                           "multidevs=remap",
                 "-device", f"virtio-9p-pci,fsdev=fs{s.tag},mount_tag={s.tag}"]
    return argv


def check_qemu(params: LabParams) -> str:
    path = shutil.which(params.qemu_binary)
    if path is None:
        raise LabError(f"{params.qemu_binary} is not installed (the lab runs in it)",
                       f"apt-get install {params.qemu_package}")
    return path


class _CellStream:
    """One port's bytes of the current cell: everything received until the agent's count is reached."""

    def __init__(self) -> None:
        self.received = 0
        self.expected: int | None = None
        self.done = threading.Event()

    def arrived(self, n: int) -> None:
        self.received += n
        self._check()

    def expect(self, n: int) -> None:
        self.expected = n
        self._check()

    def _check(self) -> None:
        if self.expected is not None and self.received >= self.expected:
            self.done.set()


class Lab:
    """One running lab VM. Not thread-safe for callers: one cell at a time (a warm lab per worker)."""

    def __init__(self, params: LabParams) -> None:
        self.params = params
        self.labdir = Path(tempfile.mkdtemp(prefix="hl-"))   # unix socket paths stay short
        self.inbox = self.labdir / "in"
        self.inbox.mkdir()
        self.proc: subprocess.Popen | None = None
        self.socks: dict[str, socket.socket] = {}
        self.control: queue.Queue[dict[str, Any]] = queue.Queue()
        self.facts: dict[str, Any] = {}
        self.cold_start_s: float | None = None
        self.last_word = time.monotonic()
        self.dead: str | None = None
        self.session: LabSession | None = None
        self.on_console: Callable[[bytes], Any] | None = None
        self.cells_served = 0
        self._lock = threading.Lock()
        self._seq = 0
        self._threads: list[threading.Thread] = []
        self._gdb_conns = itertools.count(1)      # never reused in a lab: a late frame reaches nobody
        self._gdb_reader = FrameReader()
        self._gdb_lock = threading.Lock()

    # -- start ----------------------------------------------------------------------------
    def start(self, timeout_s: float = READY_TIMEOUT_S) -> "Lab":
        from harness.assets.recipes import build_asset
        check_qemu(self.params)
        kernel = build_asset(self.params.kernel_asset)          # provenance: package, release
        boot_kernel = build_asset(self.params.boot_kernel_asset)
        initrd = build_asset(self.params.initramfs_asset)
        if initrd.provenance.get("generator_sha256") != generator_sha256():   # the init script changed
            initrd = build_asset(self.params.initramfs_asset, rebuild=True)
        shares = lab_shares(self.inbox, self.params)
        for share in shares:
            if not share.host_path.is_dir():
                raise LabError(f"the lab's {share.tag!r} share {share.host_path} is missing",
                               "reinstall the harness (bash scripts/setup.sh): the lab mounts it read-only")
        _compile_harness(Path(__file__).resolve().parents[1])
        argv = qemu_argv(self.params, boot_kernel.path, initrd.path, shares, self.labdir)
        self.kernel_release = kernel.provenance.get("kernel_release")
        self.argv = argv
        t0 = time.monotonic()
        self._qemu_stderr = open(self.labdir / "qemu.stderr.log", "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._qemu_stderr,
                                     stderr=self._qemu_stderr, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._connect(t0 + 10.0)
            for name, target in (("control", self._read_control), ("console", self._read_console),
                                 ("events", self._read_events), ("gdb", self._read_gdb)):
                t = threading.Thread(target=target, name=f"lab-{name}", daemon=True)
                t.start()
                self._threads.append(t)
            ready = self._wait_for("ready", t0 + timeout_s)
        except BaseException:
            self.close()
            raise
        self.cold_start_s = ready["_host_t"] - t0
        facts = ready.get("facts", {})
        self.kvm_ready_s = _kvm_ready_s(self.cold_start_s, facts)
        self.facts = {**facts, "cold_start_s": round(self.cold_start_s, 3), "kvm_ready_s": self.kvm_ready_s,
                      "qemu": argv[0], "machine": self.params.machine, "cpu": self.params.cpu,
                      "accel": self.params.accel}
        threading.Thread(target=self._monitor, name="lab-monitor", daemon=True).start()
        return self

    def _connect(self, deadline: float) -> None:
        for name in PORTS:
            path = self.labdir / f"{name}.sock"
            while True:
                self._check_alive()
                try:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(str(path))
                    self.socks[name] = s
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    s.close()
                    if time.monotonic() > deadline:
                        raise LabError(f"the lab's QEMU opened no {name} socket in 10 s",
                                       f"see {self.labdir / 'qemu.stderr.log'}") from None
                    time.sleep(0.02)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise LabError(f"the lab's QEMU exited ({self.proc.returncode}): {self._why_dead()}",
                           self._fix_for_dead())

    def _why_dead(self) -> str:
        line = self.lab_error_line()
        if line:
            return line[len(LAB_ERROR_PREFIX):]
        tail = _tail(self.labdir / "qemu.stderr.log") or _tail(self.labdir / "lab-console.log")
        return tail or "no output"

    def _fix_for_dead(self) -> str:
        return "see the lab console: " + str(self.labdir / "lab-console.log")

    def lab_error_line(self) -> str | None:
        try:
            text = (self.labdir / "lab-console.log").read_text(errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            if LAB_ERROR_PREFIX in line:
                return line[line.index(LAB_ERROR_PREFIX):].strip()
        return None

    def _wait_for(self, kind: str, deadline: float, cell_id: str | None = None) -> dict[str, Any]:
        while True:
            line = self.lab_error_line()
            if line:
                problem, _, fix = line[len(LAB_ERROR_PREFIX):].rpartition(" (fix: ")
                raise LabError(f"lab: {problem}", fix.rstrip(")"))
            self._check_alive()
            try:
                msg = self.control.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise LabError(f"the lab sent no {kind!r} in time (console: {self.labdir / 'lab-console.log'})",
                                   "the machine may be overloaded: rerun, or raise HARNESS_TIMEOUT_SCALE") from None
                continue
            if msg.get("type") == kind and (cell_id is None or str(msg.get("id")) == cell_id):
                return msg
            if msg.get("type") == "error":
                raise LabError(f"lab agent: {msg.get('message')}", "see the lab console log")

    # -- the port readers ---------------------------------------------------------------------
    def _read_control(self) -> None:
        buf = b""
        for chunk in _chunks(self.socks["control"]):
            self.last_word = time.monotonic()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                msg["_host_t"] = self.last_word
                if msg.get("type") == "beat":
                    continue
                session = self.session
                if msg.get("type") == "exited" and session is not None and session.lab_id == str(msg.get("id")):
                    session.on_exited(msg)
                self.control.put(msg)
        self._died("the lab closed its control port")

    def _read_console(self) -> None:
        for chunk in _chunks(self.socks["console"]):
            session = self.session
            if session is not None:
                session.on_console(chunk)
            elif self.on_console is not None:   # no cell: a person's shell (harness lab shell)
                self.on_console(chunk)
        self._died("the lab closed its console port")

    def _read_events(self) -> None:
        for chunk in _chunks(self.socks["events"]):
            session = self.session
            if session is not None:
                session.on_events(chunk)
        self._died("the lab closed its events port")

    def _read_gdb(self) -> None:
        for chunk in _chunks(self.socks["gdb"]):
            bridge = self.session.gdb if self.session is not None else None
            try:
                frames = self._gdb_reader.feed(chunk)
            except FrameError:
                if bridge is not None:
                    bridge.drop_all()
                continue
            for frame in frames:
                if bridge is not None:
                    bridge.on_frame(frame)
        self._died("the lab closed its gdb port")

    def _monitor(self) -> None:
        while self.dead is None:
            time.sleep(0.5)
            if self.proc is not None and self.proc.poll() is not None:
                self._died(f"the lab's QEMU exited ({self.proc.returncode}): {self._why_dead()}")
            elif time.monotonic() - self.last_word > WEDGE_S:
                self._died(f"the lab sent nothing for {WEDGE_S:.0f} s (wedged)", kill=True)

    def _died(self, why: str, kill: bool = False) -> None:
        with self._lock:
            if self.dead is not None:
                return
            self.dead = why
        if kill:
            # Killed (and reaped) before the session hears of it: the session ends its cell at once,
            # and a replacement lab must never start beside a wedged one still holding the CPUs.
            self.kill()
        session = self.session
        if session is not None:
            session.on_lab_died(why)

    # -- cells ------------------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.socks["control"].sendall((json.dumps(msg) + "\n").encode())
        except OSError as exc:
            self._died(f"cannot write to the lab's control port: {exc}")

    def send_gdb(self, data: bytes) -> None:
        with self._gdb_lock:
            try:
                self.socks["gdb"].sendall(data)
            except OSError as exc:
                self._died(f"cannot write to the lab's gdb port: {exc}")

    def sync_clock(self) -> ClockSync:
        best = ClockSync()
        for _ in range(PING_SAMPLES):
            self._seq += 1
            sent = time.monotonic()
            self.send({"type": "ping", "id": self._seq})
            pong = self._wait_for("pong", sent + WEDGE_S, str(self._seq))
            got = pong["_host_t"]
            if got - sent < best.rtt_s:
                best = ClockSync(offset_s=(sent + got) / 2 - float(pong["t"]), rtt_s=got - sent)
        return best

    def run(self, request: BootRequest, command: Callable[[BootRequest], list[str]] | None = None,
            collect: tuple[str, ...] = (), session_class: type["LabSession"] | None = None,
            gdb: GdbBridge | None = None) -> "LabSession":
        """Start a cell: the VMM child for `request`, or (qemu-kvm) the argv `command` builds
        from the request as the lab sees it; `collect` names files of its workdir to bring back;
        `gdb` carries debuggers to the stub in the lab (closed with the cell, or here on failure)."""
        try:
            if self.dead:
                raise LabError(f"the lab is gone: {self.dead}", "the next cell starts a new lab")
            return self._run(request, command, collect, session_class or LabSession, gdb)
        except BaseException:
            if gdb is not None:
                gdb.close()
            raise

    def _run(self, request: BootRequest, command: Callable[[BootRequest], list[str]] | None,
             collect: tuple[str, ...], session_class: type["LabSession"], gdb: GdbBridge | None) -> "LabSession":
        self._drain_control()
        clock = self.sync_clock()
        self._seq += 1
        lab_id = str(self._seq)
        lab_request = self._stage_inputs(request, lab_id)
        session = session_class(request, self, lab_id, clock)
        session.gdb = gdb.start(self.send_gdb, lambda: next(self._gdb_conns)) if gdb is not None else None
        self.session = session
        session.start_time = time.monotonic()
        if command is None:
            self.send({"type": "run", "id": lab_id, "spec": lab_request.to_json(), "collect": list(collect)})
        else:
            self.send({"type": "run", "id": lab_id, "argv": command(lab_request), "collect": list(collect)})
        try:
            started = self._wait_for("started", time.monotonic() + WEDGE_S, lab_id)
        except LabError:
            self.kill()
            raise
        session.lab_pid = started.get("pid")
        self.cells_served += 1
        return session

    def _drain_control(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.control.get_nowait()

    def _stage_inputs(self, request: BootRequest, lab_id: str) -> BootRequest:
        """Link (or copy) the cell's files into the inbox; returns the request as the lab sees it."""
        cell_in = self.inbox / lab_id
        cell_in.mkdir()
        moved: dict[str, Any] = {"workdir": Path(LAB_CELLS_DIR) / lab_id}
        for key in ("kernel", "initrd", "disk"):
            src = getattr(request, key)
            if src is None:
                continue
            dst = cell_in / f"{key}-{Path(src).name}"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            moved[key] = Path(f"/lab/in/{lab_id}/{dst.name}")
        debug = (request.options or {}).get(DEBUG_OPTION_KEY)
        if debug:   # the stub in the lab listens on the lab's loopback; the bridge has the user's address
            moved["options"] = {**request.options,
                                DEBUG_OPTION_KEY: {**debug, "listen": f"{LAB_STUB_HOST}:{LAB_STUB_PORT}"}}
        return dataclasses.replace(request, **moved)

    def unstage(self, lab_id: str) -> None:
        shutil.rmtree(self.inbox / lab_id, ignore_errors=True)

    # -- stop -----------------------------------------------------------------------------------
    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        """Quit the agent, stop QEMU (SIGTERM, then SIGKILL), remove the lab directory."""
        if self.proc is not None and self.proc.poll() is None and self.dead is None and "control" in self.socks:
            self.send({"type": "quit"})
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3.0)
            except subprocess.TimeoutExpired:
                self.kill()
        self.dead = self.dead or "closed"
        for s in self.socks.values():
            with contextlib.suppress(OSError):
                s.close()
        with contextlib.suppress(AttributeError, OSError):
            self._qemu_stderr.close()
        if not os.environ.get("HARNESS_LAB_KEEP"):   # debugging: keep the lab's console and sockets
            shutil.rmtree(self.labdir, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        """The lab facts every result made in it carries (result.host.lab)."""
        kvm = self.facts.get("kvm", {})
        return {"kind": f"{kvm.get('kvm_module', '?')} nested in QEMU TCG", "kvm_module": kvm.get("kvm_module"),
                "cpu_model": kvm.get("cpu_model"), "lab_kernel": self.facts.get("kernel_release"),
                "nested_paging": self.facts.get("nested_paging"), "qemu": self.facts.get("qemu"),
                "machine": self.params.machine, "cpu": self.params.cpu,
                "cold_start_s": self.facts.get("cold_start_s"),
                "kvm_ready_s": self.facts.get("kvm_ready_s"),
                "kernel_uptime_at_kvm_s": self.facts.get("kvm_ready_uptime_s"), "agent_import_s": self.facts.get("import_s"),
                "init_stages": self.facts.get("init_stages", []),
                "quirks": self.facts.get("quirks", []), "quirk_probe": self.facts.get("quirk_probe"),
                "cells_served": self.cells_served}


class LabSession(BackendSession):
    """A VMM child running in the lab, seen by the runner like any local child process."""

    def __init__(self, request: BootRequest, lab: Lab, lab_id: str, clock: ClockSync) -> None:
        super().__init__(request)
        request.workdir.mkdir(parents=True, exist_ok=True)
        self.lab, self.lab_id, self.clock = lab, lab_id, clock
        self.lab_pid: int | None = None
        self.gdb: GdbBridge | None = None          # --gdb: the debugger's way to the stub in the lab
        self._console_r, self._console_w = os.pipe()
        self._console = _CellStream()
        self._events = _CellStream()
        self._events_buf = b""
        self._events_file = ev.EventWriter(request.events_path)
        self._exited: dict[str, Any] | None = None
        self._failure: str | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- BackendSession ----------------------------------------------------------------------
    @property
    def console_fd(self) -> int:
        return self._console_r

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.lab.socks["console"].sendall(data)

    def poll_exit(self) -> int | None:
        if self._failure is not None:
            return -1
        if self._exited is not None and self._console.done.is_set():
            code = self._exited.get("code")
            return int(code) if code is not None else -1
        return None

    def stop(self) -> SessionSummary:
        if self._exited is None and self._failure is None:
            self.lab.send({"type": "stop", "id": self.lab_id})
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self._exited is None and self._failure is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if self._exited is None and self._failure is None:
                self.on_lab_died(f"the lab did not stop the VMM child within {STOP_TIMEOUT_S:.0f} s (wedged)")
                self.lab.kill()
        if self._exited is not None:
            self._console.done.wait(5.0)
            self._events.done.wait(5.0)
        if self.gdb is not None:
            self.gdb.close()
        self._finish_streams()
        self._keep_collected()
        self.lab.session = None
        self.lab.unstage(self.lab_id)
        return self._summary()

    def hold_for_debugger(self) -> None:
        """--gdb-on-failure: the agent stops the child's vCPUs for the debugger (as BuiltinSession's
        signal does natively); then wait for the child's end (gdb's kill or detach)."""
        if self._exited is None and self._failure is None:
            self.lab.send({"type": "hold", "id": self.lab_id})
        super().hold_for_debugger()

    def _keep_collected(self) -> None:
        """Files the agent brought back from the lab's workdir (the virtio console's log, QEMU's
        log), written beside the cell's console as a local child would have left them."""
        from harness.model.files import write_atomic
        for name, text in ((self._exited or {}).get("files") or {}).items():
            if "/" not in name and not (self.request.workdir / name).exists():
                write_atomic(self.request.workdir / name, str(text).encode())

    # -- from the lab's reader threads -----------------------------------------------------------
    def on_console(self, chunk: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(OSError):
                _write_all(self._console_w, chunk)
        self._console.arrived(len(chunk))
        if self._exited is not None and self._console.done.is_set():
            self._close_console()

    def on_events(self, chunk: bytes) -> None:
        self._events_buf += chunk
        *lines, self._events_buf = self._events_buf.split(b"\n")
        for line in lines:
            self._event_line(line)
        self._events.arrived(len(chunk))

    def on_exited(self, msg: dict[str, Any]) -> None:
        self._exited = msg
        self._events.expect(int(msg.get("events_bytes", 0)))
        self._console.expect(int(msg.get("console_bytes", 0)))
        if self._console.done.is_set():
            self._close_console()

    def on_lab_died(self, why: str) -> None:
        if self._exited is not None or self._failure is not None:
            return
        self._failure = why
        with contextlib.suppress(OSError, ValueError):
            self._events_file.emit(ev.VmEvent(ev.BACKEND_ERROR, time.monotonic(), {"message": f"lab: {why}"}))
        self._close_console()

    def emit_host_event(self, data: dict[str, Any], kind: str = ev.VM_START) -> None:
        """An event of the host's own (for children that write no events, e.g. QEMU): VM_START,
        and the debugger's DEBUG_LISTEN / DEBUG_STOP / DEBUG_RESUME."""
        self._events_file.emit(ev.VmEvent(kind, time.monotonic(), data))

    def gdb_listen_data(self, data: dict[str, Any]) -> dict[str, Any]:
        """Where a debugger connects: the bridge's address on this machine, not the stub's in the lab."""
        assert self.gdb is not None
        host, port = self.gdb.address
        return {**data, "host": host, "port": port, "lab_stub": f"{data.get('host')}:{data.get('port')}"}

    def summary_data(self, exited: dict[str, Any]) -> dict[str, Any]:
        """The child's own summary (the VMM child writes one; see LabQemuSession for QEMU)."""
        return exited.get("summary") or {}

    # -- internals ---------------------------------------------------------------------------------
    def _event_line(self, line: bytes) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            return   # a torn line from a killed child is not an event
        obj["t"] = self.clock.to_host(float(obj.get("t", 0.0)))
        data = obj.get("data") or {}
        if obj.get("type") == ev.GAP and isinstance(data.get("first_t"), (int, float)):
            data["first_t"] = self.clock.to_host(data["first_t"])
        if obj.get("type") == ev.VM_START:
            data.setdefault("host", {})["lab"] = self.lab.describe()
        if obj.get("type") == ev.DEBUG_LISTEN and self.gdb is not None:
            data = self.gdb_listen_data(data)
        with contextlib.suppress(OSError, ValueError):
            self._events_file.emit(ev.VmEvent(obj.get("type", "?"), obj["t"], data))

    def _close_console(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._console_w)

    def _finish_streams(self) -> None:
        self._close_console()
        with contextlib.suppress(OSError):
            self._events_file.close()

    def _summary(self) -> SessionSummary:
        msg = self._exited or {}
        (self.request.workdir / "backend.stderr.log").write_text(msg.get("stderr", ""))
        data = self.summary_data(msg)
        extra = dict(data.get("extra") or {})
        for gap in extra.get("gaps") or []:
            if isinstance(gap.get("first_t"), (int, float)):
                gap["first_t"] = self.clock.to_host(gap["first_t"])
        recorder = data.get("flight_recorder") or []
        for entry in recorder:
            if isinstance(entry.get("t"), (int, float)):
                entry["t"] = self.clock.to_host(entry["t"])
        host = {**(data.get("host") or {}), "host": "lab", "lab": self.lab.describe(),
                "clock_offset_s": round(self.clock.offset_s, 6), "clock_rtt_s": round(self.clock.rtt_s, 6)}
        if self._failure is not None:
            extra["infrastructure_error"] = self._failure
        elif not data:
            extra.update(summary_missing=True, note="the VMM child in the lab wrote no summary.json")
        summary = SessionSummary(exit_code=msg.get("code") if self._exited else None,
                                 exit_counts=data.get("exit_counts", {}), flight_recorder=recorder, host=host,
                                 command=["lab:", *(data.get("command") or [])],
                                 stderr_tail=msg.get("stderr", "")[-4000:], extra=extra)
        from harness.model.files import write_json_atomic
        write_json_atomic(self.request.summary_path, summary.to_json())
        return summary


def _kvm_ready_s(ready_s: float, facts: dict[str, Any]) -> float | None:
    """Seconds from QEMU's start to a usable /dev/kvm: the agent's ready time minus the lab-uptime
    span between init's /dev/kvm check and the agent's ready message."""
    up, kvm_up = facts.get("uptime_s"), facts.get("kvm_ready_uptime_s")
    if not isinstance(up, (int, float)) or not isinstance(kvm_up, (int, float)):
        return None
    return round(ready_s - (up - kvm_up), 3)


def _chunks(sock: socket.socket):
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        yield chunk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])[:300]


def _compile_harness(package_dir: Path) -> None:
    """Byte-compile the harness on the host: the lab reads .pyc from a read-only share and never
    compiles under TCG (measured: importing the VMM from source there costs seconds)."""
    import compileall
    compileall.compile_dir(str(package_dir), quiet=1, workers=1)


__all__ = ["Lab", "LabSession", "LabError", "ClockSync", "Share", "lab_shares", "qemu_argv", "lab_params"]
