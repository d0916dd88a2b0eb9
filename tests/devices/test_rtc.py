from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from harness import layout
from harness.devices.rtc import Rtc, periodic_hz

T0 = datetime(2026, 11, 21, 15, 4, 5, 250_000, tzinfo=timezone.utc)   # a Saturday


class FakeClock:
    def __init__(self, t: datetime = T0) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rtc(rec, clock):
    device = Rtc(rec.context(), clock=clock)
    yield device
    device.close()


def rd(rtc: Rtc, reg: int) -> int:
    rtc.write(0, 1, reg)
    return rtc.read(1, 1)


def wr(rtc: Rtc, reg: int, value: int) -> None:
    rtc.write(0, 1, reg)
    rtc.write(1, 1, value)


def test_bcd_24h_default(rtc: Rtc) -> None:
    got = [rd(rtc, r) for r in (0, 2, 4, 6, 7, 8, 9, 0x32)]
    assert got == [0x05, 0x04, 0x15, 0x07, 0x21, 0x11, 0x26, 0x20]   # Saturday = 7


def test_binary_mode(rtc: Rtc) -> None:
    wr(rtc, 0x0B, 0x06)               # DM | 24h
    assert [rd(rtc, r) for r in (0, 2, 4, 7, 8, 9)] == [5, 4, 15, 21, 11, 26]


@pytest.mark.parametrize("hour,bcd,binary", [(0, 0x12, 12), (1, 0x01, 1), (12, 0x92, 0x8C),
                                             (15, 0x83, 0x83), (23, 0x91, 0x8B)])
def test_12h_mode(rtc: Rtc, clock: FakeClock, hour: int, bcd: int, binary: int) -> None:
    clock.t = T0.replace(hour=hour)
    wr(rtc, 0x0B, 0x00)
    assert rd(rtc, 4) == bcd
    wr(rtc, 0x0B, 0x04)
    assert rd(rtc, 4) == binary


def test_nmi_bit_masked_off_index(rtc: Rtc) -> None:
    rtc.write(0, 1, 0x80 | 0x0D)
    assert rtc.read(1, 1) == 0x80
    assert rtc.read(0, 1) == 0xFF     # the index port is write-only


def test_reg_d_vrt_always_set(rtc: Rtc) -> None:
    wr(rtc, 0x0D, 0x00)
    assert rd(rtc, 0x0D) == 0x80


def test_nvram_round_trips(rtc: Rtc) -> None:
    regs = [r for r in range(0x0E, 0x80) if r != 0x32]
    for r in regs:
        wr(rtc, r, (r * 7 + 3) & 0xFF)
    assert len(regs) + 1 == 114
    assert all(rd(rtc, r) == (r * 7 + 3) & 0xFF for r in regs)


def test_alarm_registers_round_trip(rtc: Rtc) -> None:
    for reg, value in ((1, 0x30), (3, 0xC0), (5, 0x23)):
        wr(rtc, reg, value)
        assert rd(rtc, reg) == value


def test_reg_a_rate_and_uip(rtc: Rtc, clock: FakeClock) -> None:
    assert rd(rtc, 0x0A) == 0x26
    wr(rtc, 0x0A, 0xAF)               # UIP is read-only
    assert rd(rtc, 0x0A) == 0x2F
    clock.t = T0.replace(microsecond=999_000)
    assert rd(rtc, 0x0A) & 0x80
    clock.t = T0.replace(microsecond=10_000)
    assert not rd(rtc, 0x0A) & 0x80


def test_set_freezes_and_guest_time_reads_back(rtc: Rtc, clock: FakeClock) -> None:
    wr(rtc, 0x0B, 0x82)               # SET | 24h
    for reg, value in ((0, 0x00), (2, 0x30), (4, 0x08), (7, 0x30), (8, 0x04), (9, 0x99), (0x32, 0x19)):
        wr(rtc, reg, value)
    clock.t += timedelta(seconds=10)  # frozen: the guest's values stay
    assert rd(rtc, 0) == 0x00 and rd(rtc, 7) == 0x30
    wr(rtc, 0x0B, 0x02)               # release: the clock runs from what was set
    clock.t += timedelta(seconds=3)
    assert rtc.guest_time().replace(tzinfo=None) == datetime(1999, 4, 30, 8, 30, 3)
    assert [rd(rtc, r) for r in (0, 2, 4, 7, 8, 9, 0x32)] == [0x03, 0x30, 0x08, 0x30, 0x04, 0x99, 0x19]
    assert rd(rtc, 6) == 0x06         # 1999-04-30 was a Friday


def test_write_without_set_moves_the_clock(rtc: Rtc) -> None:
    wr(rtc, 2, 0x59)
    assert rd(rtc, 2) == 0x59 and rd(rtc, 4) == 0x15


def test_set_clears_uie(rtc: Rtc) -> None:
    wr(rtc, 0x0B, 0x12)
    wr(rtc, 0x0B, 0x92)
    assert rd(rtc, 0x0B) == 0x82


def test_reg_c_update_flag_cleared_on_read(rtc: Rtc, clock: FakeClock) -> None:
    assert rd(rtc, 0x0C) & 0x10 == 0
    clock.t += timedelta(seconds=1)
    assert rd(rtc, 0x0C) & 0x10       # UF set although UIE is off; IRQF is not
    assert rd(rtc, 0x0C) == 0


def test_alarm_flag(rtc: Rtc, clock: FakeClock) -> None:
    wr(rtc, 1, 0x06)
    wr(rtc, 3, 0xC0)                  # any minute
    wr(rtc, 5, 0xC0)                  # any hour
    rd(rtc, 0x0C)
    clock.t += timedelta(seconds=1)
    assert rd(rtc, 0x0C) & 0x30 == 0x30   # AF | UF


def test_periodic_flag_polled_without_interrupt(rtc: Rtc) -> None:
    wr(rtc, 0x0A, 0x2F)               # 2 Hz
    rd(rtc, 0x0C)
    assert rd(rtc, 0x0C) & 0x40 == 0
    time.sleep(0.55)
    assert rd(rtc, 0x0C) & 0xC0 == 0x40   # PF without IRQF: PIE is off


def test_periodic_rates() -> None:
    assert periodic_hz(0) == 0
    assert periodic_hz(1) == 256 and periodic_hz(2) == 128
    assert periodic_hz(3) == 8192 and periodic_hz(6) == 1024 and periodic_hz(15) == 2


def test_periodic_interrupt_rate(rec, clock: FakeClock) -> None:
    rtc = Rtc(rec.context(), clock=clock)
    try:
        wr(rtc, 0x0A, 0x2A)           # rate 10: 64 Hz
        rd(rtc, 0x0C)
        wr(rtc, 0x0B, 0x42)           # PIE
        start = time.monotonic()
        edges = 0
        while time.monotonic() - start < 0.5:
            c = rd(rtc, 0x0C)         # the guest's handler: read C to re-arm
            assert c in (0, 0xC0)
            time.sleep(0.002)
        edges = rec.rising_edges(layout.RTC_IRQ)
        assert 24 <= edges <= 36, edges   # 32 expected in 0.5 s
        assert rec.irqs[:2] == [(8, 1), (8, 0)]   # an edge: raise then lower
        wr(rtc, 0x0B, 0x02)
        time.sleep(0.05)
        settled = rec.rising_edges(layout.RTC_IRQ)
        time.sleep(0.1)
        assert rec.rising_edges(layout.RTC_IRQ) == settled
    finally:
        rtc.close()


def test_no_new_edge_until_c_is_read(rec, clock: FakeClock) -> None:
    rtc = Rtc(rec.context(), clock=clock)
    try:
        wr(rtc, 0x0A, 0x27)           # 512 Hz
        wr(rtc, 0x0B, 0x42)
        time.sleep(0.1)
        assert rec.rising_edges(layout.RTC_IRQ) == 1
        assert rd(rtc, 0x0C) == 0xC0
        time.sleep(0.05)
        assert rec.rising_edges(layout.RTC_IRQ) == 2
    finally:
        rtc.close()


def test_rate_capped(rec, clock: FakeClock) -> None:
    rtc = Rtc(rec.context(), clock=clock, max_hz=100)
    try:
        wr(rtc, 0x0A, 0x23)           # 8192 Hz asked
        wr(rtc, 0x0B, 0x42)
        start = time.monotonic()
        while time.monotonic() - start < 0.3:
            rd(rtc, 0x0C)
            time.sleep(0.001)
        assert rec.rising_edges(layout.RTC_IRQ) <= 36
    finally:
        rtc.close()


def test_update_interrupt(rec) -> None:
    rtc = Rtc(rec.context())          # the real clock: one update per second
    try:
        wr(rtc, 0x0B, 0x12)           # UIE | 24h
        time.sleep(1.1)
        assert rec.rising_edges(layout.RTC_IRQ) >= 1
        assert rd(rtc, 0x0C) & 0x90 == 0x90
    finally:
        rtc.close()


def test_cmos_memory_bytes(rtc: Rtc) -> None:
    rtc.set_cmos_memory(4 * layout.GiB)
    assert rd(rtc, 0x15) | rd(rtc, 0x16) << 8 == 640
    assert rd(rtc, 0x17) | rd(rtc, 0x18) << 8 == 0xFFFF
    assert rd(rtc, 0x34) | rd(rtc, 0x35) << 8 == (0xC000_0000 - 16 * layout.MiB) // 65536
    assert rd(rtc, 0x5B) | rd(rtc, 0x5C) << 8 | rd(rtc, 0x5D) << 16 == layout.GiB // 65536
    # NetBSD cmoscheck(): the sum of 0x10-0x2D equals the big-endian word at 0x2E.
    assert sum(rd(rtc, r) for r in range(0x10, 0x2E)) == rd(rtc, 0x2E) << 8 | rd(rtc, 0x2F)


def test_close_stops_thread(rec, clock: FakeClock) -> None:
    rtc = Rtc(rec.context(), clock=clock)
    wr(rtc, 0x0B, 0x42)
    assert rtc._thread is not None and rtc._thread.is_alive()
    rtc.close()
    assert not rtc._thread.is_alive()
