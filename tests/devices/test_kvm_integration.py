"""The devices on a real KVM VM: tiny real-mode guests probe them and take their interrupts.

Checks what unit tests cannot: that the UART's level line and the RTC's edges reach the guest
through KVM's in-kernel PIC, and that the kernels' probe sequences pass when run by a CPU.
Needs /dev/kvm, GNU as/ld, and the KVM core (harness.kvm.machine).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.devices import DeviceSet, build_x86_devices
from harness.devices.context import DeviceContext

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs a usable /dev/kvm"),
    pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                       reason="needs GNU as/ld (binutils) to assemble the test guests"),
]

# Program both 8259s (master vectors 0x08, slave 0x70: the PC BIOS layout) and unmask `master`/`slave`.
PIC_SETUP = """
  mov al, 0x11
  out 0x20, al
  out 0xa0, al
  mov al, 0x08
  out 0x21, al
  mov al, 0x70
  out 0xa1, al
  mov al, 0x04
  out 0x21, al
  mov al, 0x02
  out 0xa1, al
  mov al, 0x01
  out 0x21, al
  out 0xa1, al
  mov al, {master}
  out 0x21, al
  mov al, {slave}
  out 0xa1, al
"""


def assemble16(source: str) -> bytes:
    """A flat real-mode binary; labels are offsets in the code segment."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "g.s").write_text(".intel_syntax noprefix\n.code16\n" + source + "\n")
        subprocess.run(["as", "--32", "-o", str(d / "g.o"), str(d / "g.s")], check=True, capture_output=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0", "--oformat", "binary", "-e", "0",
                        "-o", str(d / "g.bin"), str(d / "g.o")], check=True, capture_output=True)
        return (d / "g.bin").read_bytes()


def run(source: str, until: Callable[[bytes], bool], host: Callable[[DeviceSet, bytes], None] | None = None,
        timeout: float = 10.0) -> tuple[bytes, DeviceSet]:
    machine_mod = pytest.importorskip("harness.kvm.machine")
    rawboot = pytest.importorskip("harness.boot.raw")
    from harness.memory import GuestRam
    out: list[bytes] = []
    holder: dict[str, Any] = {}
    ctx = DeviceContext(set_irq=lambda gsi, level: holder["m"].set_irq(gsi, level), emit=lambda e: None)
    devs = build_x86_devices(ctx, out.append)
    ram = GuestRam(4 << 20)
    machine = machine_mod.Machine(ram, devs.io_bus, devs.mmio_bus, machine_mod.MachineConfig(irqchip=True, pit=True))
    holder["m"] = machine
    try:
        entry, _ = rawboot.load_raw(ram, assemble16(source), mode="real16")
        machine.set_entry(entry)
        machine.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(b"".join(out)):
            if host is not None:
                host(devs, b"".join(out))
            time.sleep(0.02)
        machine.stop()
        return b"".join(out), devs
    finally:
        machine.close()
        devs.close()
        ram.close()


PRINT = """
print:
  mov al, cs:[si]
  test al, al
  jz done
  mov dx, 0x3f8
  out dx, al
  inc si
  jmp print
done:
  jmp done
"""


def test_probes_and_rtc_periodic_interrupt_on_kvm() -> None:
    source = """
  cli
  mov dx, 0x3fb
  mov al, 3
  out dx, al
  mov dx, 0x3fa
  mov al, 0
  out dx, al
  mov dx, 0x3fb
  in al, dx
  cmp al, 3
  jne fail
  mov dx, 0x3fa
  in al, dx
  test al, 0x38
  jnz fail
  mov al, 0xe7
  out dx, al
  in al, dx
  and al, 0xc0
  cmp al, 0xc0
  jne fail
  mov al, 0x0d
  out 0x70, al
  in al, 0x71
  cmp al, 0x80
  jne fail
  mov dx, 0xcf8
  mov eax, 0x80000000
  out dx, eax
  mov dx, 0xcfc
  in eax, dx
  cmp eax, 0x12378086
  jne fail
""" + PIC_SETUP.format(master="0xfb", slave="0xfe") + """
  mov word ptr [0x1c0], offset handler
  mov word ptr [0x1c2], 0x1000
  mov al, 0x0a
  out 0x70, al
  mov al, 0x2a
  out 0x71, al
  mov al, 0x0b
  out 0x70, al
  mov al, 0x42
  out 0x71, al
  mov al, 0x0c
  out 0x70, al
  in al, 0x71
  sti
wait:
  hlt
  cmp word ptr cs:[count], 32
  jb wait
  cli
  mov si, offset okmsg
  jmp print
fail:
  mov si, offset failmsg
  jmp print
handler:
  push ax
  mov al, 0x0c
  out 0x70, al
  in al, 0x71
  inc word ptr cs:[count]
  mov al, 0x20
  out 0xa0, al
  out 0x20, al
  pop ax
  iret
""" + PRINT + """
count: .word 0
okmsg: .asciz "OK\\n"
failmsg: .asciz "FAIL\\n"
"""
    start = time.monotonic()
    out, devs = run(source, until=lambda o: o.endswith(b"\n"))
    elapsed = time.monotonic() - start
    assert out == b"OK\n"
    assert devs.rtc.interrupts >= 32
    assert elapsed > 0.4          # 32 ticks at 64 Hz cannot come faster than half a second


def test_uart_rx_interrupts_on_kvm() -> None:
    """IRQ 4 handler drains the FIFO and echoes each byte; the host queues more than a FIFO's worth."""
    source = "  cli\n" + PIC_SETUP.format(master="0xef", slave="0xff") + """
  mov word ptr [0x30], offset handler
  mov word ptr [0x32], 0x1000
  mov dx, 0x3fa
  mov al, 0xc7
  out dx, al
  mov dx, 0x3fc
  mov al, 0x0b
  out dx, al
  mov dx, 0x3f9
  mov al, 0x01
  out dx, al
  mov dx, 0x3f8
  mov al, '>'
  out dx, al
  sti
wait:
  hlt
  jmp wait
handler:
  push ax
  push dx
again:
  mov dx, 0x3fd
  in al, dx
  test al, 1
  jz eoi
  mov dx, 0x3f8
  in al, dx
  out dx, al
  jmp again
eoi:
  mov al, 0x20
  out 0x20, al
  pop dx
  pop ax
  iret
"""
    message = b"interrupt-driven input, longer than one sixteen-byte FIFO\n"
    sent = []

    def host(devs: DeviceSet, out: bytes) -> None:
        if out.startswith(b">") and not sent:
            sent.append(True)
            devs.uart.feed(message)

    out, devs = run(source, until=lambda o: o.endswith(b"\n"), host=host)
    assert out == b">" + message
    assert devs.uart.overruns == 0
