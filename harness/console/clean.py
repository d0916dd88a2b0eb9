"""Turn a raw serial byte stream into text that milestone patterns can match reliably.

Two things break naive matching on real consoles (LAVA, labgrid and avocado-vt all hit them):
- ANSI escape sequences (colours, cursor moves, terminal queries) inside prompts;
- kernel log lines printed in the middle of a userspace line, e.g.
  ``host log[    5.123] random: crng init done\\nin: `` where getty was printing ``login: ``.

The cleaner is incremental (an escape or a log line may straddle reads) and removes:
- CSI (ESC [ ... final), OSC (ESC ] ... BEL/ST), two-byte ESC sequences, NUL and CR;
- a timestamped Linux printk line ``[ seconds.micros] ... \\n`` that starts mid-line.
A printk line at the start of a line is kept: milestones match those.
"""
from __future__ import annotations

import re

_ESC = 0x1B
_PRINTK_HEAD = re.compile(rb"\[\s*\d+\.\d+\]")
_MAX_HELD = 4096  # never hold back more than this waiting for a sequence to finish


class ConsoleCleaner:
    def __init__(self) -> None:
        self._pending = b""       # bytes not yet decided (a possible escape or printk head)
        self._at_line_start = True
        self._in_printk = False   # dropping an interleaved log line until its newline

    def feed(self, data: bytes) -> bytes:
        buf = self._pending + data
        self._pending = b""
        out = bytearray()
        i, n = 0, len(buf)
        while i < n:
            if self._in_printk:
                j = buf.find(b"\n", i)
                if j < 0:
                    return bytes(out)       # still inside the log line; drop what we have
                self._in_printk = False
                i = j + 1                   # the log line's newline goes with it
                continue
            b = buf[i]
            if b == _ESC:
                end = _escape_end(buf, i)
                if end is None:             # incomplete: wait for more bytes
                    self._hold(buf[i:], out)
                    return bytes(out)
                i = end
                continue
            if b in (0, 0x0D):
                i += 1
                continue
            if b == ord("[") and not self._at_line_start:
                head = _PRINTK_HEAD.match(buf, i)
                if head:
                    self._in_printk = True
                    i = head.end()
                    continue
                if _could_be_printk_head(buf[i:]):
                    self._hold(buf[i:], out)
                    return bytes(out)
            out.append(b)
            self._at_line_start = b == 0x0A
            i += 1
        return bytes(out)

    def _hold(self, tail: bytes, out: bytearray) -> None:
        if len(tail) > _MAX_HELD:       # not an escape after all: let it through
            out.extend(tail)
            self._at_line_start = tail.endswith(b"\n")
        else:
            self._pending = tail

    def flush(self) -> bytes:
        """End of stream: whatever was held back is plain text."""
        rest, self._pending = self._pending, b""
        return rest


def _escape_end(buf: bytes, i: int) -> int | None:
    """Index just past the escape sequence starting at buf[i] (ESC), or None if incomplete."""
    if i + 1 >= len(buf):
        return None
    kind = buf[i + 1]
    if kind == ord("["):                        # CSI: parameters, then a final byte 0x40-0x7E
        for j in range(i + 2, len(buf)):
            if 0x40 <= buf[j] <= 0x7E:
                return j + 1
        return None
    if kind == ord("]"):                        # OSC: ends with BEL or ESC \
        for j in range(i + 2, len(buf)):
            if buf[j] == 0x07:
                return j + 1
            if buf[j] == _ESC and j + 1 < len(buf) and buf[j + 1] == ord("\\"):
                return j + 2
        return None
    if kind in b"()":                           # charset designation: ESC ( B
        return i + 3 if i + 2 < len(buf) else None
    return i + 2                                # ESC c, ESC 7, ESC =, ...


def _could_be_printk_head(tail: bytes) -> bool:
    """True if `tail` (starting with '[') might still grow into '[  12.345678]'."""
    return len(tail) < 24 and re.fullmatch(rb"\[\s*\d*\.?\d*", tail) is not None
