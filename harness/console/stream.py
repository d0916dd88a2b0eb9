"""The console of a running guest: raw bytes in, a timestamped log and a clean pexpect stream out.

A reader thread drains the backend's console fd as fast as it can (a guest must never block on
a full pipe), and for each chunk:
- appends the raw bytes to console.log and one line {t, mono, raw_offset, clean_offset, n} to
  console.timing.jsonl, so every byte has a host arrival time (t: since the session started;
  mono: CLOCK_MONOTONIC, the clock of events.jsonl);
- feeds them through ConsoleCleaner and writes the clean text into a pipe that a pexpect
  fdspawn reads (harness.console.watcher matches milestones there);
- tracks the time of the last output (the hang detector) and passes chunks to an optional
  live echo (the `harness boot` command streams the console this way).
"""
from __future__ import annotations

import bisect
import json
import os
import re
import select
import threading
import time
from pathlib import Path
from typing import Callable

from harness.console.clean import ConsoleCleaner


class ConsoleStream:
    def __init__(self, source_fd: int, log_path: Path, start_time: float,
                 echo: Callable[[bytes], None] | None = None, banner: str | None = None) -> None:
        self.start_time = start_time
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb", buffering=0)
        self._timing = open(log_path.with_suffix(".timing.jsonl"), "w", buffering=1)
        self._source = source_fd
        self._echo = echo
        self._cleaner = ConsoleCleaner()
        self.clean_read_fd, self._clean_write_fd = os.pipe()
        self.raw_bytes = 0
        self.clean_bytes = 0
        self.last_output = start_time
        self.eof = threading.Event()
        # chunk table for offset -> time lookups (clean end offsets, their times and raw end offsets)
        self._clean_ends: list[int] = []
        self._times: list[float] = []
        self._raw_ends: list[int] = []
        self._lock = threading.Lock()
        self._tail = bytearray()    # last clean bytes, for near-miss reports
        self._detached = False      # set when nobody reads the clean pipe any more
        # Boot banners are counted on complete lines, apart from pexpect's consuming matches,
        # so a banner that is also a milestone still counts (two banners = a reboot loop).
        self._banner = re.compile(banner.encode()) if banner else None
        self._line = bytearray()
        self.banners: list[tuple[float, int, str]] = []   # (t, raw offset, line) of each banner seen
        self._thread = threading.Thread(target=self._pump, name="console-pump", daemon=True)
        self._thread.start()

    # -- the pump ---------------------------------------------------------------------------
    def _pump(self) -> None:
        try:
            while True:
                if self._cleaner.holding() and not self._readable(self._cleaner.hold_s / 2):
                    now = time.monotonic()
                    released = self._cleaner.release_due(now)
                    if released:
                        self._emit_clean(released, now)
                    continue
                try:
                    chunk = os.read(self._source, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                self._take(chunk, time.monotonic())
            rest = self._cleaner.flush()
            if rest:
                self._emit_clean(rest)
        finally:
            self._log.close()
            self._timing.close()
            os.close(self._clean_write_fd)   # pexpect sees EOF
            self.eof.set()

    def _readable(self, timeout: float) -> bool:
        try:
            return bool(select.select([self._source], [], [], timeout)[0])
        except (OSError, ValueError):
            return True        # let os.read report the closed descriptor

    def _take(self, chunk: bytes, now: float) -> None:
        self._log.write(chunk)
        if self._echo:
            self._echo(chunk)
        clean = self._cleaner.feed(chunk, now)
        with self._lock:
            self.raw_bytes += len(chunk)
            self.last_output = now
            self._timing.write(json.dumps({"t": round(now - self.start_time, 6), "mono": round(now, 6),
                                           "raw_offset": self.raw_bytes,
                                           "clean_offset": self.clean_bytes + len(clean), "n": len(chunk)}) + "\n")
        if clean:
            self._emit_clean(clean, now)

    def _emit_clean(self, clean: bytes, now: float | None = None) -> None:
        with self._lock:
            self.clean_bytes += len(clean)
            self._clean_ends.append(self.clean_bytes)
            self._times.append(now if now is not None else time.monotonic())
            self._raw_ends.append(self.raw_bytes)
            self._tail.extend(clean)
            del self._tail[:-16384]
            if self._banner is not None:
                self._scan_banners(clean)
        view = memoryview(clean)
        while view and not self._detached:
            try:
                written = os.write(self._clean_write_fd, view)
            except BlockingIOError:
                return
            view = view[written:]

    def _scan_banners(self, clean: bytes) -> None:
        self._line.extend(clean)
        *complete, rest = bytes(self._line).split(b"\n")
        for line in complete:
            if self._banner.search(line):  # type: ignore[union-attr]
                self.banners.append((self._times[-1] - self.start_time, self.raw_bytes,
                                     line.decode(errors="replace").strip()[:300]))
        self._line = bytearray(rest[-4096:])

    # -- queries ----------------------------------------------------------------------------
    def locate(self, clean_offset: int) -> tuple[float, int]:
        """(seconds since start, raw console.log offset) of the chunk that brought `clean_offset`."""
        with self._lock:
            i = bisect.bisect_left(self._clean_ends, clean_offset)
            if i >= len(self._clean_ends):
                return time.monotonic() - self.start_time, self.raw_bytes
            return self._times[i] - self.start_time, self._raw_ends[i]

    def touch(self, t: float) -> None:
        """Count `t` as the last activity (a guest resumed from a debugger was not silent meanwhile)."""
        with self._lock:
            self.last_output = max(self.last_output, t)

    def silence(self, now: float | None = None) -> float:
        """Seconds since the guest last printed anything."""
        with self._lock:
            return (now or time.monotonic()) - self.last_output

    def last_lines(self, count: int = 20) -> list[str]:
        with self._lock:
            text = bytes(self._tail).decode(errors="replace")
        lines = [l for l in text.split("\n") if l.strip()]
        return lines[-count:]

    def detach(self) -> None:
        """Stop feeding the clean pipe (matching is over); the log keeps recording."""
        self._detached = True
        try:
            os.set_blocking(self._clean_write_fd, False)
        except OSError:
            pass

    def close(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)
