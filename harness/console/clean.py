"""Turn a raw serial byte stream into text that milestone patterns can match reliably.

Two things break naive matching on real consoles (LAVA, labgrid and avocado-vt all hit them):
- ANSI escape sequences (colours, cursor moves, terminal queries) inside prompts;
- kernel log lines printed in the middle of a userspace line, e.g.
  ``host log[    5.123] random: crng init done\\nin: `` where getty was printing ``login: ``.

The cleaner is incremental (an escape or a log line may straddle reads) and:
- removes CSI (ESC [ ... final), OSC (ESC ] ... BEL/ST), two-byte ESC sequences, NUL and CR;
  a terminal reset or clear-screen (ESC c, ESC [2J, ESC [H) counts as the start of a new line;
- moves a timestamped Linux printk line ``[ seconds.micros] ... \\n`` that starts mid-line out of
  the line it interrupted: the interrupted line is joined back together, and the log line is
  emitted on its own right after it, so milestones can still match it. Nothing is lost.

Nothing is held back for long: a prompt line that never ends (``login: [ 55.28] BUG: ...``)
would otherwise keep every later kernel line from the watcher. Held log lines and undecided
bytes are released after HOLD_S seconds (`release_due`, called on every feed and by the stream
while the guest is silent); the interrupted line is then cut with a newline.
"""
from __future__ import annotations

import re
import time

_ESC = 0x1B
_PRINTK_HEAD = re.compile(rb"\[\s*\d+\.\d+\]")
_MAX_HELD = 4096  # never hold back more than this waiting for a sequence to finish
HOLD_S = 0.25     # ... nor for longer than this
_SCREEN_RESETS = {b"\x1bc", b"\x1b[2J", b"\x1b[H", b"\x1b[1;1H", b"\x1b[01;01H"}


class ConsoleCleaner:
    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        self._held_since: float | None = None   # when the oldest held line or byte was held
        self._pending = b""       # bytes not yet decided (a possible escape or printk head)
        self._at_line_start = True
        self._in_printk = False   # inside an interleaved log line until its newline
        self._moved = bytearray()  # interleaved log lines, emitted after the interrupted line ends

    def feed(self, data: bytes, now: float | None = None) -> bytes:
        now = time.monotonic() if now is None else now
        out = self._feed(data)
        if not self.holding():
            self._held_since = None
        elif self._held_since is None:
            self._held_since = now
        return out + self.release_due(now)

    def holding(self) -> bool:
        """Text is held back (a lone CR waiting for its LF holds no text: it is not counted)."""
        return bool((self._pending and self._pending != b"\r") or (self._moved and not self._in_printk))

    def release_due(self, now: float) -> bytes:
        """What has been held back longer than the bound, as text (the interrupted line is cut)."""
        if self._held_since is None or now - self._held_since < self.hold_s:
            return b""
        out = bytearray()
        if self._moved and not self._in_printk:
            out.append(0x0A)
            out.extend(self._moved)
            self._moved.clear()
            self._at_line_start = True
        if self._pending and self._pending != b"\r" and not self._in_printk:
            out.extend(self._pending)
            self._at_line_start = self._pending.endswith(b"\n")
            self._pending = b""
        self._held_since = now if self.holding() else None
        return bytes(out)

    def _feed(self, data: bytes) -> bytes:
        buf = self._pending + data
        self._pending = b""
        out = bytearray()
        i, n = 0, len(buf)
        while i < n:
            if self._in_printk:
                j = buf.find(b"\n", i)
                if j < 0:
                    self._moved.extend(_strip_cr(buf[i:]))   # still inside the log line
                    return bytes(out)
                self._in_printk = False
                self._moved.extend(_strip_cr(buf[i:j + 1]))
                i = j + 1
                continue
            b = buf[i]
            if b == _ESC:
                end = _escape_end(buf, i)
                if end is None:             # incomplete: wait for more bytes
                    self._hold(buf[i:], out)
                    return bytes(out)
                if buf[i:end] in _SCREEN_RESETS and not self._at_line_start:
                    out.append(0x0A)        # the screen starts over: so does the line
                    self._end_of_line(out)
                i = end
                continue
            if b == 0x0D and i + 1 == n:
                self._pending = buf[i:]     # CR LF or a bare CR? the next byte says
                return bytes(out)
            if b == 0x0D and buf[i + 1] != 0x0A:
                # A bare carriage return puts the cursor at column 0: what follows starts a line
                # (SeaBIOS's "ok" then the kernel's "\r[    0.000000] Linux version ..." is not a
                # log line interrupting "k": treating it so held the whole boot log back).
                self._at_line_start = True
                i += 1
                continue
            if b in (0, 0x0D):
                i += 1
                continue
            if b == ord("[") and not self._at_line_start:
                head = _PRINTK_HEAD.match(buf, i)
                if head:
                    self._in_printk = True
                    self._moved.extend(buf[i:head.end()])
                    i = head.end()
                    continue
                if _could_be_printk_head(buf[i:]):
                    self._hold(buf[i:], out)
                    return bytes(out)
            out.append(b)
            self._at_line_start = b == 0x0A
            if b == 0x0A:
                self._end_of_line(out)
            i += 1
        return bytes(out)

    def _end_of_line(self, out: bytearray) -> None:
        """The interrupted line is complete: now the log lines that interrupted it."""
        if self._moved and not self._in_printk:
            out.extend(self._moved)
            self._moved.clear()
        self._at_line_start = True

    def _hold(self, tail: bytes, out: bytearray) -> None:
        if len(tail) > _MAX_HELD:       # not an escape after all: let it through
            out.extend(tail)
            self._at_line_start = tail.endswith(b"\n")
        else:
            self._pending = tail

    def flush(self) -> bytes:
        """End of stream: whatever was held back is plain text."""
        rest, self._pending = _strip_cr(self._pending), b""
        moved, self._moved = bytes(self._moved), bytearray()
        self._held_since = None
        return rest + (b"\n" + moved if moved else b"")


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


def _strip_cr(data: bytes) -> bytes:
    return data.replace(b"\r", b"").replace(b"\x00", b"")


def strip_escapes(data: bytes) -> bytes:
    """A whole console's bytes without its terminal escape sequences (the same sequences the
    cleaner removes; an unfinished one at the very end is dropped). For showing a recorded console
    as text: unlike ConsoleCleaner, lines stay where the guest printed them."""
    out = bytearray()
    i = 0
    while i < len(data):
        j = data.find(b"\x1b", i)
        if j < 0:
            out += data[i:]
            break
        out += data[i:j]
        end = _escape_end(data, j)
        if end is None:
            break
        i = end
    return bytes(out)
