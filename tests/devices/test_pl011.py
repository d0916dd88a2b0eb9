"""PL011: FIFO mode and character mode as the TRM describes them (seed 000: NetBSD's plcom turns
the FIFO off and waits for the transmit interrupt between bytes), ID registers, hostile accesses."""
from __future__ import annotations

import random

import pytest

from harness.devices.pl011 import (CR, CR_LBE, CR_RXE, CR_TXE, CR_UARTEN, DR, ERR_OE, FIFO_DEPTH, FR,
                                   FR_BUSY, FR_RXFE, FR_RXFF, FR_TXFE, FR_TXFF, ICR, IFLS, IMSC,
                                   INT_OE, INT_RT, INT_RX, INT_TX, LCR_H, LCR_H_FEN, MIS, RIS, RSR_ECR,
                                   Pl011)

SPI = 1
FLAGS = FR_BUSY | FR_RXFE | FR_RXFF | FR_TXFE | FR_TXFF


@pytest.fixture
def out() -> list[bytes]:
    return []


@pytest.fixture
def uart(rec, out) -> Pl011:
    return Pl011(rec.context(), SPI, out.append)


def _flags(uart: Pl011) -> int:
    return uart.read(FR, 4) & FLAGS


def test_amba_id_registers(uart):
    periph = [uart.read(0xFE0 + 4 * i, 4) for i in range(4)]
    cell = [uart.read(0xFF0 + 4 * i, 4) for i in range(4)]
    assert periph[0] | periph[1] << 8 | (periph[2] & 0xF) << 16 == 0x41011   # part 0x011, designer 0x41
    assert cell == [0x0D, 0xF0, 0x05, 0xB1]


def test_output_leaves_at_once_and_flags_say_empty(uart, out):
    for ch in b"ok":
        uart.write(DR, 4, ch)
    assert out == [b"o", b"k"]
    assert _flags(uart) == FR_RXFE | FR_TXFE


@pytest.mark.parametrize("fifo", [False, True])
def test_disabled_transmitter_holds_bytes_up_to_the_depth_in_use(uart, out, fifo):
    depth = FIFO_DEPTH if fifo else 1
    uart.write(LCR_H, 4, LCR_H_FEN if fifo else 0)
    uart.write(CR, 4, CR_RXE)                      # UARTEN and TXE off
    for i in range(depth - 1):
        uart.write(DR, 4, 0x41 + i)
        assert _flags(uart) == FR_RXFE | FR_BUSY   # not empty, not full
    uart.write(DR, 4, 0x5A)
    assert _flags(uart) == FR_RXFE | FR_BUSY | FR_TXFF
    uart.write(DR, 4, 0x21)                        # written to a full FIFO: lost
    assert uart.tx_dropped == 1 and out == []
    uart.write(CR, 4, CR_UARTEN | CR_TXE | CR_RXE)
    assert out == [bytes(range(0x41, 0x41 + depth - 1)) + b"Z"]
    assert _flags(uart) == FR_RXFE | FR_TXFE


def test_character_mode_receiver_holds_one_byte_and_overruns(uart):
    assert uart.read(LCR_H, 4) & LCR_H_FEN == 0    # reset: character mode
    uart.receive_now(b"a")
    assert _flags(uart) & (FR_RXFE | FR_RXFF) == FR_RXFF
    uart.receive_now(b"b")                          # no room: overrun, the held byte stays
    assert uart.overruns == 1
    assert uart.read(RIS, 4) & INT_OE and uart.read(RSR_ECR, 4) & ERR_OE
    entry = uart.read(DR, 4)
    assert entry & 0xFF == ord("a") and entry >> 8 & ERR_OE
    assert _flags(uart) & FR_RXFE
    uart.write(RSR_ECR, 4, 0)
    assert uart.read(RSR_ECR, 4) == 0


def test_fifo_mode_receiver_takes_sixteen(uart):
    uart.write(LCR_H, 4, LCR_H_FEN)
    uart.receive_now(bytes(range(FIFO_DEPTH - 1)))
    assert _flags(uart) & (FR_RXFE | FR_RXFF) == 0
    uart.receive_now(b"\x0f")
    assert _flags(uart) & FR_RXFF
    uart.receive_now(b"lost")
    assert uart.overruns == 4
    assert [uart.read(DR, 4) & 0xFF for _ in range(FIFO_DEPTH)] == list(range(FIFO_DEPTH))


def test_feed_waits_for_room_instead_of_overrunning(uart):
    uart.feed(b"hello")                             # character mode: one byte at a time
    got = []
    while not _flags(uart) & FR_RXFE:
        got.append(uart.read(DR, 4) & 0xFF)
    assert bytes(got) == b"hello" and uart.overruns == 0


def test_tx_interrupt_is_a_level_in_character_mode_and_an_edge_in_fifo_mode(rec, out):
    uart = Pl011(rec.context(), SPI, out.append)
    uart.write(IMSC, 4, INT_TX)
    assert uart.read(MIS, 4) == INT_TX and rec.level(SPI) == 1   # empty holding register
    uart.write(ICR, 4, INT_TX)
    assert rec.level(SPI) == 0
    uart.write(DR, 4, ord("x"))                    # sent at once: the holding register is empty again
    assert rec.level(SPI) == 1
    uart.write(ICR, 4, INT_TX)
    uart.write(LCR_H, 4, LCR_H_FEN)                # FIFO mode: an empty FIFO alone raises nothing
    assert uart.read(RIS, 4) & INT_TX == 0 and rec.level(SPI) == 0
    uart.write(DR, 4, ord("y"))                    # drains through the trigger level: interrupt
    assert uart.read(RIS, 4) & INT_TX and rec.level(SPI) == 1
    uart.write(ICR, 4, INT_TX)
    uart.write(LCR_H, 4, 0)                        # back to character mode with an empty register
    assert uart.read(RIS, 4) & INT_TX


def test_netbsd_style_interrupt_driven_output_with_fifo_off(rec, out):
    """plcom with the FIFO off: write one byte, wait for the TX interrupt, write the next."""
    uart = Pl011(rec.context(), SPI, out.append)
    uart.write(LCR_H, 4, 0x60)                     # 8N1, FEN clear
    uart.write(IMSC, 4, INT_TX)
    for ch in b"NetBSD":
        assert rec.level(SPI) == 1, "the transmit interrupt must announce an empty holding register"
        assert uart.read(FR, 4) & FR_TXFF == 0
        uart.write(DR, 4, ch)
    assert b"".join(out) == b"NetBSD"


def test_rx_interrupt_levels(rec, out):
    uart = Pl011(rec.context(), SPI, out.append)
    uart.write(IMSC, 4, INT_RX | INT_RT)
    uart.receive_now(b"a")                          # character mode: one byte is an RX interrupt
    assert uart.read(MIS, 4) == INT_RX and rec.level(SPI) == 1
    uart.read(DR, 4)
    assert rec.level(SPI) == 0
    uart.write(LCR_H, 4, LCR_H_FEN)
    uart.write(IFLS, 4, 2 << 3)                     # RX trigger at 1/2: 8 bytes
    uart.receive_now(b"abc")
    assert uart.read(MIS, 4) == INT_RT              # below the level: timeout
    uart.receive_now(b"defgh")
    assert uart.read(MIS, 4) == INT_RX


def test_loopback_feeds_the_receiver(uart, out):
    uart.write(LCR_H, 4, LCR_H_FEN)
    uart.write(CR, 4, CR_UARTEN | CR_TXE | CR_RXE | CR_LBE)
    uart.write(DR, 4, 0x55)
    assert out == [] and uart.read(DR, 4) == 0x55


def test_disabled_receiver_ignores_the_line(uart):
    uart.write(CR, 4, CR_UARTEN | CR_TXE)
    uart.receive_now(b"x")
    assert _flags(uart) & FR_RXFE
    uart.feed(b"y")                                  # host input waits for the receiver
    uart.write(CR, 4, CR_UARTEN | CR_TXE | CR_RXE)
    assert uart.read(DR, 4) == ord("y")


def test_hostile_offsets_and_sizes_never_raise(rec):
    uart = Pl011(rec.context(), SPI, lambda b: None)
    rng = random.Random(11)
    for _ in range(20000):
        offset = rng.choice((rng.randrange(-8, 0x1010), rng.randrange(0, 0x50), 1 << 40))
        size = rng.choice((0, 1, 2, 4, 8, -1, 3))
        if rng.random() < 0.5:
            value = uart.read(offset, size)
            assert 0 <= value < 1 << 32
        else:
            uart.write(offset, size, rng.getrandbits(64))
    assert uart.read(0x2000, 4) == 0


def test_aarch64_device_set_sits_where_the_device_tree_says(rec):
    from harness.boot.fdt import Aarch64Machine
    from harness.devices.aarch64 import build_aarch64_devices

    machine = Aarch64Machine(256 << 20)
    got: list[bytes] = []
    devs = build_aarch64_devices(rec.context(), machine, got.append)
    try:
        assert devs.mmio_bus.write(machine.uart.base + DR, 4, ord("!"))
        assert got == [b"!"]
        assert devs.mmio_bus.read(machine.rtc.base + 0xFE0, 4) == 0x31
        assert devs.mmio_bus.read(machine.uart.base - 4, 4) is None       # nothing below the UART
        assert {r.name for r in devs.mmio_bus.ranges()} == {"pl011", "pl031"}
    finally:
        devs.close()


def test_tx_interrupt_mask_changes_are_reported_for_serial_batching(uart):
    seen: list[bool] = []
    uart.on_tx_interrupt_enable = seen.append
    uart.write(IMSC, 4, INT_RX | INT_RT)        # RX interrupts only: TXIM stays clear, no call
    uart.write(IMSC, 4, INT_RX | INT_RT | INT_TX)
    uart.write(IMSC, 4, INT_RX | INT_RT | INT_TX)   # unchanged: no second call
    uart.write(IMSC, 4, INT_RX)
    assert seen == [True, False]
    assert uart.read(IMSC, 4) == INT_RX
