"""An Intel 8042 keyboard controller with a keyboard that answers but never types.

Spec facts followed (IBM PC/AT technical reference; Linux drivers/input/serio/i8042.c;
NetBSD/OpenBSD pckbc):
- Port 0x60 is data, port 0x64 reads status and takes controller commands.
- Status: OBF (bit 0) when a byte waits at 0x60; IBF (bit 1) is always 0 since commands complete at
  once; SYS (bit 2) mirrors the command byte's system flag (set after the self test, as after POST);
  A2 (bit 3) says whether the last write went to 0x64; bit 4 keyboard not inhibited; AUXB (bit 5)
  when the waiting byte came from the aux port.
- Command byte (0x20 read / 0x60 write): bit 0 keyboard IRQ 1, bit 1 aux IRQ 12, bit 2 SYS, bit 4
  keyboard disabled, bit 5 aux disabled, bit 6 scan-code translation.
- Commands: 0xAA self test -> 0x55; 0xAB / 0xA9 interface tests -> 0x00; 0xAD/0xAE disable/enable
  keyboard; 0xA7/0xA8 disable/enable aux; 0xC0 input port; 0xD0 / 0xD1 read / write output port
  (bit 0 low = system reset, bit 1 = A20); 0xD2 / 0xD3 echo a byte as keyboard / aux data;
  0xD4 send a byte to the aux device (none here: it answers 0xFE, "resend", so drivers give up at
  once instead of timing out); 0xF0-0xFF pulse output-port bits low: bit 0 low (0xFE) resets.
- Keyboard (bytes written to 0x60 with no command pending): 0xFF reset -> 0xFA 0xAA; 0xF2 identify
  -> 0xFA 0xAB 0x83 (0x41 while the controller translates); 0xEE echo -> 0xEE; 0xED/0xF3/0xF0
  take a parameter, each byte acked 0xFA (0xF0 0x00 reports set 2, 0x41 when translated);
  anything else is acked 0xFA.
- A byte placed in the output buffer raises IRQ 1 (or 12 for aux) when the command byte enables it;
  the line drops when the byte is read. Reading 0x60 with nothing waiting returns the last byte.
- Guests poll the status register while they wait for the controller: every POLL_REPORT_EVERY
  status reads become one i8042-wait gap record with that count (the ledger sums them).
"""
from __future__ import annotations

import threading
from collections import Counter, deque

from harness import layout
from harness.devices.context import DeviceContext
from harness.model.events import RESET, VmEvent
from harness.model.gap import I8042_WAIT, GapRecord

KBD_IRQ, AUX_IRQ = 1, 12

ST_OBF, ST_IBF, ST_SYS, ST_CMD, ST_UNLOCKED, ST_AUXB = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
CB_KBD_INT, CB_AUX_INT, CB_SYS, CB_KBD_OFF, CB_AUX_OFF, CB_XLATE = 0x01, 0x02, 0x04, 0x10, 0x20, 0x40
DEFAULT_COMMAND_BYTE = CB_KBD_INT | CB_SYS | CB_XLATE   # 0x45, what a PC BIOS leaves
DEFAULT_OUTPUT_PORT = 0x03   # not in reset, A20 enabled

ACK, RESEND, BAT_OK, ECHO = 0xFA, 0xFE, 0xAA, 0xEE
POLL_REPORT_EVERY = 1000


class PortView:
    """One port of a multi-port device, registered on the bus on its own.

    The 8042 owns 0x60 and 0x64 but not 0x61-0x63 (KVM's PIT serves 0x61), so it is registered
    as two one-port ranges; each view forwards with the port's offset from the device's base.
    """

    access_width = 1

    def __init__(self, device: "I8042", offset: int) -> None:
        self.device = device
        self.offset = offset

    def read(self, offset: int, size: int) -> int:
        return self.device.read(self.offset + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.device.write(self.offset + offset, size, value)


class I8042:
    """Offsets are from port 0x60; register `.data_port` at 0x60 and `.command_port` at 0x64."""

    access_width = 1

    def __init__(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        self._lock = threading.RLock()
        self._out: deque[tuple[int, bool]] = deque()   # (byte, from_aux)
        self._last = 0
        self._last_aux = False
        self.command_byte = DEFAULT_COMMAND_BYTE
        self.output_port = DEFAULT_OUTPUT_PORT
        self._pending_cmd: int | None = None    # controller command waiting for its data byte
        self._kbd_pending: int | None = None    # keyboard command waiting for its parameter
        self._last_write_cmd = False
        self._irq_levels = {KBD_IRQ: 0, AUX_IRQ: 0}
        self.status_polls = 0
        self._unreported_polls = 0
        self._first_poll_t: float | None = None
        self.unknown_commands: Counter[int] = Counter()
        self.resets = 0
        self.data_port = PortView(self, 0)
        self.command_port = PortView(self, layout.I8042_CMD_PORT - layout.I8042_DATA_PORT)

    # --- bus interface (offset 0 = port 0x60, offset 4 = port 0x64) ---------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if offset == layout.I8042_CMD_PORT - layout.I8042_DATA_PORT:
                return self._read_status()
            return self._read_data()

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if offset == layout.I8042_CMD_PORT - layout.I8042_DATA_PORT:
                self._last_write_cmd = True
                self._command(value)
            else:
                self._last_write_cmd = False
                self._data(value)
            self._update_irqs()

    def flush_gaps(self) -> None:
        """Report the polls counted since the last record (only if the guest was waiting at all)."""
        with self._lock:
            if self._unreported_polls and self.status_polls >= POLL_REPORT_EVERY:
                self._report_polls()

    # --- status and data ----------------------------------------------------------------------
    def _read_status(self) -> int:
        self.status_polls += 1
        self._unreported_polls += 1
        if self._first_poll_t is None:
            self._first_poll_t = self._ctx.now()
        if self._unreported_polls >= POLL_REPORT_EVERY:
            self._report_polls()
        status = ST_UNLOCKED
        if self.command_byte & CB_SYS:
            status |= ST_SYS
        if self._last_write_cmd:
            status |= ST_CMD
        if self._out:
            status |= ST_OBF | (ST_AUXB if self._out[0][1] else 0)
        return status

    def _report_polls(self) -> None:
        self._ctx.gap(GapRecord(kind=I8042_WAIT, key=hex(layout.I8042_CMD_PORT), count=self._unreported_polls,
                                access="read", first_t=self._first_poll_t,
                                detail={"polls_total": self.status_polls}))
        self._unreported_polls = 0

    def _read_data(self) -> int:
        if self._out:
            self._last, self._last_aux = self._out.popleft()
            self._update_irqs()
        return self._last

    def _push(self, *data: int, aux: bool = False) -> None:
        for byte in data:
            self._out.append((byte & 0xFF, aux))

    def _update_irqs(self) -> None:
        head_aux = self._out[0][1] if self._out else None
        want = {KBD_IRQ: int(head_aux is False and bool(self.command_byte & CB_KBD_INT)),
                AUX_IRQ: int(head_aux is True and bool(self.command_byte & CB_AUX_INT))}
        for irq, level in want.items():
            if level != self._irq_levels[irq]:
                self._irq_levels[irq] = level
                self._ctx.set_irq(irq, level)

    # --- controller commands -----------------------------------------------------------------
    def _command(self, cmd: int) -> None:
        self._pending_cmd = None
        if cmd in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self._pending_cmd = cmd          # the next byte at 0x60 is this command's data
        elif cmd == 0x20:
            self._push(self.command_byte)
        elif cmd == 0xAA:
            self.command_byte |= CB_SYS
            self._push(0x55)
        elif cmd in (0xAB, 0xA9):
            self._push(0x00)
        elif cmd in (0xAD, 0xAE):
            self.command_byte = self.command_byte | CB_KBD_OFF if cmd == 0xAD else self.command_byte & ~CB_KBD_OFF
        elif cmd in (0xA7, 0xA8):
            self.command_byte = self.command_byte | CB_AUX_OFF if cmd == 0xA7 else self.command_byte & ~CB_AUX_OFF
        elif cmd == 0xC0:
            self._push(0x80)                 # keyboard not inhibited
        elif cmd == 0xD0:
            self._push(self.output_port)
        elif cmd >= 0xF0:
            if not cmd & 0x01:               # pulsing output bit 0 low resets the CPU
                self._reset(f"command {cmd:#04x}")
        else:
            self.unknown_commands[cmd] += 1

    def _data(self, value: int) -> None:
        cmd, self._pending_cmd = self._pending_cmd, None
        if cmd == 0x60:
            self.command_byte = value
        elif cmd == 0xD1:
            self.output_port = value
            if not value & 0x01:
                self._reset("output port write")
        elif cmd == 0xD2:
            self._push(value)
        elif cmd == 0xD3:
            self._push(value, aux=True)
        elif cmd == 0xD4:
            self._push(RESEND, aux=True)     # no mouse behind the aux port
        else:
            self._keyboard(value)

    def _keyboard(self, value: int) -> None:
        pending, self._kbd_pending = self._kbd_pending, None
        if pending is not None:
            self._push(ACK)
            if pending == 0xF0 and value == 0x00:
                self._push(0x41 if self.command_byte & CB_XLATE else 0x02)  # current scan-code set
            return
        if value == 0xFF:
            self._push(ACK, BAT_OK)
        elif value == 0xF2:
            # An MF2 keyboard; the controller's translation turns its 0x83 into 0x41.
            self._push(ACK, 0xAB, 0x41 if self.command_byte & CB_XLATE else 0x83)
        elif value == ECHO:
            self._push(ECHO)
        elif value in (0xED, 0xF3, 0xF0):
            self._kbd_pending = value
            self._push(ACK)
        else:
            self._push(ACK)

    def _reset(self, why: str) -> None:
        self.resets += 1
        self._ctx.emit(VmEvent(RESET, self._ctx.now(), {"source": "i8042", "why": why}))
