"""The one table of backends: name -> where its class lives, imported only when a cell uses it.

The guest-file validator, the matrix expander, the CLI and the runner all read `BACKENDS`; the
QEMU path never loads the built-in VMM's cffi declarations because nothing imports a backend's
module until `get_backend` is asked for that backend. A new backend is one line here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError, lookup

if TYPE_CHECKING:
    from harness.backends.base import Backend


@dataclass(frozen=True)
class BackendEntry:
    target: str                                        # "package.module:Class"
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    boots_kernels: bool = True                         # `harness boot KERNEL` can use it

    def load(self) -> "Backend":
        module_name, _, class_name = self.target.partition(":")
        return getattr(importlib.import_module(module_name), class_name)(**self.kwargs)


BACKENDS: dict[str, BackendEntry] = {
    "builtin": BackendEntry("harness.backends.builtin:BuiltinBackend",
                            description="our VMM on /dev/kvm (a child process)"),
    "qemu-tcg": BackendEntry("harness.backends.qemu:QemuBackend", {"accel": "tcg"}, "QEMU, software emulation"),
    "qemu-kvm": BackendEntry("harness.backends.qemu:QemuBackend", {"accel": "kvm"}, "QEMU on /dev/kvm"),
    "replay": BackendEntry("harness.backends.replay:ReplayBackend", description="plays back a recorded console",
                           boots_kernels=False),
}
BACKEND_NAMES = tuple(BACKENDS)
KERNEL_BACKENDS = tuple(name for name, entry in BACKENDS.items() if entry.boots_kernels)
NATIVE = "native"
# Backends whose VM child runs on another host (harness.hosts): (host, backend) -> "module:Class".
HOSTED: dict[tuple[str, str], BackendEntry] = {
    ("lab", "builtin"): BackendEntry("harness.hosts.backend:LabBuiltinBackend",
                                     description="the built-in VMM child on the lab's nested KVM"),
    ("lab", "qemu-kvm"): BackendEntry("harness.hosts.backend:LabQemuBackend",
                                      description="QEMU on the lab's KVM (the same-KVM reference)"),
}


def get_backend(name: str, host: str = NATIVE) -> "Backend":
    """The backend called `name` whose VM child runs on `host`, its module imported now."""
    if host != NATIVE:
        hosted = HOSTED.get((host, name))
        if hosted is None:
            served = ", ".join(b for h, b in HOSTED if h == host) or "nothing"
            raise ConfigError(f"backend {name!r} cannot run on host {host!r}",
                              f"host: {host} serves {served}; use host: native for {name}")
        return hosted.load()
    return lookup(BACKENDS, name, "backend").load()
