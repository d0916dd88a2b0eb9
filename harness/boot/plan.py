"""BootPlan: what a loader did to guest memory and where the first instruction is."""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.boot.entry import EntryState


@dataclass
class BootPlan:
    entry: EntryState
    # protocol, entry point, kernel version (when found), load range, initrd placement, cmdline...
    info: dict = field(default_factory=dict)
    # (name, guest-physical address, size) of everything the loader wrote, for tests and reports
    regions: list[tuple[str, int, int]] = field(default_factory=list)
