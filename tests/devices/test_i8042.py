from __future__ import annotations

from harness import layout
from harness.devices.bus import Bus
from harness.devices.i8042 import POLL_REPORT_EVERY, I8042
from harness.model.events import RESET
from harness.model.gap import I8042_WAIT

DATA, CMD = layout.I8042_DATA_PORT, layout.I8042_CMD_PORT


def make(rec) -> tuple[I8042, Bus]:
    dev, bus = I8042(rec.context()), Bus("io")
    bus.register(DATA, 1, dev.data_port, "i8042-data")
    bus.register(CMD, 1, dev.command_port, "i8042-cmd")
    return dev, bus


def test_ports_between_are_not_claimed(rec) -> None:
    _, bus = make(rec)
    assert bus.read(0x61, 1) is None and bus.read(0x62, 1) is None


def test_status_empty_then_obf(rec) -> None:
    _, bus = make(rec)
    status = bus.read(CMD, 1)
    assert status & 0x03 == 0 and status & 0x04     # no OBF, IBF never, SYS set
    bus.write(CMD, 1, 0xAA)
    status = bus.read(CMD, 1)
    assert status & 0x01 and status & 0x08           # OBF, last write was a command
    assert bus.read(DATA, 1) == 0x55
    assert bus.read(CMD, 1) & 0x01 == 0


def test_self_and_interface_tests(rec) -> None:
    _, bus = make(rec)
    for cmd, answer in ((0xAA, 0x55), (0xAB, 0x00), (0xA9, 0x00)):
        bus.write(CMD, 1, cmd)
        assert bus.read(DATA, 1) == answer


def test_empty_data_read_returns_last_value(rec) -> None:
    _, bus = make(rec)
    bus.write(CMD, 1, 0xAA)
    assert bus.read(DATA, 1) == 0x55
    assert bus.read(DATA, 1) == 0x55


def test_command_byte_read_write(rec) -> None:
    dev, bus = make(rec)
    bus.write(CMD, 1, 0x20)
    assert bus.read(DATA, 1) == 0x45
    bus.write(CMD, 1, 0x60)
    bus.write(DATA, 1, 0x74)
    bus.write(CMD, 1, 0x20)
    assert bus.read(DATA, 1) == 0x74
    assert dev.command_byte == 0x74


def test_enable_disable_commands_flip_command_byte(rec) -> None:
    dev, bus = make(rec)
    bus.write(CMD, 1, 0xAD)
    bus.write(CMD, 1, 0xA7)
    assert dev.command_byte & 0x30 == 0x30
    bus.write(CMD, 1, 0xAE)
    assert dev.command_byte & 0x30 == 0x20
    bus.write(CMD, 1, 0xA8)
    assert dev.command_byte & 0x30 == 0x00


def test_output_port_and_reset_via_d1(rec) -> None:
    dev, bus = make(rec)
    bus.write(CMD, 1, 0xD1)
    bus.write(DATA, 1, 0xDF)          # A20 on, not reset
    assert rec.events == []
    bus.write(CMD, 1, 0xD0)
    assert bus.read(DATA, 1) == 0xDF
    bus.write(CMD, 1, 0xD1)
    bus.write(DATA, 1, 0xDE)          # bit 0 low: reset
    assert [e.type for e in rec.events] == [RESET]


def test_pulse_reset_fe(rec) -> None:
    dev, bus = make(rec)
    bus.write(CMD, 1, 0xFF)           # pulses nothing
    assert rec.events == []
    bus.write(CMD, 1, 0xFE)
    assert len(rec.events) == 1
    event = rec.events[0]
    assert event.type == RESET and event.data["source"] == "i8042" and event.t > 0
    assert dev.resets == 1


def test_keyboard_answers(rec) -> None:
    _, bus = make(rec)

    def send(*data: int) -> list[int]:
        for byte in data:
            bus.write(DATA, 1, byte)
        got = []
        while bus.read(CMD, 1) & 0x01:
            got.append(bus.read(DATA, 1))
        return got

    assert send(0xFF) == [0xFA, 0xAA]
    assert send(0xF2) == [0xFA, 0xAB, 0x41]          # translated, as the default command byte asks
    bus.write(CMD, 1, 0x60)
    bus.write(DATA, 1, 0x05)                          # translation off
    assert send(0xF2) == [0xFA, 0xAB, 0x83]
    assert send(0xED, 0x02) == [0xFA, 0xFA]
    assert send(0xF0, 0x00) == [0xFA, 0xFA, 0x02]          # set 2, untranslated
    assert send(0xEE) == [0xEE]
    assert send(0xF4) == [0xFA]


def test_aux_echo_and_absent_mouse(rec) -> None:
    _, bus = make(rec)
    bus.write(CMD, 1, 0xD3)
    bus.write(DATA, 1, 0x5A)
    assert bus.read(CMD, 1) & 0x21 == 0x21           # OBF | AUXB
    assert bus.read(DATA, 1) == 0x5A
    bus.write(CMD, 1, 0xD4)
    bus.write(DATA, 1, 0xF2)
    assert bus.read(DATA, 1) == 0xFE


def test_irq1_follows_output_buffer(rec) -> None:
    _, bus = make(rec)
    bus.write(CMD, 1, 0x20)
    assert rec.irqs == [(1, 1)]
    bus.read(DATA, 1)
    assert rec.irqs == [(1, 1), (1, 0)]
    bus.write(CMD, 1, 0x60)
    bus.write(DATA, 1, 0x44)          # keyboard interrupt off
    bus.write(CMD, 1, 0xAA)
    assert rec.level(1) == 0
    bus.write(CMD, 1, 0x60)
    bus.write(DATA, 1, 0x47)          # kbd + aux interrupts on
    bus.write(CMD, 1, 0xD3)
    bus.write(DATA, 1, 0x01)
    assert (rec.level(1), rec.level(12)) == (1, 0)   # the self-test byte is first in line: IRQ1, not 12
    while bus.read(CMD, 1) & 1:
        bus.read(DATA, 1)
    assert rec.level(1) == 0 and rec.level(12) == 0
    assert (12, 1) in rec.irqs


def test_wait_gap_reported_every_thousand_polls(rec) -> None:
    dev, bus = make(rec)
    for _ in range(POLL_REPORT_EVERY * 2 + 10):
        bus.read(CMD, 1)
    assert [g.count for g in rec.gaps] == [1000, 1000]
    gap = rec.gaps[0]
    assert (gap.kind, gap.key, gap.access) == (I8042_WAIT, "0x64", "read")
    assert gap.first_t is not None
    dev.flush_gaps()
    assert [g.count for g in rec.gaps] == [1000, 1000, 10]
    assert sum(g.count for g in rec.gaps) == dev.status_polls


def test_few_polls_are_not_a_gap(rec) -> None:
    dev, bus = make(rec)
    for _ in range(5):
        bus.read(CMD, 1)
    dev.flush_gaps()
    assert rec.gaps == []
