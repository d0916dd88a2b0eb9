"""Collects GapRecords from every vCPU: dedupe by key, report each new gap once, at once.

The child process emits a GAP event on the first occurrence of a key (so the runner sees the
gap with a timestamp near the console line that caused it) and writes merged counts into the
summary at the end.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from harness.model.gap import GapRecord


class GapSink:
    def __init__(self, on_new: Callable[[GapRecord], None] | None = None) -> None:
        self._on_new = on_new
        self._records: dict[tuple[str, str, str], GapRecord] = {}
        self._lock = threading.Lock()

    def record(self, gap: GapRecord) -> bool:
        """Fold `gap` in; True when its key is new (and was reported)."""
        if gap.first_t is None:
            gap.first_t = time.monotonic()
        key = gap.key_tuple()
        with self._lock:
            seen = self._records.get(key)
            if seen is not None:
                seen.merge(gap)
                return False
            self._records[key] = gap
        if self._on_new is not None:
            self._on_new(gap.copy())  # a copy: later merges must not race the writer
        return True

    def seen(self, kind: str, key: str, access: str = "") -> bool:
        return (kind, key, access) in self._records

    def records(self) -> list[GapRecord]:
        with self._lock:
            return [g.copy() for g in self._records.values()]

    def __len__(self) -> int:
        return len(self._records)
