"""An ARM PrimeCell PL031 real-time clock (Linux rtc-pl031, NetBSD plrtc on aarch64 `virt`).

Facts followed (PL031 Technical Reference Manual, ARM DDI 0224):
- 32-bit registers in a 4 KiB window: DR 0x000 (read-only: the counter, seconds), MR 0x004 (match
  value), LR 0x008 (load: writing it sets the counter), CR 0x00C (bit 0 RTCStart: once set,
  writing 0 has no effect), IMSC 0x010 (bit 0: match interrupt enabled), RIS 0x014, MIS 0x018
  (RIS & IMSC), ICR 0x01C (write 1 to clear). PeriphID0-3 0xFE0-0xFEC = 0x31, 0x10, 0x04, 0x00
  (part 0x031, designer ARM), PCellID0-3 0xFF0-0xFFC = 0x0D, 0xF0, 0x05, 0xB1: the AMBA bus
  matches the driver by them.
- The counter counts seconds of a 1 Hz clock from the value last loaded; at reset it holds the
  host's UTC time in seconds since 1970, as firmware on a real board would have set it.
- RIS bit 0 is set when the counter reaches MR (whether or not the interrupt is enabled); the
  combined RTCINTR = MIS drives one GIC SPI as a level.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from harness.devices.context import DeviceContext
from harness.devices.mmio32 import in_window, sub_word

DR, MR, LR, CR, IMSC, RIS, MIS, ICR = 0x000, 0x004, 0x008, 0x00C, 0x010, 0x014, 0x018, 0x01C
PERIPH_ID_BASE = 0xFE0
IDS = (0x31, 0x10, 0x04, 0x00, 0x0D, 0xF0, 0x05, 0xB1)   # PeriphID0-3, PCellID0-3
WINDOW = 0x1000
CR_START = 0x1
INT_MATCH = 0x1
U32 = 0xFFFF_FFFF


class Pl031:
    def __init__(self, ctx: DeviceContext, spi: int, wall_clock: Callable[[], float] = time.time) -> None:
        self._ctx = ctx
        self.spi = spi
        self._lock = threading.RLock()
        # counter = (base + seconds elapsed on ctx.now since base_t) mod 2^32
        self._base = int(wall_clock()) & U32
        self._base_t = ctx.now()
        self.mr = 0
        self.cr = CR_START
        self.imsc = 0
        self._ris = 0
        self._matched = False
        self._irq_level = 0
        self._timer: threading.Timer | None = None
        self._closed = False

    def counter(self) -> int:
        return (self._base + int(self._ctx.now() - self._base_t)) & U32

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if not in_window(offset, WINDOW):
                return 0
            reg = offset & ~3
            if reg >= PERIPH_ID_BASE:
                value = IDS[(reg - PERIPH_ID_BASE) // 4]
            else:
                self._check_match()
                value = {DR: self.counter(), MR: self.mr, LR: self.counter(), CR: self.cr,
                         IMSC: self.imsc, RIS: self._ris, MIS: self._ris & self.imsc}.get(reg, 0)
            return sub_word(value, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            if not in_window(offset, WINDOW) or offset & 3:
                return
            value &= U32
            if offset == MR:
                self.mr = value
            elif offset == LR:
                self._base, self._base_t = value, self._ctx.now()
            elif offset == CR:
                self.cr |= value & CR_START        # writing 0 does not stop a started RTC
            elif offset == IMSC:
                self.imsc = value & INT_MATCH
            elif offset == ICR:
                self._ris &= ~(value & INT_MATCH)
            # DR, RIS, MIS and the ID registers are read-only.
            self._check_match()
            self._schedule()
            self._update_irq()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    # --- the match interrupt ----------------------------------------------------------------
    def _check_match(self) -> None:
        """The match is an event (the counter reaching MR), not a level while they are equal:
        once signalled, ICR clears it for good until the counter leaves MR and comes back."""
        if self.counter() != self.mr:
            self._matched = False
        elif not self._matched:
            self._matched = True
            self._ris |= INT_MATCH

    def _schedule(self) -> None:
        """Arm a host timer for the second the counter reaches MR (at most 2^32 s away)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            return
        elapsed = self._ctx.now() - self._base_t
        seconds_away = (self.mr - self.counter()) & U32
        if seconds_away == 0:
            return
        delay = seconds_away - (elapsed % 1.0)
        self._timer = threading.Timer(delay, self._on_timer)
        self._timer.daemon = True
        self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._check_match()
            self._update_irq()

    def _update_irq(self) -> None:
        level = int(bool(self._ris & self.imsc))
        if level != self._irq_level:
            self._irq_level = level
            self._ctx.set_irq(self.spi, level)

    @property
    def irq_level(self) -> int:
        return self._irq_level
