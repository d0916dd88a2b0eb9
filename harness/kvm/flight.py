"""Flight recorder: the last 256 VM exits, dumped with every failure and in the summary.

Entries are stored as bare tuples (cheap on the exit hot path) and expanded to dicts only
when dumped.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

from harness.kvm.ffi import EXIT_NAMES

DEPTH = 256
# Which name the "what" field of an exit gets in the dump, by exit reason name.
_WHAT_NAMES = {"io": "port", "mmio": "addr", "rdmsr": "msr", "wrmsr": "msr"}


class FlightRecorder:
    def __init__(self, depth: int = DEPTH) -> None:
        self.ring: collections.deque[tuple[int, int, int, float, int]] = collections.deque(maxlen=depth)
        self._lock = threading.Lock()

    def record(self, reason: int, what: int, rip: int, t: float, vcpu: int = 0) -> None:
        self.ring.append((reason, what, rip, t, vcpu))

    def dump(self) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self.ring)
        out = []
        for reason, what, rip, t, vcpu in entries:
            name = EXIT_NAMES.get(reason, f"exit-{reason}")
            entry: dict[str, Any] = {"reason": name, "rip": f"{rip:#x}" if rip >= 0 else None, "t": t, "vcpu": vcpu}
            label = _WHAT_NAMES.get(name)
            if label:
                entry[label] = f"{what:#x}"
            out.append(entry)
        return out
