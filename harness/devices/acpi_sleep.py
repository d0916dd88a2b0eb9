"""The hardware-reduced ACPI sleep registers (ACPI 6.5, 4.8.3.7): how a guest powers off.

The FADT names SLEEP_CONTROL_REG and SLEEP_STATUS_REG (one byte each, system I/O, at
layout.ACPI_SLEEP_CONTROL_PORT / +1). OSPM writes SLP_TYPx (bits 4:2, the value from the DSDT's
\\_S5 package) with SLP_EN (bit 5) to enter a sleep state; the harness models S5 only (soft off:
a SHUTDOWN event, which ends the VM) and records any other state as an io-port gap. The status
register's WAK_STS (bit 7) reads 0 and is write-1-to-clear.
"""
from __future__ import annotations

from harness.devices.context import DeviceContext
from harness.firmware.acpi import S5_SLP_TYP    # the \_S5 package the DSDT gives OSPM
from harness.model.events import SHUTDOWN, VmEvent
from harness.model.gap import IO_PORT, GapRecord

SLP_EN = 1 << 5
SLP_TYP_SHIFT, SLP_TYP_MASK = 2, 0x7
CONTROL, STATUS = 0, 1


class AcpiSleep:
    access_width = 1

    def __init__(self, ctx: DeviceContext, port: int) -> None:
        self._ctx = ctx
        self.port = port
        self.control = 0

    def read(self, offset: int, size: int) -> int:
        return self.control if offset == CONTROL else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != CONTROL:
            return                              # STATUS: WAK_STS write-1-to-clear, never set here
        self.control = value & ~SLP_EN & 0xFF
        if not value & SLP_EN:
            return
        state = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK
        if state == S5_SLP_TYP:
            self._ctx.emit(VmEvent(SHUTDOWN, self._ctx.now(), {"source": "acpi-sleep-control", "slp_typ": state}))
        else:
            self._ctx.gap(GapRecord(kind=IO_PORT, key=f"{self.port:#x}", access="write", values=[value],
                                    detail={"what": f"ACPI sleep state SLP_TYP={state} (only S5 is modelled)"}))
