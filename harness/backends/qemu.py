"""The QEMU backend: qemu-system-x86_64 / qemu-system-aarch64 with TCG or KVM.

QEMU runs as the session's child (argument lists only, never a shell): its stdout is the guest
console (`-serial stdio`), its stdin the guest's UART input. Beside the console:
- `-d unimp,guest_errors -D <workdir>/qemu.log` lines become GapRecords (qemu_gaps);
- a QMP socket tells why QEMU stopped: with `-no-reboot` a guest reset makes QEMU exit, and QMP's
  SHUTDOWN event says whether that was a reset, a power-off, or our own signal;
- "KVM internal error" on stderr becomes a HOST_EMULATION_FAILURE event and gap.
A watcher thread in the runner's process tails those and appends VmEvents to events.jsonl.
QEMU's own failures (bad kernel file, bad option) end as a VM_EXIT/BACKEND_ERROR event and a
SessionSummary with its stderr, never as an exception in the runner.

Backend options (the guest file's `qemu:` section, BootRequest.options):
    machine: str          override the machine (e.g. "q35", "microvm,acpi=off,pic=on,pit=on")
    cpu: str              -cpu model (default: QEMU's for x86, cortex-a57 for aarch64)
    firmware: str         -bios file for boot: firmware (default SeaBIOS / QEMU_EFI.fd)
    disk_interface: str   virtio (default) | virtio-mmio | ide | nvme | usb
    disk_format: str      raw (default) | qcow2: the format of the read-only disk image
    extra_args: [str]     appended verbatim (still no shell)
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness.backends.base import Backend, ProcessSession
from harness.backends.debugopts import OPTION_KEY as DEBUG_OPTION_KEY
from harness.backends.debugopts import QEMU_DEFAULT_PORT, DebugOptions
from harness.backends.qemu_gaps import parse_kvm_failure, parse_log_line
from harness.errors import AssetError, BackendUnavailable, ConfigError, lookup
from harness.model import events as ev
from harness.model.files import LineTail, write_json_atomic
from harness.model.gap import GapRecord
from harness.model.gapsink import GapSink
from harness.model.session import BootRequest, SessionSummary

BINARIES = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
PACKAGES = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}
# microvm without ACPI tables (measured here: Debian's kernel reaches `login:` on it; giving the
# *kernel* `acpi=off` as well leaves it without a working UART interrupt, so userspace output never
# appears - guest files for microvm say just console=ttyS0).
MICROVM_MACHINE = "microvm,acpi=off"
AARCH64_MACHINE = "virt,gic-version=3"
AARCH64_FIRMWARE = ("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", "/usr/share/AAVMF/AAVMF_CODE.fd")
OPTION_KEYS = ("machine", "cpu", "firmware", "disk_interface", "disk_format", "extra_args")
_DIRECT_X86 = ("pvh", "bzimage", "multiboot")
_POLL_S = 0.1
_QMP_CONNECT_S = 5.0


class QemuBackend(Backend):
    def __init__(self, accel: str = "tcg") -> None:
        if accel not in ("tcg", "kvm"):
            raise ConfigError(f"unknown QEMU accelerator {accel!r}", "use tcg or kvm")
        self.accel = accel
        self.name = f"qemu-{accel}"

    # -- availability --------------------------------------------------------------------
    def check(self, request: BootRequest) -> None:
        binary = _binary(request.arch)
        if shutil.which(binary) is None:
            raise BackendUnavailable(f"{binary} is not installed",
                                     f"apt-get install {PACKAGES[request.arch]}")
        if self.accel == "kvm":
            if not os.access("/dev/kvm", os.R_OK | os.W_OK):
                raise BackendUnavailable("qemu-kvm needs /dev/kvm, which is absent or not accessible",
                                         "use qemu-tcg, or run on a host with KVM (and join the kvm group)")
            if request.arch != _host_arch():
                raise BackendUnavailable(f"KVM cannot run an {request.arch} guest on an {_host_arch()} host",
                                         "use qemu-tcg for this guest")
        _validate_request(request)
        if boot_method(request) == "firmware" and _firmware(request) is None:
            raise BackendUnavailable("no UEFI firmware for aarch64 (QEMU_EFI.fd) is installed",
                                     "apt-get install qemu-efi-aarch64")
        if shutil.which("qemu-img") is None and request.disk is not None:
            raise BackendUnavailable("qemu-img is not installed (needed for the disk overlay)",
                                     "apt-get install qemu-utils")

    # -- the command line -------------------------------------------------------------------
    def build_argv(self, request: BootRequest, *, disk_overlay: Path | None = None,
                   qmp_socket: Path | None = None) -> list[str]:
        """QEMU's argv for `request` (pure: no file is created or checked)."""
        _validate_request(request)
        opts = request.options or {}
        argv = [_binary(request.arch)]
        machine, cpu = _machine_and_cpu(request)
        argv += ["-M", machine]
        if cpu:
            argv += ["-cpu", cpu]
        argv += ["-accel", self.accel, "-m", str(request.memory_mib), "-smp", str(request.vcpus),
                 "-nodefaults", "-nographic", "-serial", "stdio", "-monitor", "none", "-no-reboot",
                 "-d", "unimp,guest_errors", "-D", str(request.workdir / "qemu.log")]
        if qmp_socket is not None:
            argv += ["-qmp", f"unix:{qmp_socket},server=on,wait=off"]
        if boot_method(request) == "firmware":
            fw = _firmware(request)
            if fw:
                argv += ["-bios", fw]
        else:
            argv += ["-kernel", str(request.kernel)]
            if request.initrd is not None:
                argv += ["-initrd", str(request.initrd)]
            if request.cmdline:
                argv += ["-append", request.cmdline]
        if request.disk is not None:
            argv += _disk_args(request, machine, self.drive_source(request, disk_overlay))
        argv += DebugOptions.from_options(opts).qemu_args()
        argv += [str(a) for a in opts.get("extra_args", [])]
        return argv

    def drive_source(self, request: BootRequest, overlay: Path | None) -> str:
        """The -drive file part: the qcow2 overlay start() makes over the read-only image."""
        return f"file={overlay or request.workdir / 'disk.qcow2'},format=qcow2"

    # -- running ------------------------------------------------------------------------------
    def start(self, request: BootRequest) -> "QemuSession":
        request.workdir.mkdir(parents=True, exist_ok=True)
        overlay = None
        if request.disk is not None:
            overlay = make_overlay(request.disk, request.workdir / "disk.qcow2",
                                   (request.options or {}).get("disk_format", "raw"))
        qmp_dir = Path(tempfile.mkdtemp(prefix="hq-"))  # unix socket paths must stay under 108 bytes
        argv = self.build_argv(request, disk_overlay=overlay, qmp_socket=qmp_dir / "qmp.sock")
        return QemuSession(request, argv, accel=self.accel, qmp_dir=qmp_dir)


class QemuSession(ProcessSession):
    """A running QEMU plus the thread that turns its log, stderr and QMP events into VmEvents."""

    def __init__(self, request: BootRequest, argv: list[str], *, accel: str, qmp_dir: Path) -> None:
        self._writer: ev.EventWriter | None = ev.EventWriter(request.events_path)
        self._lock = threading.Lock()
        self.host = {"qemu_version": qemu_version(argv[0]), "accel": accel, "binary": argv[0],
                     "machine": argv[argv.index("-M") + 1]}
        self._emit(ev.VM_START, {"host": self.host, "command": argv})
        self._debug = DebugOptions.from_options(request.options)
        if self._debug.enabled:
            self._announce_gdb()
        self._qmp_dir = qmp_dir
        super().__init__(request, argv)
        self._gaps = GapSink(on_new=lambda gap: self._emit(ev.GAP, gap.to_json(), gap.first_t))
        self._shutdown_reason: str | None = None
        self._kvm_reported = False
        self._stopped_by_us = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"qemu-watch-{request.cell_id}", daemon=True)
        self._thread.start()

    # -- events --------------------------------------------------------------------------------
    def _emit(self, type_: str, data: dict[str, Any], t: float | None = None) -> None:
        with self._lock:
            if self._writer is None:
                return  # stop() has closed the file; a watcher this late has nothing to add
            self._writer.emit(ev.VmEvent(type_, time.monotonic() if t is None else t, data))

    def _gap(self, gap: GapRecord) -> None:
        """First sighting of a gap goes out at once; repeats are counted and sent in batches."""
        self._gaps.record(gap)

    def _log_lines(self, lines: list[bytes]) -> None:
        for line in lines:
            gap = parse_log_line(line.decode(errors="replace"))
            if gap is not None:
                self._gap(gap)

    def _flush_repeats(self) -> None:
        for repeat in self._gaps.unsent_repeats():
            self._emit(ev.GAP, repeat.to_json(), repeat.first_t)

    # -- the watcher -----------------------------------------------------------------------------
    def _watch(self) -> None:
        log = LineTail(self.request.workdir / "qemu.log", max_chunk=1 << 20)
        qmp = _Qmp(self._qmp_dir / "qmp.sock")
        deadline = time.monotonic() + _QMP_CONNECT_S
        try:
            while True:
                exited = self.proc.poll() is not None
                if not qmp.connected and not exited and time.monotonic() < deadline:
                    qmp.connect()
                for event in qmp.read_events(timeout=_POLL_S if not exited else 0.0):
                    self._on_qmp(event)
                while True:  # after the exit, drain the whole log; while running, a bounded chunk
                    lines = log.lines()
                    self._log_lines(lines)
                    if not (exited and lines):
                        break
                if exited:  # a last line QEMU never finished
                    self._log_lines([log.take_partial()])
                self._check_stderr()
                if exited:
                    break
            self._on_exit()
        except Exception as e:  # the watcher must never take the runner down; report instead
            self._emit(ev.BACKEND_ERROR, {"message": f"qemu watcher: {type(e).__name__}: {e}"})
        finally:
            qmp.close()
            self._done.set()

    def _announce_gdb(self) -> None:
        """QEMU's own stub: where it listens, and (-S) that the guest starts stopped for it."""
        host, port = self._debug.address(QEMU_DEFAULT_PORT)
        self._emit(ev.DEBUG_LISTEN, {"host": host, "port": port or QEMU_DEFAULT_PORT, "stub": "qemu"})
        if self._debug.wait:
            self._emit(ev.DEBUG_STOP, {"why": "start", "stub": "qemu"})

    def _on_qmp(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        data = event.get("data", {}) or {}
        if self._debug.enabled and name in ("STOP", "RESUME"):   # gdb stopped / continued the VM
            self._emit(ev.DEBUG_STOP if name == "STOP" else ev.DEBUG_RESUME, {"stub": "qemu"})
        if name == "SHUTDOWN":
            self._shutdown_reason = str(data.get("reason", ""))
        elif name == "RESET" and data.get("guest"):
            self._shutdown_reason = self._shutdown_reason or "guest-reset"

    def _check_stderr(self) -> None:
        if self._kvm_reported:
            return
        failure = parse_kvm_failure(self.stderr_tail(16000))
        if failure is not None:
            self._kvm_reported = True
            now = time.monotonic()
            self._emit(ev.HOST_EMULATION_FAILURE, failure.event_data(), now)
            self._gap(failure.gap(now))

    def _on_exit(self) -> None:
        self._flush_repeats()
        code = self.proc.returncode
        reason = self._shutdown_reason
        if reason == "guest-reset":
            self._emit(ev.RESET, {"source": "qemu", "reason": reason})
        elif reason in ("guest-shutdown", "guest-panic"):
            self._emit(ev.SHUTDOWN, {"source": "qemu", "reason": reason})
        elif code not in (0, None) and not self._stopped_by_us and reason is None:
            self._emit(ev.BACKEND_ERROR, {"message": f"qemu exited with {code}: {_last_line(self.stderr_tail())}"})
        elif code == 0 and reason is None and not self._stopped_by_us:
            # No QMP word on why (socket never came up): with -no-reboot an exit 0 is a reset.
            self._emit(ev.RESET, {"source": "qemu", "reason": "exit-after-no-reboot"})
        self._emit(ev.VM_EXIT, {"reason": reason or ("stopped" if self._stopped_by_us else "exit"), "code": code})

    def _final_gaps(self) -> list[dict[str, Any]]:
        return [gap.to_json() for gap in self._gaps.records()]

    # -- stopping ---------------------------------------------------------------------------------
    def stop(self) -> SessionSummary:
        try:
            # A console EOF usually means QEMU is exiting on its own: let it, so its exit is its own.
            self.proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            self._stopped_by_us = True
        code = self.terminate()
        self._done.wait(10.0)
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        shutil.rmtree(self._qmp_dir, ignore_errors=True)
        summary = SessionSummary(
            exit_code=code, host=self.host, command=list(self.argv), stderr_tail=self.stderr_tail(),
            extra={"shutdown_reason": self._shutdown_reason, "stopped_by_harness": self._stopped_by_us,
                   "qemu_log": str(self.request.workdir / "qemu.log"),
                   # The deduplicated ledger with final counts (the runner prefers it to the events).
                   "gaps": self._final_gaps()})
        _write_summary(self.request.summary_path, summary)
        return summary


# -- helpers ----------------------------------------------------------------------------------------
def _binary(arch: str) -> str:
    return lookup(BINARIES, arch, "QEMU emulator arch")


def _host_arch() -> str:
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(os.uname().machine, os.uname().machine)


def boot_method(request: BootRequest) -> str:
    """The request's boot method, with "auto" (harness boot's default) detected from the kernel."""
    if request.boot != "auto":
        return request.boot
    if request.arch == "aarch64":
        return "image"
    if request.kernel is None:
        return "firmware"
    from harness.boot import detect_method  # the loaders' detector knows every format
    return detect_method(Path(request.kernel))


def _validate_request(request: BootRequest) -> None:
    unknown = sorted(set(request.options or {}) - set(OPTION_KEYS) - {DEBUG_OPTION_KEY})
    if unknown:
        raise ConfigError(f"unknown qemu option(s) {', '.join(unknown)} for guest {request.guest}",
                          f"allowed: {', '.join(OPTION_KEYS)}")
    boot = boot_method(request)
    if boot == "firmware":
        if request.disk is None and not (request.options or {}).get("extra_args"):
            raise ConfigError(f"guest {request.guest} boots from firmware but has no disk",
                              "give the guest a disk: {url: ...} or {path: ...}")
        return
    if request.kernel is None:
        raise ConfigError(f"guest {request.guest} (boot {request.boot}) has no kernel", "add kernel: to the guest file")
    if request.arch == "x86_64" and boot not in _DIRECT_X86:
        raise BackendUnavailable(f"QEMU cannot load a kernel with boot method {boot!r} directly",
                                 "use the builtin backend, or boot: firmware with the OS's disk image")
    if request.arch == "aarch64" and boot not in ("image", "bzimage"):
        raise BackendUnavailable(f"boot method {boot!r} is not an aarch64 boot method for QEMU",
                                 "use boot: image (Linux-style Image) or boot: firmware (UEFI)")


def _machine_and_cpu(request: BootRequest) -> tuple[str, str | None]:
    opts = request.options or {}
    if request.arch == "aarch64":
        # GICv3, as the built-in VMM's machine (harness.boot.fdt): the two backends compare like for like.
        return opts.get("machine", AARCH64_MACHINE), opts.get("cpu", "cortex-a57")
    default = MICROVM_MACHINE if boot_method(request) == "pvh" else "pc"
    return opts.get("machine", default), opts.get("cpu")


def _firmware(request: BootRequest) -> str | None:
    given = (request.options or {}).get("firmware")
    if given:
        return str(given)
    if request.arch == "aarch64":
        return next((f for f in AARCH64_FIRMWARE if os.path.exists(f)), None)
    return ""  # x86: QEMU's built-in SeaBIOS, no -bios needed


def _disk_args(request: BootRequest, machine: str, source: str) -> list[str]:
    iface = (request.options or {}).get("disk_interface")
    if iface is None:
        iface = "virtio-mmio" if machine.startswith("microvm") else "virtio"
    drive = ["-drive", f"{source},if=none,id=hd0"]
    devices = {"virtio": "virtio-blk-pci,drive=hd0", "virtio-mmio": "virtio-blk-device,drive=hd0",
               "nvme": "nvme,drive=hd0,serial=harness0", "usb": "usb-storage,drive=hd0"}
    if iface == "ide":
        return ["-drive", f"{source},if=ide,index=0,media=disk"]
    if iface == "usb":
        return ["-device", "qemu-xhci", *drive, "-device", devices["usb"]]
    if iface not in devices:
        raise ConfigError(f"unknown qemu disk_interface {iface!r}", "use virtio, virtio-mmio, ide, nvme or usb")
    return [*drive, "-device", devices[iface]]


def make_overlay(image: Path, overlay: Path, backing_format: str = "raw") -> Path:
    """A qcow2 overlay on top of the read-only `image`: the guest writes only the overlay."""
    if not Path(image).is_file():
        raise AssetError(f"disk image {image} does not exist", "build or fetch the guest's disk first")
    if overlay.exists():
        overlay.unlink()
    proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(Path(image).resolve()),
                           "-F", backing_format, str(overlay)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AssetError(f"qemu-img could not create an overlay on {image}: {proc.stderr.strip()[:200]}",
                         "check the disk image and its format (qemu: {disk_format: raw|qcow2})")
    return overlay


@functools.lru_cache(maxsize=None)
def qemu_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no stderr)"


def _write_summary(path: Path, summary: SessionSummary) -> None:
    with contextlib.suppress(OSError):
        write_json_atomic(path, summary.to_json(), indent=2)


class _Qmp:
    """Just enough QMP to hear SHUTDOWN/RESET events (capabilities handshake, then read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buf = b""

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def connect(self) -> None:
        if not self.path.exists():
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(self.path))
            s.sendall(b'{"execute": "qmp_capabilities"}\n')
        except OSError:
            s.close()
            return
        s.setblocking(False)
        self.sock = s

    def read_events(self, timeout: float) -> list[dict[str, Any]]:
        if self.sock is None:
            if timeout:
                time.sleep(timeout)
            return []
        import select
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if ready:
            try:
                data: bytes | None = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":  # QEMU closed the socket (it is exiting): stop selecting on it
                self.close()
            elif data:
                self.buf += data
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and "event" in msg:
                    out.append(msg)
        return out

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
