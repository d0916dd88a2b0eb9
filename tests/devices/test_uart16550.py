from __future__ import annotations

import threading

import pytest

from harness import layout
from harness.devices.bus import Bus
from harness.devices.uart16550 import (FIFO_SIZE, IIR_NO_INT, IIR_RDI, IIR_RLSI, IIR_THRI,
                                       IIR_TIMEOUT, Uart16550)

IRQ = layout.COM1_IRQ
BASE = layout.COM1_PORT
THR, IER, IIR, FCR, LCR, MCR, LSR, MSR, SCR = 0, 1, 2, 2, 3, 4, 5, 6, 7


@pytest.fixture
def out() -> list[bytes]:
    return []


@pytest.fixture
def uart(rec, out) -> Uart16550:
    return Uart16550(rec.context(), IRQ, out.append)


def test_reset_state(uart: Uart16550) -> None:
    assert uart.read(IIR, 1) == IIR_NO_INT
    assert uart.read(LSR, 1) == 0x60           # THRE | TEMT
    assert uart.read(MSR, 1) == 0xB0           # CTS | DSR | DCD, no deltas
    assert uart.read(LCR, 1) == 0 and uart.read(MCR, 1) == 0 and uart.read(IER, 1) == 0


def test_thr_write_goes_to_output_at_once(uart: Uart16550, out: list[bytes]) -> None:
    for ch in b"ok\n":
        uart.write(THR, 1, ch)
    assert out == [b"o", b"k", b"\n"]


def test_dlab_switches_to_divisor_latch(uart: Uart16550, out: list[bytes]) -> None:
    uart.write(LCR, 1, 0x83)
    uart.write(0, 1, 0x01)    # DLL: 115200 baud
    uart.write(1, 1, 0x00)    # DLM
    assert (uart.read(0, 1), uart.read(1, 1)) == (0x01, 0x00)
    assert uart.divisor == 1
    uart.write(LCR, 1, 0x03)
    assert out == []          # divisor writes are not output
    assert uart.read(IER, 1) == 0   # IER untouched by the DLM write
    uart.write(IER, 1, 0xFF)
    assert uart.read(IER, 1) == 0x0F    # only the low four bits exist
    uart.write(LCR, 1, 0x80)
    assert uart.read(1, 1) == 0x00


def test_scratch_round_trips(uart: Uart16550) -> None:
    for value in (0x00, 0x55, 0xAA, 0xFF):
        uart.write(SCR, 1, value)
        assert uart.read(SCR, 1) == value


def test_fifo_detection_fcr_e7(uart: Uart16550) -> None:
    uart.write(FCR, 1, 0xE7)
    iir = uart.read(IIR, 1)
    assert iir & 0xC0 == 0xC0
    assert iir & 0x0F == IIR_NO_INT
    uart.write(FCR, 1, 0)
    assert uart.read(IIR, 1) & 0xC0 == 0


def test_rx_without_fifo_holds_one_byte_and_overruns(uart: Uart16550) -> None:
    uart.receive_now(b"a")
    assert uart.read(LSR, 1) & 0x03 == 0x01      # DR, no OE
    uart.receive_now(b"b")
    lsr = uart.read(LSR, 1)
    assert lsr & 0x03 == 0x03                    # DR | OE
    assert uart.read(LSR, 1) & 0x02 == 0         # OE cleared by the read
    assert uart.read(THR, 1) == ord("b")         # the holding register was overwritten
    assert uart.read(LSR, 1) & 0x01 == 0


def test_rx_fifo_keeps_sixteen_and_drops_the_rest(uart: Uart16550) -> None:
    uart.write(FCR, 1, 0x07)
    data = bytes(range(0x41, 0x41 + FIFO_SIZE + 3))
    uart.receive_now(data)
    assert uart.read(LSR, 1) & 0x03 == 0x03
    got = bytes(uart.read(THR, 1) for _ in range(FIFO_SIZE))
    assert got == data[:FIFO_SIZE]
    assert uart.read(LSR, 1) & 0x01 == 0
    assert uart.overruns == 3


def test_fcr_clear_rx_and_fifo_toggle_empty_the_fifo(uart: Uart16550) -> None:
    uart.write(FCR, 1, 0x01)
    uart.receive_now(b"xyz")
    uart.write(FCR, 1, 0x03)          # clear RX, FIFO stays on
    assert uart.read(LSR, 1) & 0x01 == 0
    uart.receive_now(b"q")
    uart.write(FCR, 1, 0x00)          # turning FIFOs off clears them
    assert uart.read(LSR, 1) & 0x01 == 0


def test_feed_never_overruns(uart: Uart16550) -> None:
    uart.write(FCR, 1, 0x01)
    text = b"a longer answer than sixteen bytes\n"
    uart.feed(text)
    got = bytearray()
    while uart.read(LSR, 1) & 0x01:
        got.append(uart.read(THR, 1))
    assert bytes(got) == text and uart.overruns == 0


def test_rx_interrupt_raised_and_cleared(uart: Uart16550, rec) -> None:
    uart.write(MCR, 1, 0x08)          # OUT2: the PC interrupt gate
    uart.write(IER, 1, 0x01)
    assert rec.level(IRQ) == 0
    uart.receive_now(b"k")
    assert rec.level(IRQ) == 1
    assert uart.read(IIR, 1) == IIR_RDI
    assert uart.read(THR, 1) == ord("k")
    assert rec.level(IRQ) == 0
    assert uart.read(IIR, 1) == IIR_NO_INT


def test_irq_gated_by_out2(uart: Uart16550, rec) -> None:
    uart.write(IER, 1, 0x01)
    uart.receive_now(b"k")
    assert rec.irqs == []             # pending, but OUT2 is clear
    assert uart.read(IIR, 1) == IIR_RDI
    uart.write(MCR, 1, 0x08)
    assert rec.irqs == [(IRQ, 1)]
    uart.write(MCR, 1, 0x00)
    assert rec.irqs == [(IRQ, 1), (IRQ, 0)]


def test_trigger_level_and_timeout(uart: Uart16550) -> None:
    uart.write(FCR, 1, 0x81)          # FIFO on, trigger 8
    uart.write(IER, 1, 0x01)
    uart.receive_now(b"1234")
    assert uart.read(IIR, 1) == 0xC0 | IIR_TIMEOUT
    uart.receive_now(b"5678")
    assert uart.read(IIR, 1) == 0xC0 | IIR_RDI
    for _ in range(8):
        uart.read(THR, 1)
    assert uart.read(IIR, 1) == 0xC0 | IIR_NO_INT


def test_thre_interrupt_raised_on_enable_cleared_by_iir_read(uart: Uart16550, rec) -> None:
    uart.write(MCR, 1, 0x08)
    uart.write(IER, 1, 0x02)
    assert rec.level(IRQ) == 1
    assert uart.read(IIR, 1) == IIR_THRI
    assert rec.level(IRQ) == 0
    assert uart.read(IIR, 1) == IIR_NO_INT   # the read acknowledged it
    uart.write(THR, 1, ord("x"))             # transmitted at once: THR empty again
    assert rec.level(IRQ) == 1
    uart.write(IER, 1, 0x00)
    assert rec.level(IRQ) == 0


def test_iir_priorities(uart: Uart16550) -> None:
    uart.write(LCR, 1, 0x03)
    uart.write(MCR, 1, 0x18)                 # loopback + OUT2: modem deltas appear
    uart.write(IER, 1, 0x0F)
    uart.receive_now(b"ab")                         # overrun (no FIFO) + data + THRE + modem status
    assert uart.read(IIR, 1) == IIR_RLSI     # line status first
    uart.read(LSR, 1)
    assert uart.read(IIR, 1) == IIR_RDI      # then received data
    uart.read(THR, 1)
    assert uart.read(IIR, 1) == IIR_THRI     # then THR empty (cleared by this read)
    assert uart.read(IIR, 1) == 0x00         # then modem status (source code 0, pending)
    uart.read(MSR, 1)
    assert uart.read(IIR, 1) == IIR_NO_INT


def test_loopback_routes_output_to_input_and_msr_follows_mcr(uart: Uart16550, out) -> None:
    uart.write(MCR, 1, 0x10)                 # loop, all outputs off
    msr = uart.read(MSR, 1)
    assert msr & 0xF0 == 0x00
    assert msr & 0x0F == 0x0B                # CTS, DSR, DCD dropped: three deltas
    assert uart.read(MSR, 1) & 0x0F == 0     # deltas cleared on read
    uart.write(MCR, 1, 0x1F)                 # DTR RTS OUT1 OUT2 + loop
    assert uart.read(MSR, 1) == 0xF0 | 0x0B
    uart.write(MCR, 1, 0x1B)                 # OUT1 off: RI trailing edge
    assert uart.read(MSR, 1) == 0xB0 | 0x04
    uart.write(THR, 1, 0x5A)
    assert out == []
    assert uart.read(LSR, 1) & 0x01
    assert uart.read(THR, 1) == 0x5A
    uart.write(MCR, 1, 0x00)
    assert uart.read(MSR, 1) & 0xF0 == 0xB0  # back on the always-up host line


def test_netbsd_com_probe_subr(uart: Uart16550) -> None:
    """sys/dev/ic/com.c com_probe_subr: write LCR=LCR_8BITS, FIFO=0, check LCR and IIR."""
    bus = Bus("io")
    bus.register(BASE, 8, uart, "com0")
    bus.write(BASE + 3, 1, 0x03)
    bus.write(BASE + 2, 1, 0x00)
    assert bus.read(BASE + 3, 1) == 0x03
    assert bus.read(BASE + 2, 1) & 0x38 == 0
    # com_attach_subr: FIFO probe with ENABLE|RCV_RST|XMT_RST|TRIGGER_14.
    bus.write(BASE + 2, 1, 0xC7)
    assert bus.read(BASE + 2, 1) & 0xC0 == 0xC0
    assert bus.read(BASE + 2, 1) & 0xC0 == 0xC0   # FIFO_TRIGGER_14 check reads IIR again
    bus.write(BASE + 2, 1, 0x00)


def test_netbsd_probe_with_stale_input(uart: Uart16550) -> None:
    """A byte typed before the probe must not break it (FCR=0 means no timeout source)."""
    uart.write(FCR, 1, 0x01)
    uart.write(IER, 1, 0x01)
    uart.receive_now(b"x")
    uart.write(LCR, 1, 0x03)
    uart.write(FCR, 1, 0x00)
    assert uart.read(IIR, 1) & 0x38 == 0


@pytest.mark.parametrize("lcr", [0x00, 0x03])
def test_openbsd_comprobe1(uart: Uart16550, lcr: int) -> None:
    """sys/dev/ic/com.c comprobe1: LCR=0 (older) or LCR_8BITS (newer), IIR=0, then up to 32
    rounds of checking LCR and IIR & 0x38, reading the data register to clean up."""
    bus = Bus("io")
    bus.register(BASE, 8, uart, "com0")
    uart.write(FCR, 1, 0xC1)
    uart.write(IER, 1, 0x01)
    uart.receive_now(b"ab")                  # leftovers below trigger 14: a timeout source
    bus.write(BASE + 3, 1, lcr)
    bus.write(BASE + 2, 1, 0x00)
    for i in range(32):
        if bus.read(BASE + 3, 1) != lcr or bus.read(BASE + 2, 1) & 0x38:
            bus.read(BASE, 1)
        else:
            break
    assert i < 32
    assert i == 0                     # FCR=0 already removed the FIFO and its timeout


def test_feed_is_thread_safe(uart: Uart16550) -> None:
    uart.write(FCR, 1, 0x01)
    got = bytearray()
    chunks = [bytes([0x30 + i % 10]) for i in range(400)]

    def producer() -> None:
        for c in chunks:
            uart.feed(c)

    t = threading.Thread(target=producer)
    t.start()
    while t.is_alive() or uart.read(LSR, 1) & 1:
        if uart.read(LSR, 1) & 1:
            got.append(uart.read(THR, 1))
    t.join()
    assert bytes(got) == b"".join(chunks)


def test_freebsd_ns8250_fifo_size_probe(uart: Uart16550, out: list[bytes]) -> None:
    """sys/dev/uart/uart_dev_ns8250.c ns8250_bus_probe: count loopback bytes until LSR.OE."""
    assert uart.read(IIR, 1) & 0x30 == 0 and uart.read(MCR, 1) & 0xE0 == 0   # ns8250_probe
    uart.write(MCR, 1, 0x10 | 0x03)                 # loopback, DTR, RTS
    uart.write(FCR, 1, 0x01)
    assert uart.read(IIR, 1) & 0xC0
    uart.write(FCR, 1, 0x07)
    count = 0
    while True:
        uart.write(THR, 1, 0)
        count += 1
        lsr = 0
        for _ in range(30):                         # accumulate: LSR bits clear on read
            lsr |= uart.read(LSR, 1)
            if lsr & 0x40:
                break
        if lsr & 0x02 or count >= 130:
            break
    assert count - 1 == 16
    assert out == []                                # loopback bytes never reach the console


def test_linux_autoconfig_sequence(uart: Uart16550) -> None:
    """drivers/tty/serial/8250/8250_port.c autoconfig: IER test, loopback MSR test, FIFO type."""
    uart.write(IER, 1, 0)
    assert uart.read(IER, 1) & 0x0F == 0
    uart.write(IER, 1, 0x0F)
    assert uart.read(IER, 1) & 0x0F == 0x0F
    uart.write(IER, 1, 0)
    uart.write(MCR, 1, 0x10 | 0x0A)                 # LOOP | RTS | OUT2
    assert uart.read(MSR, 1) & 0xF0 == 0x90         # CTS | DCD
    uart.write(MCR, 1, 0)
    uart.write(FCR, 1, 0x01)
    assert uart.read(IIR, 1) >> 6 == 3              # 16550A
    uart.write(LCR, 1, 0xBF)
    assert uart.read(2, 1) != 0                     # no EFR: not a 16650
    uart.write(LCR, 1, 0x00)
    uart.write(IER, 1, 0x40)
    assert uart.read(IER, 1) == 0                   # no UUE bit: not an XScale UART
    # serial8250_startup's THRE test: enabling THRI must raise an interrupt at once.
    uart.write(IER, 1, 0x02)
    lsr, iir = uart.read(LSR, 1), uart.read(IIR, 1)
    assert lsr & 0x40 and not iir & 0x01


def test_bus_hot_path_is_fast(rec) -> None:
    """A THR write through the bus must stay cheap: it runs on every console byte."""
    import time
    bus = Bus("io")
    uart = Uart16550(rec.context(), IRQ, lambda b: None)
    bus.register(BASE, 8, uart, "com1")
    n = 20000
    start = time.perf_counter()
    for _ in range(n):
        bus.write(BASE, 1, 0x41)
        bus.read(BASE + 5, 1)
    per_pair = (time.perf_counter() - start) / n
    assert per_pair < 50e-6, per_pair


def test_tx_interrupt_enable_hook(uart: Uart16550) -> None:
    seen: list[bool] = []
    uart.on_tx_interrupt_enable = seen.append
    uart.write(IER, 1, 0x01)
    uart.write(IER, 1, 0x03)
    uart.write(IER, 1, 0x0F)
    uart.write(IER, 1, 0x00)
    uart.write(LCR, 1, 0x80)
    uart.write(1, 1, 0x02)            # DLM under DLAB: not IER
    assert seen == [True, False]


def test_openbsd_com_fifo_probe(uart: Uart16550, out: list[bytes]) -> None:
    """sys/dev/ic/com.c com_fifo_probe: loopback, write 256 bytes, count what comes back in order."""
    uart.write(LCR, 1, 0x80)
    uart.write(0, 1, 3)
    uart.write(1, 1, 0)
    uart.write(LCR, 1, 0x03)
    uart.write(MCR, 1, 0x10)
    uart.write(FCR, 1, 0x07)
    while uart.read(LSR, 1) & 0x01:
        uart.read(THR, 1)
    for n in range(256):
        uart.write(THR, 1, (n + 1) & 0xFF)
    assert uart.read(LSR, 1) & 0x20                   # TXRDY at once
    length = 0
    while length < 256 and uart.read(LSR, 1) & 0x01:
        if uart.read(THR, 1) != length + 1:
            break
        length += 1
    assert length == 16
    assert out == []
