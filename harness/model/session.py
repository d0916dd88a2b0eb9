"""What the runner hands a backend (BootRequest) and what a backend hands back when the guest
stopped (SessionSummary), each with its JSON form: the built-in VMM child reads its request from
a spec file and writes its summary to summary.json, QEMU's session writes the same summary.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.model.record import JsonRecord


@dataclass
class BootRequest(JsonRecord):
    """Everything a backend needs to boot one cell. Paths are resolved, read-only inputs."""
    cell_id: str
    guest: str
    family: str                 # linux | netbsd | openbsd | freebsd | fixture | xen | other
    arch: str                   # x86_64 | aarch64
    boot: str                   # bzimage | pvh | multiboot | netbsd | openbsd | freebsd | firmware | image
    kernel: Path | None
    initrd: Path | None = None
    disk: Path | None = None    # never written: backends put a copy-on-write overlay in workdir
    cmdline: str = ""
    memory_mib: int = 256
    vcpus: int = 1
    cpu_profile: str = "default"
    gap_policy: str = "emulate"
    workdir: Path = Path(".")
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific section of the guest file
    host_quirks: list[str] = field(default_factory=list)   # of the KVM it runs on (the lab agent probes them)

    @property
    def events_path(self) -> Path:
        return self.workdir / "events.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.workdir / "summary.json"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in _PATH_FIELDS:
            data[key] = None if data[key] is None else str(data[key])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BootRequest":
        data = dict(data)
        for key in _PATH_FIELDS:
            if data.get(key) is not None:
                data[key] = Path(data[key])
        data["workdir"] = Path(data.get("workdir") or ".")
        return super().from_json(data)


_PATH_FIELDS = ("kernel", "initrd", "disk", "workdir")


@dataclass
class SessionSummary(JsonRecord):
    """What a backend knows after the guest stopped, beyond the console and events."""
    exit_code: int | None
    exit_counts: dict[str, int] = field(default_factory=dict)
    flight_recorder: list[dict[str, Any]] = field(default_factory=list)
    host: dict[str, Any] = field(default_factory=dict)        # kvm module, hardware-backed?, qemu version
    command: list[str] = field(default_factory=list)          # the child's argv, for reproducing
    stderr_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
