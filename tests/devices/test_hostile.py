"""A guest is hostile: random accesses to every claimed port must never raise or return junk."""
from __future__ import annotations

import random

from harness import layout
from harness.devices import build_x86_devices


def test_random_accesses_never_raise(rec) -> None:
    devs = build_x86_devices(rec.context(), lambda b: None, second_uart=True)
    ports = [r.base + i for r in devs.io_bus.ranges() for i in range(r.length)]
    rng = random.Random(1234)
    try:
        for _ in range(20000):
            port = rng.choice(ports)
            size = rng.choice((1, 2, 4))
            if rng.random() < 0.5:
                value = devs.io_bus.read(port, size)
                assert value is not None and 0 <= value < 1 << (8 * size), (hex(port), size, value)
            else:
                # Bias the RTC index toward the time registers so garbage time values get written.
                value = rng.getrandbits(8 * size)
                if port == layout.RTC_PORT and rng.random() < 0.5:
                    value = rng.choice((0, 2, 4, 6, 7, 8, 9, 0x0B, 0x32))
                assert devs.io_bus.write(port, size, value)
        devs.rtc.guest_time()          # still a valid date after garbage writes
    finally:
        devs.close()
