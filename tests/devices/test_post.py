from __future__ import annotations

from harness.devices.post import BootTimer, PostPort
from harness.model.events import BOOT_TIMER, POST_CODE


def test_post_code_event_and_readback(rec) -> None:
    post = PostPort(rec.context())
    assert post.read(0, 1) == 0
    post.write(0, 1, 0x1AB)           # only the byte reaches the port
    post.write(0, 1, 0x42)
    assert [(e.type, e.data) for e in rec.events] == [(POST_CODE, {"value": 0xAB}), (POST_CODE, {"value": 0x42})]
    assert post.read(0, 1) == 0x42
    assert rec.events[0].t <= rec.events[1].t


def test_boot_timer_sizes(rec) -> None:
    timer = BootTimer(rec.context())
    for size, value, expect in ((1, 0x17B, 0x7B), (2, 0x12345, 0x2345), (4, 0x1_2345_6789, 0x2345_6789)):
        timer.write(0, size, value)
        event = rec.events[-1]
        assert event.type == BOOT_TIMER
        assert event.data["value"] == expect and event.data["t"] == event.t
    assert timer.read(0, 4) == 0
    assert [v for v, _ in timer.marks] == [0x7B, 0x2345, 0x2345_6789]
