"""The VMM child's batched console: bytes from several threads leave in order, in few writes,
within the flush delay, and nothing is lost at close."""
from __future__ import annotations

import threading
import time

from harness.backends.console_batch import BatchedOutput


def test_bytes_leave_in_order_in_few_writes_within_the_delay():
    chunks: list[bytes] = []
    out = BatchedOutput(chunks.append, delay_s=0.05)
    t0 = time.monotonic()
    for b in b"hello, console":
        out.write(bytes([b]))
    assert chunks == []                         # nothing yet: waiting for the delay
    while not chunks and time.monotonic() - t0 < 2:
        time.sleep(0.005)
    assert b"".join(chunks) == b"hello, console" and len(chunks) <= 2
    assert time.monotonic() - t0 < 1.0
    out.close()


def test_a_full_buffer_goes_out_at_once_and_close_flushes_the_rest():
    chunks: list[bytes] = []
    out = BatchedOutput(chunks.append, delay_s=60, limit=8)
    out.write(b"12345678")
    assert chunks == [b"12345678"]
    out.write(b"tail")
    out.close()
    assert chunks == [b"12345678", b"tail"]
    out.write(b"!")                              # after close: straight through
    assert chunks[-1] == b"!"


def test_concurrent_writers_lose_and_reorder_nothing_per_writer():
    chunks: list[bytes] = []
    out = BatchedOutput(chunks.append, delay_s=0.001, limit=64)

    def writer(tag: bytes) -> None:
        for i in range(500):
            out.write(tag + bytes([i % 256]))

    threads = [threading.Thread(target=writer, args=(t,)) for t in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    data = b"".join(chunks)
    assert len(data) == 2000
    for tag in b"ab":
        seq = [data[i + 1] for i in range(0, len(data), 2) if data[i] == tag]
        assert seq == [i % 256 for i in range(500)]
