"""A National Semiconductor PC16550D UART (the "16550A" every PC kernel expects at COM1).

Spec facts followed (PC16550D datasheet, and the probes of the kernels we boot):
- Eight byte-wide registers. Offset 0: RBR (read) / THR (write), DLL when LCR.DLAB (bit 7) is set;
  1: IER (bits 0-3: RX data, THR empty, line status, modem status), DLM under DLAB; 2: IIR (read) /
  FCR (write); 3: LCR; 4: MCR (DTR, RTS, OUT1, OUT2, LOOP); 5: LSR; 6: MSR; 7: SCR (scratch).
- IIR: bit 0 set = nothing pending; bits 1-3 name the highest-priority source: line status 0x6 >
  RX data 0x4 / character timeout 0xC > THR empty 0x2 > modem status 0x0. Bits 6-7 read 0xC0 while
  the FIFOs are on (FCR bit 0), so FCR=0xE7 -> IIR & 0xC0 == 0xC0 is the FIFO detection of NetBSD and
  OpenBSD (com_attach_subr). Reading IIR while THR-empty is the reported source clears it; writing
  THR clears it too (here transmission is instant, so THR is empty again at once and re-arms it).
- FCR: bit 0 FIFO enable (changing it clears both FIFOs), bit 1/2 clear RX/TX FIFO, bits 6-7 RX
  trigger level 1/4/8/14. With FIFOs off the receiver holds one byte.
- The receiver overruns (LSR.OE, a line-status interrupt) when a byte arrives with no room: with
  FIFOs on the FIFO keeps its 16 bytes and the new byte is lost. Reading LSR clears OE.
  Host input through feed() never overruns: it waits host-side and enters the FIFO as the guest
  reads (flow control); receive_now() delivers at once and can overrun, like a bare wire.
- Character timeout (IIR 0xC) stands for "bytes below the trigger level sat unread": the model
  reports it as soon as such bytes exist, since there is no 4-character-time delay to wait out.
- LSR.THRE and LSR.TEMT are always set: output leaves at once.
- MSR: CTS, DSR and DCD asserted (a null-modem cable that is always up). In loopback (MCR bit 4) the
  outputs feed the inputs: CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2, and THR bytes land in the receiver.
  Delta bits (0-3) record changes and are cleared by reading MSR.
- The interrupt reaches the PC's interrupt controller only while MCR.OUT2 is set (the PC gate).
  The line is level: ctx.set_irq(irq, 1/0) on every change of the gated pending state.
- NetBSD com_probe_subr: LCR=0x03, FCR=0, then LCR must read 0x03 and IIR & 0x38 == 0. OpenBSD
  comprobe1: LCR=0 (or 3), FCR=0, then up to 32 reads of IIR (reading RBR while IIR & 0x38 != 0).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from harness.devices.context import DeviceContext

# Register offsets
RBR_THR_DLL, IER_DLM, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)

IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08

IIR_NO_INT = 0x01
IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_TIMEOUT = 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FIFO_ON = 0xC0

FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX = 0x01, 0x02, 0x04
FCR_TRIGGER_LEVELS = (1, 4, 8, 14)

LCR_DLAB = 0x80

MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
MCR_MASK = 0x1F

LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40

MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
MSR_LINES_UP = MSR_CTS | MSR_DSR | MSR_DCD   # the host end is always connected

FIFO_SIZE = 16
DEFAULT_DIVISOR = 12   # 9600 baud from the 1.8432 MHz clock, the chip's usual power-on setting


class Uart16550:
    access_width = 1   # byte registers: the bus splits wider accesses

    def __init__(self, ctx: DeviceContext, irq: int, output: Callable[[bytes], None]) -> None:
        self._ctx = ctx
        self.irq = irq
        self._output = output
        self._lock = threading.RLock()
        self._rx: deque[int] = deque()
        self._backlog: deque[int] = deque()   # host bytes waiting for FIFO room (feed)
        self._last_rx = 0
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.fcr = 0
        self.divisor = DEFAULT_DIVISOR
        self._overrun = False
        self._thre_pending = False
        self._msr_lines = MSR_LINES_UP
        self._msr_delta = 0
        self._irq_level = 0
        self.overruns = 0   # bytes lost to overrun, for reports
        # Called with True/False when the guest turns the THR-empty interrupt on/off. A VMM that
        # batches THR writes (KVM coalesced PIO) delays every THRE interrupt until it replays the
        # batch, which throttles interrupt-driven output (measured: ~0.75 KB/s vs ~10 KB/s); it
        # can use this to stop batching while the guest transmits by interrupt.
        self.on_tx_interrupt_enable: Callable[[bool], None] | None = None

    # --- host side ---------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Host input (the runner's answers, stdin): never lost. Bytes wait host-side and enter
        the RX FIFO as the guest drains it, like a line with flow control."""
        with self._lock:
            self._backlog.extend(data)
            self._refill()
            self._update_irq()

    def receive_now(self, data: bytes) -> None:
        """Bytes arriving on the wire this instant, with no flow control: beyond the FIFO they
        overrun (LSR.OE), as on a real line. For tests of the guest's overrun handling."""
        with self._lock:
            for byte in data:
                self._receive(byte)
            self._update_irq()

    # --- bus interface -----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            value = self._read_reg(offset & 7)
            self._update_irq()
            return value

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._write_reg(offset & 7, value & 0xFF)
            self._update_irq()

    # --- registers ---------------------------------------------------------------------------
    def _read_reg(self, reg: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR_THR_DLL:
            return self.divisor & 0xFF if dlab else self._read_rbr()
        if reg == IER_DLM:
            return self.divisor >> 8 if dlab else self.ier
        if reg == IIR_FCR:
            return self._read_iir()
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            return self._read_lsr()
        if reg == MSR:
            value = self._msr_lines | self._msr_delta
            self._msr_delta = 0
            return value
        return self.scr

    def _write_reg(self, reg: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR_THR_DLL:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._write_thr(value)
        elif reg == IER_DLM:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
            else:
                self._write_ier(value & 0x0F)
        elif reg == IIR_FCR:
            self._write_fcr(value)
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            self._write_mcr(value & MCR_MASK)
        elif reg == SCR:
            self.scr = value
        # LSR and MSR writes are factory-test paths on the real chip: ignored.

    def _read_rbr(self) -> int:
        if self._rx:
            self._last_rx = self._rx.popleft()
            self._refill()
        return self._last_rx

    def _write_thr(self, value: int) -> None:
        if self.mcr & MCR_LOOP:
            self._receive(value)
        else:
            self._output(bytes([value]))
        # The byte left at once: THR is empty again, which is a fresh THRE event.
        self._thre_pending = True

    def _write_ier(self, value: int) -> None:
        # Enabling the THRE interrupt while THR is empty raises it at once (16550 behaviour that
        # Linux's and the BSDs' start-output paths depend on).
        if value & IER_THRI and not self.ier & IER_THRI:
            self._thre_pending = True
        changed = (value ^ self.ier) & IER_THRI
        self.ier = value
        if changed and self.on_tx_interrupt_enable is not None:
            self.on_tx_interrupt_enable(bool(value & IER_THRI))

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_ENABLE:
            self._rx.clear()        # toggling FIFO mode empties both FIFOs
        elif value & FCR_CLEAR_RX:
            self._rx.clear()
        # Clearing the (always empty) transmitter FIFO needs nothing.
        self.fcr = value & 0xC9     # bits 1-2 self-clear; 4-5 reserved
        self._refill()

    def _write_mcr(self, value: int) -> None:
        old_lines = self._msr_lines
        self.mcr = value
        if value & MCR_LOOP:
            new_lines = ((MSR_CTS if value & MCR_RTS else 0) | (MSR_DSR if value & MCR_DTR else 0)
                         | (MSR_RI if value & MCR_OUT1 else 0) | (MSR_DCD if value & MCR_OUT2 else 0))
        else:
            new_lines = MSR_LINES_UP
        self._set_msr_lines(old_lines, new_lines)

    def _set_msr_lines(self, old: int, new: int) -> None:
        changed = old ^ new
        if changed & MSR_CTS:
            self._msr_delta |= MSR_DCTS
        if changed & MSR_DSR:
            self._msr_delta |= MSR_DDSR
        if changed & MSR_DCD:
            self._msr_delta |= MSR_DDCD
        if old & MSR_RI and not new & MSR_RI:   # trailing edge of ring indicator only
            self._msr_delta |= MSR_TERI
        self._msr_lines = new

    def _read_lsr(self) -> int:
        value = LSR_THRE | LSR_TEMT
        if self._rx:
            value |= LSR_DR
        if self._overrun:
            value |= LSR_OE
            self._overrun = False
        return value

    def _read_iir(self) -> int:
        source = self._pending_source()
        if source == IIR_THRI:
            self._thre_pending = False   # reading IIR is the acknowledgement for THRE
        fifo_bits = IIR_FIFO_ON if self.fcr & FCR_ENABLE else 0
        return fifo_bits | (IIR_NO_INT if source is None else source)

    # --- receiver and interrupt state --------------------------------------------------------
    def _capacity(self) -> int:
        return FIFO_SIZE if self.fcr & FCR_ENABLE else 1

    def _receive(self, byte: int) -> None:
        if len(self._rx) >= self._capacity():
            if self.fcr & FCR_ENABLE:
                pass                              # FIFO full: the new byte is lost
            else:
                self._rx[-1] = byte               # the holding register is overwritten
            self._overrun = True
            self.overruns += 1
            return
        self._rx.append(byte)

    def _refill(self) -> None:
        capacity = self._capacity()
        while self._backlog and len(self._rx) < capacity:
            self._rx.append(self._backlog.popleft())

    def _trigger_level(self) -> int:
        return FCR_TRIGGER_LEVELS[self.fcr >> 6] if self.fcr & FCR_ENABLE else 1

    def _pending_source(self) -> int | None:
        """The highest-priority enabled interrupt source, as its IIR code, or None."""
        if self.ier & IER_RLSI and self._overrun:
            return IIR_RLSI
        if self.ier & IER_RDI and self._rx:
            return IIR_RDI if len(self._rx) >= self._trigger_level() else IIR_TIMEOUT
        if self.ier & IER_THRI and self._thre_pending:
            return IIR_THRI
        if self.ier & IER_MSI and self._msr_delta:
            return IIR_MSI
        return None

    def _update_irq(self) -> None:
        level = int(self._pending_source() is not None and bool(self.mcr & MCR_OUT2))
        if level != self._irq_level:
            self._irq_level = level
            self._ctx.set_irq(self.irq, level)

    @property
    def irq_level(self) -> int:
        return self._irq_level
