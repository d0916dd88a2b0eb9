"""Guest console output from the VMM child in batches instead of one write per guest byte.

A PL011 console is one MMIO exit per byte, and each byte the child wrote to its stdout was a pipe
write; in a lab every such write also wakes the lab's agent, which relays it over a virtio-serial
port (a queue kick into QEMU). Under TCG that relay cost as much as the exits themselves (measured
in the aarch64 lab: halving the exits with coalesced MMIO sped the console up by only 15%), and
Linux's synchronous console at ~300 bytes/s kept PID 1 busy long enough for the soft-lockup
watchdog. Batching costs at most `delay_s` of latency per byte (milestones are timed when the
runner reads them) and turns a byte stream into a few writes per `delay_s`.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

FLUSH_DELAY_S = 0.01       # a byte waits at most this long
FLUSH_LIMIT = 4096         # or until this many are waiting


class BatchedOutput:
    """write() from any thread (vCPUs, the coalesced-ring drainer); bytes leave in order."""

    def __init__(self, sink: Callable[[bytes], None], delay_s: float = FLUSH_DELAY_S,
                 limit: int = FLUSH_LIMIT) -> None:
        self._sink = sink
        self._delay, self._limit = delay_s, limit
        self._buf = bytearray()
        self._lock = threading.Lock()          # guards _buf
        self._out_lock = threading.Lock()      # one flush at a time keeps the order
        self._pending = threading.Event()
        self._closed = False
        threading.Thread(target=self._flusher, name="console-flush", daemon=True).start()

    def write(self, data: bytes) -> None:
        with self._lock:
            first = not self._buf
            self._buf += data
            full = len(self._buf) >= self._limit
        if full or self._closed:
            self.flush()
        elif first:
            self._pending.set()

    def flush(self) -> None:
        with self._out_lock:
            with self._lock:
                data = bytes(self._buf)
                self._buf.clear()
            if data:
                self._sink(data)

    def close(self) -> None:
        """Flush what is left; later writes go out at once (the VM is stopping)."""
        self._closed = True
        self._pending.set()
        self.flush()

    def _flusher(self) -> None:
        while True:
            self._pending.wait()
            if self._closed:
                return
            self._pending.clear()
            time.sleep(self._delay)
            self.flush()
