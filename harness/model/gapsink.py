"""Collects a backend's GapRecords (from every vCPU thread, or QEMU's log): deduplicate by key
with GapRecord.merge, report each new gap once, at once.

A backend emits a GAP event on the first occurrence of a key (so the runner sees the gap with a
timestamp near the console line that caused it), may send the repeats counted since (QEMU does,
every poll), and writes the merged records into its summary at the end.
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
        self._reported: dict[tuple[str, str, str], int] = {}    # count already sent, per key
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
            self._reported[key] = gap.count
            first = gap.copy()     # a copy: later merges must not race the writer
        if self._on_new is not None:
            self._on_new(first)
        return True

    def unsent_repeats(self) -> list[GapRecord]:
        """For each gap seen again since it was last reported: a record counting just those repeats."""
        out = []
        with self._lock:
            for key, rec in self._records.items():
                unsent = rec.count - self._reported[key]
                if unsent > 0:
                    repeat = rec.copy()
                    repeat.count, repeat.values = unsent, []
                    out.append(repeat)
                    self._reported[key] = rec.count
        return out

    def seen(self, kind: str, key: str, access: str = "") -> bool:
        return (kind, key, access) in self._records

    def records(self) -> list[GapRecord]:
        with self._lock:
            return [g.copy() for g in self._records.values()]

    def __len__(self) -> int:
        return len(self._records)
