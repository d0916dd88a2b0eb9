"""A Motorola MC146818 real-time clock with its CMOS RAM, at ports 0x70 (index) and 0x71 (data).

Spec facts followed (MC146818A datasheet; OpenBSD/NetBSD mc146818 drivers; QEMU's CMOS layout):
- Port 0x70 selects a register; bit 7 of the index is the PC's NMI mask and is not part of it.
- Registers 0-9: seconds, seconds alarm, minutes, minutes alarm, hours, hours alarm, day of week
  (1 = Sunday), day of month, month, year (two digits). Register 0x32 is the century byte (the ACPI
  FADT default), so it follows the clock too.
- Values are BCD unless REG_B.DM (bit 2) is set. Hours are 24h when REG_B.24h (bit 1) is set;
  otherwise 1-12 with bit 7 = PM. Alarm bytes of 0xC0-0xFF are "don't care".
- REG_A: UIP (bit 7, read-only) is high shortly before each once-a-second update; the model keeps it
  high for the last UIP_WINDOW_US of each second (244 us + the 1984 us update cycle) so a guest
  polling through slow VM exits still sees it. Bits 6-4 divider, bits 3-0 rate select.
- REG_B: SET (bit 7) stops updates so the guest can write the time; setting it clears UIE. PIE,
  AIE, UIE (bits 6-4) enable the periodic, alarm and update-ended interrupts; SQWE, DM, 24h, DSE.
- REG_C: IRQF (bit 7) | PF | AF | UF, all cleared by reading it. Flags are set even when their
  interrupt is disabled; IRQF only when an enabled flag is set. The IRQ line is raised when IRQF goes
  0 -> 1 and drops when C is read; with KVM's ISA pins that is one edge per IRQF rising, so a guest
  that never reads C gets no further interrupts (as on hardware).
- REG_D: VRT (bit 7) always set: battery good. OpenBSD's rtcget() fails otherwise.
- Periodic rate: rate select 1 and 2 give 256 and 128 Hz; 3-15 give 32768 >> (rate - 1) Hz
  (8192 .. 2 Hz); 0 is off. The timer thread caps the rate at `max_hz` (default 1024) because a
  Python thread cannot keep 8 kHz on a shared two-core host.
- Registers 0x0E-0x7F are 114 bytes of battery-backed RAM that read back what was written.
  set_cmos_memory() fills the PC memory-size bytes as firmware does and keeps the AT checksum
  (0x2E/0x2F over 0x10-0x2D) valid; guest writes never touch the checksum, as on hardware.
"""
from __future__ import annotations

import calendar
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from harness import layout
from harness.devices.context import DeviceContext

SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
NVRAM_FIRST, CMOS_SIZE = 0x0E, 0x80
CHECKSUM_FIRST, CHECKSUM_LAST, CHECKSUM_AT = 0x10, 0x2D, 0x2E

A_UIP = 0x80
A_WRITABLE = 0x7F
B_SET, B_PIE, B_AIE, B_UIE, B_SQWE, B_DM, B_24H, B_DSE = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
D_VRT = 0x80

DEFAULT_REG_A = 0x26   # 32.768 kHz time base, 1024 Hz rate select: what firmware leaves behind
DEFAULT_REG_B = B_24H  # 24-hour BCD
UIP_WINDOW_US = 244 + 1984
ALARM_DONT_CARE = 0xC0

TIME_REGS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def periodic_hz(rate: int) -> float:
    """The periodic interrupt frequency a REG_A rate select gives (0: off)."""
    rate &= 0x0F
    if rate == 0:
        return 0.0
    if rate <= 2:
        return 32768.0 / (1 << (rate + 6))   # 256, 128 Hz: the datasheet's special cases
    return 32768.0 / (1 << (rate - 1))


def _to_bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


@dataclass
class ClockFields:
    """Decoded calendar fields: what the time registers hold while SET freezes them."""
    second: int
    minute: int
    hour: int
    dow: int        # 1 = Sunday
    day: int
    month: int
    year: int       # two digits
    century: int

    @classmethod
    def from_datetime(cls, t: datetime) -> "ClockFields":
        return cls(t.second, t.minute, t.hour, t.isoweekday() % 7 + 1, t.day, t.month,
                   t.year % 100, t.year // 100)

    def to_datetime(self, tz: timezone | None) -> datetime:
        """Clamp what the guest wrote into a real date (a guest may write nonsense)."""
        year = max(1, min(9998, self.century * 100 + self.year))   # room to run without overflow
        month = max(1, min(12, self.month))
        day = max(1, min(calendar.monthrange(year, month)[1], self.day))
        return datetime(year, month, day, min(self.hour, 23), min(self.minute, 59),
                        min(self.second, 59), tzinfo=tz)

    def get(self, reg: int) -> int:
        return {SECONDS: self.second, MINUTES: self.minute, HOURS: self.hour,
                DAY_OF_WEEK: self.dow, DAY_OF_MONTH: self.day, MONTH: self.month,
                YEAR: self.year, CENTURY: self.century}[reg]

    def put(self, reg: int, value: int) -> None:
        name = {SECONDS: "second", MINUTES: "minute", HOURS: "hour", DAY_OF_WEEK: "dow",
                DAY_OF_MONTH: "day", MONTH: "month", YEAR: "year", CENTURY: "century"}[reg]
        setattr(self, name, value)


class Rtc:
    access_width = 1

    def __init__(self, ctx: DeviceContext, irq: int = layout.RTC_IRQ,
                 clock: Callable[[], datetime] = _utc_now, max_hz: float = 1024.0) -> None:
        self._ctx = ctx
        self.irq = irq
        self._clock = clock
        self.max_hz = max_hz
        self._cond = threading.Condition(threading.RLock())
        self._index = 0
        self._cmos = bytearray(CMOS_SIZE)
        self._cmos[REG_A] = DEFAULT_REG_A
        self._cmos[REG_B] = DEFAULT_REG_B
        self._reg_c = 0
        self._offset = timedelta(0)
        self._frozen: ClockFields | None = None
        self._last_pf = ctx.now()
        self._last_second = self._now_fields().second
        self._thread: threading.Thread | None = None
        self._closed = False
        self._timer_gen = 0
        self.interrupts = 0   # IRQ edges delivered, for reports and tests

    # --- bus interface -----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset & 1 == 0:
            return 0xFF          # the index port is write-only on PCs
        with self._cond:
            return self._read_reg(self._index)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._cond:
            if offset & 1 == 0:
                self._index = value & 0x7F   # bit 7 is the NMI mask, not an index bit
            else:
                self._write_reg(self._index, value)

    # --- host helpers ------------------------------------------------------------------------
    def set_cmos_memory(self, memory_bytes: int) -> None:
        """Fill the PC memory-size bytes (0x15-0x18, 0x30-0x31, 0x34-0x35, 0x5B-0x5D) like firmware."""
        with self._cond:
            regions = layout.ram_regions(memory_bytes)
            low = regions[0][1]
            high = sum(size for _, size in regions[1:])
            ext_kib = min(max(0, low - layout.HIGH_RAM_START) // 1024, 0xFFFF)
            above_16m = min(max(0, low - 16 * layout.MiB) // (64 * 1024), 0xFFFF)
            above_4g = min(high // (64 * 1024), 0xFFFFFF)
            self._put16(0x15, 640)
            self._put16(0x17, ext_kib)
            self._put16(0x30, ext_kib)
            self._put16(0x34, above_16m)
            for i in range(3):
                self._cmos[0x5B + i] = (above_4g >> (8 * i)) & 0xFF
            self._update_checksum()

    def _update_checksum(self) -> None:
        """The AT checksum: sum of 0x10-0x2D, big-endian at 0x2E/0x2F (NetBSD's cmoscheck reads it)."""
        total = sum(self._cmos[CHECKSUM_FIRST:CHECKSUM_LAST + 1]) & 0xFFFF
        self._cmos[CHECKSUM_AT] = total >> 8
        self._cmos[CHECKSUM_AT + 1] = total & 0xFF

    def _put16(self, index: int, value: int) -> None:
        self._cmos[index] = value & 0xFF
        self._cmos[index + 1] = (value >> 8) & 0xFF

    def guest_time(self) -> datetime:
        """The time the guest sees (host clock plus whatever offset the guest set)."""
        with self._cond:
            if self._frozen is not None:
                return self._frozen.to_datetime(self._tz())
            return self._clock() + self._offset

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=2)

    # --- registers ---------------------------------------------------------------------------
    def _read_reg(self, reg: int) -> int:
        if reg in TIME_REGS:
            return self._encode(reg, self._fields().get(reg))
        if reg == REG_A:
            return self._cmos[REG_A] | (A_UIP if self._in_update_window() else 0)
        if reg == REG_C:
            return self._read_reg_c()
        if reg == REG_D:
            return D_VRT
        return self._cmos[reg]       # alarms, REG_B, NVRAM

    def _write_reg(self, reg: int, value: int) -> None:
        if reg in TIME_REGS:
            self._write_time(reg, value)
        elif reg == REG_A:
            self._cmos[REG_A] = value & A_WRITABLE
            self._reconfigure()
        elif reg == REG_B:
            self._write_reg_b(value)
        elif reg in (REG_C, REG_D):
            pass                     # read-only
        else:
            self._cmos[reg] = value

    def _write_reg_b(self, value: int) -> None:
        old = self._cmos[REG_B]
        if value & B_SET:
            value &= ~B_UIE          # the datasheet: SET clears UIE
            if not old & B_SET:
                self._frozen = self._now_fields()
        elif old & B_SET and self._frozen is not None:
            self._offset = self._frozen.to_datetime(self._tz()) - self._clock()
            self._frozen = None
            self._last_second = self._now_fields().second
        self._cmos[REG_B] = value
        self._reconfigure()

    def _write_time(self, reg: int, value: int) -> None:
        decoded = self._decode(reg, value)
        if self._frozen is not None:
            self._frozen.put(reg, decoded)
            return
        fields = self._now_fields()
        fields.put(reg, decoded)
        self._offset = fields.to_datetime(self._tz()) - self._clock().replace(microsecond=0)

    def _read_reg_c(self) -> int:
        self._lazy_flags()
        value = self._reg_c
        if value & (C_PF | C_AF | C_UF) & self._enabled_flags():
            value |= C_IRQF
        self._reg_c = 0
        self._last_pf = self._ctx.now()
        return value

    # --- time encoding -----------------------------------------------------------------------
    def _tz(self) -> timezone | None:
        return self._clock().tzinfo  # type: ignore[return-value]

    def _now_fields(self) -> ClockFields:
        return ClockFields.from_datetime(self._clock() + self._offset)

    def _fields(self) -> ClockFields:
        return self._frozen if self._frozen is not None else self._now_fields()

    def _binary(self) -> bool:
        return bool(self._cmos[REG_B] & B_DM)

    def _encode(self, reg: int, value: int) -> int:
        pm = 0
        if reg == HOURS and not self._cmos[REG_B] & B_24H:
            pm = 0x80 if value >= 12 else 0
            value = value % 12 or 12
        return (value if self._binary() else _to_bcd(value)) | pm

    def _decode(self, reg: int, raw: int) -> int:
        pm = False
        if reg == HOURS and not self._cmos[REG_B] & B_24H:
            pm, raw = bool(raw & 0x80), raw & 0x7F
        value = raw if self._binary() else _from_bcd(raw)
        if reg == HOURS and not self._cmos[REG_B] & B_24H:
            value = value % 12 + (12 if pm else 0)
        return value

    def _in_update_window(self) -> bool:
        if self._frozen is not None:
            return False
        return (self._clock() + self._offset).microsecond >= 1_000_000 - UIP_WINDOW_US

    # --- flags and interrupts ----------------------------------------------------------------
    def _enabled_flags(self) -> int:
        b = self._cmos[REG_B]
        return ((C_PF if b & B_PIE else 0) | (C_AF if b & B_AIE else 0)
                | (C_UF if b & B_UIE else 0))

    def _period(self) -> float:
        hz = periodic_hz(self._cmos[REG_A])
        return 1.0 / min(hz, self.max_hz) if hz else 0.0

    def _lazy_flags(self) -> None:
        """Flags a polling guest expects without interrupts: PF at the rate, UF/AF each second."""
        period = self._period()
        if period and self._ctx.now() - self._last_pf >= period:
            self._reg_c |= C_PF
        self._check_update()

    def _check_update(self) -> None:
        if self._frozen is not None:
            return
        fields = self._now_fields()
        if fields.second == self._last_second:
            return
        self._last_second = fields.second
        self._reg_c |= C_UF
        if self._alarm_matches(fields):
            self._reg_c |= C_AF

    def _alarm_matches(self, fields: ClockFields) -> bool:
        for alarm_reg, reg in ((SECONDS_ALARM, SECONDS), (MINUTES_ALARM, MINUTES), (HOURS_ALARM, HOURS)):
            alarm = self._cmos[alarm_reg]
            if alarm & ALARM_DONT_CARE == ALARM_DONT_CARE:
                continue
            if alarm != self._encode(reg, fields.get(reg)):
                return False
        return True

    def _raise_if_needed(self, irqf_before: bool) -> None:
        if not irqf_before and self._reg_c & self._enabled_flags():
            self.interrupts += 1
            self._ctx.pulse_irq(self.irq)

    # --- timer thread ------------------------------------------------------------------------
    def _reconfigure(self) -> None:
        """REG_A or REG_B changed: start the timer when an interrupt needs it, or retime it."""
        self._timer_gen += 1
        needs_timer = bool(self._enabled_flags() & (C_UF | C_AF)) or bool(
            self._cmos[REG_B] & B_PIE and self._period())
        if needs_timer and self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._timer_loop, name="rtc-timer", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _timer_loop(self) -> None:
        with self._cond:
            gen, next_pf = -1, 0.0
            while not self._closed:
                period = self._period() if self._cmos[REG_B] & B_PIE else 0.0
                want_update = bool(self._enabled_flags() & (C_UF | C_AF)) and self._frozen is None
                if gen != self._timer_gen:
                    gen, next_pf = self._timer_gen, self._ctx.now() + period
                if not period and not want_update:
                    self._cond.wait()
                    continue
                self._cond.wait(self._next_timeout(period, next_pf, want_update))
                if self._closed or gen != self._timer_gen:
                    continue
                next_pf = self._tick(period, next_pf, want_update)

    def _next_timeout(self, period: float, next_pf: float, want_update: bool) -> float:
        waits = []
        if period:
            waits.append(next_pf - self._ctx.now())
        if want_update:
            waits.append(1.0 - (self._clock() + self._offset).microsecond / 1e6 + 0.0005)
        return max(0.0, min(waits))

    def _tick(self, period: float, next_pf: float, want_update: bool) -> float:
        irqf_before = bool(self._reg_c & self._enabled_flags())
        now = self._ctx.now()
        if period and now >= next_pf:
            self._reg_c |= C_PF
            next_pf += period
            if next_pf < now:            # fell behind: hardware does not queue missed ticks
                next_pf = now + period
        if want_update:
            self._check_update()
        self._raise_if_needed(irqf_before)
        return next_pf
