"""Backends whose VM child runs in the lab: the built-in VMM child, forked by the lab's agent."""
from __future__ import annotations

from harness.assets.lab import lab_params
from harness.backends.base import BootRequest
from harness.backends.builtin import BuiltinBackend
from harness.errors import BackendUnavailable, HarnessError
from harness.hosts.lab import LabError, LabSession, check_qemu


class LabBuiltinBackend(BuiltinBackend):
    """`builtin` with `host: lab`: the same VMM child, on the lab's real (nested) KVM."""
    host = "lab"

    def check(self, request: BootRequest) -> None:
        self.check_guest(request)          # arch and boot method, as on the native host
        try:
            check_qemu(lab_params(request.arch))
        except HarnessError as exc:
            raise BackendUnavailable(exc.problem, exc.fix) from None

    def start(self, request: BootRequest) -> LabSession:
        from harness.hosts.pool import lab_for
        request.workdir.mkdir(parents=True, exist_ok=True)
        request.summary_path.unlink(missing_ok=True)
        lab = lab_for(request.arch)
        try:
            return lab.run(request)
        except LabError:
            lab.kill()   # a lab that cannot start a cell is replaced for the retry
            raise


def host_backend(name: str, host: str) -> BuiltinBackend:
    from harness.hosts.select import LAB, LAB_BACKENDS
    if host == LAB and name in LAB_BACKENDS:
        return LabBuiltinBackend()
    from harness.errors import ConfigError
    raise ConfigError(f"backend {name!r} cannot run on host {host!r}",
                      f"host: lab serves {', '.join(LAB_BACKENDS)}; use host: native for {name}")
