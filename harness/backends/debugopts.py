"""Debugger options of a boot (`--gdb [HOST:]PORT`, `--gdb-wait`, `--gdb-on-failure`), for every backend.

They travel in BootRequest.options["debug"]. The built-in VMM serves them with its own gdb stub
(harness.kvm.gdbstub); QEMU backends map them to QEMU's `-gdb tcp:HOST:PORT` and `-S`, and keep a
failed guest with `-action shutdown=pause,panic=pause`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.errors import BackendUnavailable, ConfigError

OPTION_KEY = "debug"
QEMU_DEFAULT_PORT = 1234      # QEMU needs a fixed port; the built-in stub takes any free one (0)
DEFAULT_HOST = "127.0.0.1"    # loopback unless the user names a host: a gdb stub is a remote shell


def parse_listen(text: str) -> tuple[str, int]:
    """'[HOST:]PORT' -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--gdb {text!r}: the port is not a number", "write --gdb PORT or --gdb HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"--gdb {text!r}: port {number} out of range", "use a port between 1 and 65535 (0: any)")
    return host or DEFAULT_HOST, number


def listen_error(host: str, port: int, exc: OSError) -> BackendUnavailable:
    """The one-line error for a --gdb address that cannot be listened on (in use, not ours)."""
    why = str(exc.strerror or exc).split(" (while attempting")[0]   # socket.create_server repeats the address
    return BackendUnavailable(f"the gdb stub cannot listen on {host}:{port}: {why}",
                              "pick another port (--gdb PORT; --gdb 0 takes any free one)")


@dataclass
class DebugOptions:
    listen: str | None = None     # "[HOST:]PORT"; None: only when holding a failure, on a free port
    wait: bool = False            # hold the first instruction until a debugger attaches (and continues)
    on_failure: bool = False      # keep a failed guest for a debugger instead of tearing it down

    @property
    def enabled(self) -> bool:
        return bool(self.listen is not None or self.wait or self.on_failure)

    def to_options(self) -> dict[str, Any]:
        return {OPTION_KEY: asdict(self)} if self.enabled else {}

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> "DebugOptions":
        data = (options or {}).get(OPTION_KEY) or {}
        return cls(listen=data.get("listen"), wait=bool(data.get("wait")), on_failure=bool(data.get("on_failure")))

    def address(self, default_port: int = 0) -> tuple[str, int]:
        return parse_listen(self.listen if self.listen is not None else str(default_port))

    def qemu_args(self) -> list[str]:
        if not self.enabled:
            return []
        host, port = self.address(QEMU_DEFAULT_PORT)
        args = ["-gdb", f"tcp:{host}:{port or QEMU_DEFAULT_PORT}"]
        if self.wait:
            args.append("-S")
        if self.on_failure:
            args += ["-action", "shutdown=pause,panic=pause"]
        return args
