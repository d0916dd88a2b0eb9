"""PL031: a seconds counter that loads, matches and interrupts; ID registers; hostile accesses."""
from __future__ import annotations

import random

from harness.devices.context import DeviceContext
from harness.devices.pl031 import CR, DR, ICR, IMSC, INT_MATCH, LR, MIS, MR, RIS, Pl031

SPI = 2


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _rtc(rec, clock: Clock, wall: float = 1_700_000_000.25) -> Pl031:
    ctx = DeviceContext(set_irq=rec.set_irq, emit=rec.emit, now=clock, gap=rec.gap)
    return Pl031(ctx, SPI, wall_clock=lambda: wall)


def test_counter_starts_at_host_time_and_counts_seconds(rec):
    clock = Clock()
    rtc = _rtc(rec, clock)
    assert rtc.read(DR, 4) == 1_700_000_000
    clock.t += 2.5
    assert rtc.read(DR, 4) == 1_700_000_002
    assert [rtc.read(0xFE0 + 4 * i, 4) for i in range(8)] == [0x31, 0x10, 0x04, 0x00, 0x0D, 0xF0, 0x05, 0xB1]


def test_load_sets_the_counter_and_start_cannot_be_cleared(rec):
    clock = Clock()
    rtc = _rtc(rec, clock)
    rtc.write(LR, 4, 42)
    clock.t += 1
    assert rtc.read(DR, 4) == 43
    rtc.write(CR, 4, 0)
    assert rtc.read(CR, 4) == 1
    rtc.write(DR, 4, 7)                        # read-only
    assert rtc.read(DR, 4) == 43


def test_match_raises_the_spi_when_enabled(rec):
    clock = Clock()
    rtc = _rtc(rec, clock)
    rtc.write(LR, 4, 100)
    rtc.write(MR, 4, 101)
    assert rtc.read(RIS, 4) == 0
    clock.t += 1
    assert rtc.read(RIS, 4) == INT_MATCH and rtc.read(MIS, 4) == 0   # set though masked
    assert rec.level(SPI) == 0
    rtc.write(IMSC, 4, INT_MATCH)
    assert rec.level(SPI) == 1
    rtc.write(ICR, 4, INT_MATCH)
    assert rec.level(SPI) == 0 and rtc.read(RIS, 4) == 0
    rtc.close()


def test_match_fires_from_the_host_timer(rec):
    import time
    rtc = Pl031(rec.context(), SPI)
    rtc.write(IMSC, 4, INT_MATCH)
    rtc.write(MR, 4, (rtc.read(DR, 4) + 1) & 0xFFFFFFFF)
    deadline = time.monotonic() + 3
    while rec.level(SPI) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    rtc.close()
    assert rec.level(SPI) == 1


def test_hostile_accesses_never_raise(rec):
    rtc = _rtc(rec, Clock())
    rng = random.Random(5)
    for _ in range(5000):
        offset = rng.choice((rng.randrange(-8, 0x1010), rng.randrange(0, 0x20), 1 << 40))
        size = rng.choice((0, 1, 2, 4, 8, -1))
        if rng.random() < 0.5:
            assert 0 <= rtc.read(offset, size) < 1 << 32
        else:
            rtc.write(offset, size, rng.getrandbits(64))
    rtc.close()
