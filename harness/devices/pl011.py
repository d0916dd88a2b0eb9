"""An ARM PrimeCell PL011 UART (the console of aarch64 guests: Linux ttyAMA0, NetBSD plcom).

Facts followed (PL011 Technical Reference Manual, ARM DDI 0183, r1p5):
- 32-bit registers in a 4 KiB window: DR 0x000 (read: data in bits 7:0, FE/PE/BE/OE in bits
  8-11), RSR/ECR 0x004 (error bits; any write clears them), FR 0x018, ILPR 0x020, IBRD 0x024,
  FBRD 0x028, LCR_H 0x02C, CR 0x030, IFLS 0x034, IMSC 0x038, RIS 0x03C, MIS 0x040, ICR 0x044
  (write 1 to clear), DMACR 0x048, PeriphID0-3 0xFE0-0xFEC (0x11, 0x10, 0x34, 0x00: part 0x011,
  designer ARM, revision r1p5) and PCellID0-3 0xFF0-0xFFC (0x0D, 0xF0, 0x05, 0xB1). Linux's AMBA
  bus reads the ID registers to match the driver, so they must be right.
- LCR_H.FEN (bit 4): 1 = 16-entry transmit and receive FIFOs; 0 = "character mode": each FIFO
  becomes a 1-byte holding register. The flags follow the depth in use: TXFF when the transmit
  FIFO (or holding register) is full, TXFE when it is empty, RXFF / RXFE likewise for the
  receiver, BUSY while the transmitter has data (set as soon as the transmit FIFO is non-empty,
  whether or not the UART is enabled). The TRM does not say that toggling FEN empties the FIFOs;
  like QEMU's model, a change of FEN here discards received bytes (the old FIFO's content has no
  defined meaning in the new depth).
- Transmit interrupt (TXRIS): with the FIFOs on it is a *transition* through the IFLS level: set
  when the transmit FIFO drains to the trigger level or below, not merely because it is empty (an
  empty FIFO after reset raises nothing). With the FIFOs off it is a *level*: asserted whenever the
  single location holds no data. Either way a write to DR or ICR.TXIC clears it. Seed 000: NetBSD's
  plcom turns the FIFO off and waits for this interrupt between bytes; a model that only knew the
  FIFO-mode rule never raised it again.
- Receive interrupt (RXRIS): FIFO mode, when the receive FIFO reaches its IFLS trigger level;
  character mode, as soon as the holding register is full. Receive timeout (RTRIS): bytes below
  the trigger level sat unread; this model reports it as soon as such bytes exist (there is no
  32-bit-period wait to model). Reading DR below the level clears both.
- Overrun (OE): a byte arriving at a full receiver is lost (FIFO mode keeps its 16; character mode
  keeps the held byte), RSR.OE and RIS.OEIS are set; the next byte read carries DR.OE.
- CR: UARTEN (bit 0), TXE (bit 8), RXE (bit 9), LBE (bit 7: loopback, TX feeds RX). Reset is
  0x0300; this model starts with UARTEN set too, as the firmware an aarch64 kernel expects leaves
  its console (Linux earlycon writes DR without enabling the UART). Bytes written while UARTEN or
  TXE is clear stay in the transmit FIFO (TXFF/BUSY show it) and leave once both are set again;
  a write to a full transmit FIFO is lost (counted in `tx_dropped`).
- UARTINTR, the combined interrupt, is the OR of MIS = RIS & IMSC; it drives one GIC SPI as a
  level (ctx.set_irq(spi, 0/1) on every change).
- A disabled receiver (UARTEN or RXE clear) ignores the line; host input through feed() waits.
- Output is instant: the line has no baud-rate delay, so an enabled transmitter drains at once.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from harness.devices.context import DeviceContext
from harness.devices.mmio32 import in_window, sub_word

# Register offsets
DR, RSR_ECR, FR, ILPR, IBRD, FBRD, LCR_H, CR = 0x000, 0x004, 0x018, 0x020, 0x024, 0x028, 0x02C, 0x030
IFLS, IMSC, RIS, MIS, ICR, DMACR = 0x034, 0x038, 0x03C, 0x040, 0x044, 0x048
PERIPH_ID_BASE, CELL_ID_BASE = 0xFE0, 0xFF0
PERIPH_ID = (0x11, 0x10, 0x34, 0x00)
CELL_ID = (0x0D, 0xF0, 0x05, 0xB1)
WINDOW = 0x1000

# DR / RSR error bits (DR carries them at bit 8 and up, RSR at bit 0 and up)
ERR_FE, ERR_PE, ERR_BE, ERR_OE = 0x1, 0x2, 0x4, 0x8
DR_ERROR_SHIFT = 8

# FR
FR_CTS, FR_DSR, FR_DCD, FR_BUSY, FR_RXFE, FR_TXFF, FR_RXFF, FR_TXFE, FR_RI = (
    1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8)
FR_LINES_UP = FR_CTS | FR_DSR | FR_DCD   # the host end is always connected

# LCR_H
LCR_H_FEN = 1 << 4
LCR_H_MASK = 0xFF

# CR
CR_UARTEN, CR_LBE, CR_TXE, CR_RXE = 1 << 0, 1 << 7, 1 << 8, 1 << 9
CR_RESET = CR_TXE | CR_RXE
CR_MASK = 0xFF87

# Interrupt bits (IMSC, RIS, MIS, ICR)
INT_RI, INT_CTS, INT_DCD, INT_DSR, INT_RX, INT_TX, INT_RT, INT_FE, INT_PE, INT_BE, INT_OE = (
    1 << i for i in range(11))
INT_MASK = 0x7FF

IFLS_RESET = 0x12                      # both triggers at 1/2
IFLS_FRACTIONS = (1, 2, 4, 6, 7)       # eighths: 1/8, 1/4, 1/2, 3/4, 7/8
FIFO_DEPTH = 16


def _trigger(code: int) -> int:
    """Entries that make up an IFLS trigger code (reserved codes behave as 7/8)."""
    return FIFO_DEPTH * IFLS_FRACTIONS[min(code, 4)] // 8


class Pl011:
    """The guest's view through read/write(offset, size); the host's through feed/receive_now."""

    def __init__(self, ctx: DeviceContext, spi: int, output: Callable[[bytes], None]) -> None:
        self._ctx = ctx
        self.spi = spi
        self._output = output
        self._lock = threading.RLock()
        self._rx: deque[int] = deque()          # entries: data | error bits << 8
        self._tx: deque[int] = deque()          # bytes waiting for an enabled transmitter
        self._backlog: deque[int] = deque()     # host bytes waiting for receiver room (feed)
        self.lcr_h = 0
        self.cr = CR_RESET | CR_UARTEN
        self.ifls = IFLS_RESET
        self.imsc = 0
        self.ibrd = 0
        self.fbrd = 0
        self.ilpr = 0
        self.dmacr = 0
        self._ris = INT_TX        # reset is character mode with an empty holding register: a level
        self._rsr = 0
        self._irq_level = 0
        self.overruns = 0
        self.tx_dropped = 0
        # Called with IMSC's TXIM (the TX interrupt's mask bit) each time the guest changes it:
        # a VMM that batches DR writes (KVM coalesced MMIO) stops while the guest transmits by
        # interrupt, where a batch would delay the TX interrupt until its replay (the 16550's
        # on_tx_interrupt_enable, for coalesce_serial: polled).
        self.on_tx_interrupt_enable: Callable[[bool], None] | None = None

    # --- host side -------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Host input with flow control: bytes wait host-side until the receiver has room."""
        with self._lock:
            self._backlog.extend(data)
            self._refill()
            self._update()

    def receive_now(self, data: bytes) -> None:
        """Bytes arriving on the wire now, without flow control: beyond the receiver, overrun."""
        with self._lock:
            for byte in data:
                self._receive(byte)
            self._update()

    # --- bus interface ---------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if not in_window(offset, WINDOW):
                return 0
            value = self._read_reg(offset & ~3)
            self._update()
            return sub_word(value, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            if not in_window(offset, WINDOW) or offset & 3:
                return                       # sub-word writes into a register: not a PL011 access
            self._write_reg(offset, value & 0xFFFF_FFFF)
            self._update()

    # --- registers -------------------------------------------------------------------------
    def _read_reg(self, reg: int) -> int:
        if reg == DR:
            return self._read_dr()
        if reg >= PERIPH_ID_BASE:
            ids = PERIPH_ID + CELL_ID
            return ids[(reg - PERIPH_ID_BASE) // 4]
        plain = {RSR_ECR: self._rsr, FR: self._flags(), ILPR: self.ilpr, IBRD: self.ibrd, FBRD: self.fbrd,
                 LCR_H: self.lcr_h, CR: self.cr, IFLS: self.ifls, IMSC: self.imsc, RIS: self._ris,
                 MIS: self._ris & self.imsc, DMACR: self.dmacr}
        return plain.get(reg, 0)

    def _write_reg(self, reg: int, value: int) -> None:
        if reg == DR:
            self._write_dr(value & 0xFF)
        elif reg == RSR_ECR:
            self._rsr = 0
        elif reg == ILPR:
            self.ilpr = value & 0xFF
        elif reg == IBRD:
            self.ibrd = value & 0xFFFF
        elif reg == FBRD:
            self.fbrd = value & 0x3F
        elif reg == LCR_H:
            self._write_lcr_h(value & LCR_H_MASK)
        elif reg == CR:
            self.cr = value & CR_MASK
            self._drain()
            self._refill()
        elif reg == IFLS:
            self.ifls = value & 0x3F
        elif reg == IMSC:
            changed = (value ^ self.imsc) & INT_TX
            self.imsc = value & INT_MASK
            if changed and self.on_tx_interrupt_enable is not None:
                self.on_tx_interrupt_enable(bool(value & INT_TX))
        elif reg == ICR:
            self._ris &= ~(value & INT_MASK)
        elif reg == DMACR:
            self.dmacr = value & 0x7
        # FR, RIS, MIS and the ID registers are read-only.

    def _fifo_on(self) -> bool:
        return bool(self.lcr_h & LCR_H_FEN)

    def _depth(self) -> int:
        return FIFO_DEPTH if self._fifo_on() else 1

    def _flags(self) -> int:
        depth = self._depth()
        value = FR_LINES_UP
        value |= FR_RXFE if not self._rx else 0
        value |= FR_RXFF if len(self._rx) >= depth else 0
        value |= FR_TXFE if not self._tx else FR_BUSY
        value |= FR_TXFF if len(self._tx) >= depth else 0
        return value

    def _write_lcr_h(self, value: int) -> None:
        if (value ^ self.lcr_h) & LCR_H_FEN:
            self._rx.clear()
        self.lcr_h = value
        self._refill()
        if not self._fifo_on() and not self._tx:
            self._ris |= INT_TX                 # character mode: an empty holding register is a level

    def _write_dr(self, byte: int) -> None:
        self._ris &= ~INT_TX
        if len(self._tx) >= self._depth():
            self.tx_dropped += 1
            return
        self._tx.append(byte)
        self._drain()

    def _drain(self) -> None:
        """Send what the transmit FIFO holds if the transmitter is enabled (instantly)."""
        if not self._tx or (self.cr & (CR_UARTEN | CR_TXE)) != (CR_UARTEN | CR_TXE):
            return
        data = bytes(self._tx)
        self._tx.clear()
        if self.cr & CR_LBE:
            for byte in data:
                self._receive(byte)
        else:
            self._output(data)
        # The FIFO passed through its trigger level on the way to empty (FIFO mode), or the
        # holding register is empty again (character mode): either way a transmit interrupt.
        self._ris |= INT_TX

    def _read_dr(self) -> int:
        if not self._rx:
            return 0
        entry = self._rx.popleft()
        self._refill()
        return entry

    def _rx_enabled(self) -> bool:
        return (self.cr & (CR_UARTEN | CR_RXE)) == (CR_UARTEN | CR_RXE)

    def _receive(self, byte: int) -> None:
        if not self._rx_enabled():
            return                              # a disabled receiver ignores the line
        if len(self._rx) >= self._depth():
            self._rsr |= ERR_OE
            self._ris |= INT_OE
            self.overruns += 1
            if self._rx:                        # the overrun shows on the last byte kept
                self._rx[-1] |= ERR_OE << DR_ERROR_SHIFT
            return
        self._rx.append(byte)

    def _refill(self) -> None:
        depth = self._depth()
        while self._backlog and len(self._rx) < depth and self._rx_enabled():
            self._rx.append(self._backlog.popleft())

    def _update(self) -> None:
        self._update_rx_status()
        level = int(bool(self._ris & self.imsc))
        if level != self._irq_level:
            self._irq_level = level
            self._ctx.set_irq(self.spi, level)

    def _update_rx_status(self) -> None:
        self._ris &= ~(INT_RX | INT_RT)
        if not self._rx:
            return
        trigger = _trigger((self.ifls >> 3) & 7) if self._fifo_on() else 1
        self._ris |= INT_RX if len(self._rx) >= trigger else INT_RT

    @property
    def irq_level(self) -> int:
        return self._irq_level
