"""Whole-machine behaviour: stopping a spinning guest, several VMs at once, SMP, coalesced serial."""
from __future__ import annotations

import threading
import time

import pytest

from kvm_guests import needs_as, needs_kvm, run_guest
from kvm_guests import FakeBus, FakeDevice, assemble
from harness import layout

pytestmark = [needs_kvm, needs_as]


def _machine(source, bits=16, io=None, **config):
    from harness.kvm.machine import Machine, MachineConfig
    from harness.boot.raw import load_raw
    from harness.memory import GuestRam
    ram = GuestRam(4 << 20)
    config.setdefault("irqchip", False)
    config.setdefault("pit", config["irqchip"])
    m = Machine(ram, io or FakeBus(), FakeBus(), MachineConfig(**config))
    entry, _ = load_raw(ram, assemble(source, bits), mode={16: "real16", 32: "protected32"}[bits])
    m.set_entry(entry)
    return m


def test_stop_interrupts_a_guest_that_never_exits():
    m = _machine("1: jmp 1b")
    m.start()
    time.sleep(0.2)
    assert m.wait(0) is None
    t0 = time.monotonic()
    info = m.stop()
    assert info is not None and info.reason == "stopped"
    assert time.monotonic() - t0 < 2.0
    m.close()


def test_stop_wakes_a_vcpu_halted_in_kernel():
    """With the in-kernel irqchip HLT never exits to user space: stop must still get the vCPU out."""
    m = _machine("cli\nhlt", irqchip=True)
    m.start()
    time.sleep(0.2)
    info = m.stop()
    assert info is not None and info.reason == "stopped"
    m.close()


COUNT_OUTS = """
    mov ecx, {n}
    mov dx, 0x10
1:  out dx, al
    dec ecx
    jnz 1b
    hlt"""


def test_two_vms_in_one_process_run_concurrently():
    results = {}

    def one(name):
        io, dev = FakeBus(), FakeDevice()
        io.register(0x10, 1, dev)
        results[name] = (run_guest(COUNT_OUTS.format(n=2000), io=io), dev)

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for name in ("a", "b"):
        run, dev = results[name]
        assert run.stop.reason == "halt"
        assert len(dev.writes) == 2000
        assert run.summary["exit_counts"]["io"] == 2000


def test_two_vcpus_ap_waits_for_sipi_and_both_stop():
    io, dev = FakeBus(), FakeDevice()
    io.register(0x10, 1, dev)
    m = _machine("mov dx, 0x10\nout dx, al\n1: jmp 1b", io=io, irqchip=True, vcpus=2)
    m.start()
    deadline = time.monotonic() + 5
    while not dev.writes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(dev.writes) == 1            # only the BSP ran: the AP is parked until INIT/SIPI
    info = m.stop()
    assert info.reason == "stopped"
    assert all(loop.stopped_by is not None for loop in m.loops)
    m.close()


def test_more_vcpus_than_kvm_allows_is_a_config_error():
    from harness.errors import ConfigError
    with pytest.raises(ConfigError):
        _machine("hlt", vcpus=100000, irqchip=True)


# The string at DS:SI to COM1 one OUT per byte, then a write to port 0x10 (the test's marker).
PUTS = f"""
puts:
    mov dx, {layout.COM1_PORT}
1:  lodsb
    test al, al
    jz 2f
    out dx, al
    jmp 1b
2:  mov dx, 0x10
    out dx, al
    ret
"""

SERIAL = f"""
    mov dx, {layout.COM1_PORT + 3}
    mov al, 0x80
    out dx, al              # DLAB on
    mov dx, {layout.COM1_PORT}
    mov al, 0x01
    out dx, al              # divisor low (coalesced: must not be printed)
    mov dx, {layout.COM1_PORT + 1}
    mov al, 0x00
    out dx, al
    mov dx, {layout.COM1_PORT + 3}
    mov al, 0x03
    out dx, al              # 8N1, DLAB off
    mov ax, cs
    mov ds, ax
    mov si, offset msg
    call puts
    hlt
{PUTS}
msg: .asciz "coalesced serial output, replayed in order through the UART\\n"
"""


def _uart_run(coalesce: bool):
    from harness.devices.bus import Bus
    from harness.devices.context import DeviceContext
    from harness.devices.uart16550 import Uart16550
    out = bytearray()
    io = Bus("io")
    uart = Uart16550(DeviceContext(set_irq=lambda g, lvl: None, emit=lambda e: None), layout.COM1_IRQ, out.extend)
    io.register(layout.COM1_PORT, 8, uart, "com1")
    marker = FakeDevice()
    io.register(0x10, 1, marker, "marker")
    run = run_guest(SERIAL, io=io, coalesce_serial=coalesce)
    return run, bytes(out), uart


def test_serial_output_coalesced_with_dlab_handled():
    run, out, uart = _uart_run(True)
    text = b"coalesced serial output, replayed in order through the UART\n"
    assert run.stop.reason == "halt"
    assert out == text
    assert uart.divisor == 1
    io_exits = run.summary["exit_counts"]["io"]
    if run.summary["coalesced_serial"]:
        assert io_exits <= 4             # LCR x2, DLM, marker: no exit per character
        assert io_exits / len(text) < 0.1
    assert run.summary["exit_counts"]["io"] < len(text)


def test_serial_output_without_coalescing_is_one_exit_per_byte():
    run, out, _ = _uart_run(False)
    assert out.endswith(b"UART\n")
    assert run.summary["exit_counts"]["io"] >= len(out) + 4


def test_periodic_drain_flushes_output_of_a_spinning_guest():
    from harness.devices.bus import Bus
    from harness.devices.context import DeviceContext
    from harness.devices.uart16550 import Uart16550
    out = bytearray()
    io = Bus("io")
    io.register(layout.COM1_PORT, 8, Uart16550(DeviceContext(lambda g, lvl: None, lambda e: None),
                                              layout.COM1_IRQ, out.extend), "com1")
    m = _machine(f"mov dx, {layout.COM1_PORT}\nmov al, 0x4f\nout dx, al\nmov al, 0x4b\nout dx, al\n1: jmp 1b", io=io)
    m.start()
    deadline = time.monotonic() + 3
    while out != b"OK" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert out == b"OK"                  # no exit after the writes: the drainer thread replayed them
    m.stop()
    m.close()


# Three lines: polled (IER = 0), by interrupt (IER.THRI on), polled again; port 0x10 marks each end.
SERIAL_MODES = f"""
    mov ax, cs
    mov ds, ax
    mov si, offset polled
    call puts
    mov dx, {layout.COM1_PORT + 1}
    mov al, 0x02
    out dx, al              # IER: THR-empty interrupt on
    mov si, offset irq
    call puts
    mov dx, {layout.COM1_PORT + 1}
    xor al, al
    out dx, al              # IER: off again
    mov si, offset again
    call puts
    hlt
{PUTS}
polled: .asciz "batched while the guest polls\\n"
irq:    .asciz "one exit per byte by interrupt\\n"
again:  .asciz "batched again\\n"
"""


def test_polled_serial_batches_only_while_the_thre_interrupt_is_off():
    """coalesce_serial: polled batches the kernel's polled console but lets every THR write of an
    interrupt-driven transmitter exit, so its THRE interrupts come on time; output stays in order."""
    from harness.devices.bus import Bus
    from harness.devices.context import DeviceContext
    from harness.devices.uart16550 import Uart16550
    out = bytearray()
    io = Bus("io")
    uart = Uart16550(DeviceContext(set_irq=lambda g, lvl: None, emit=lambda e: None), layout.COM1_IRQ, out.extend)
    io.register(layout.COM1_PORT, 8, uart, "com1")
    marks = []
    counts = []
    m = _machine(SERIAL_MODES, io=io, coalesce_serial="polled")
    uart.on_tx_interrupt_enable = lambda enabled: m.batch_serial(not enabled)   # as builtin_vm wires it

    class Marker:
        def read(self, offset, size):
            return 0

        def write(self, offset, size, value):
            marks.append(bytes(out))
            counts.append(m.loops[0].counts[2])   # io exits so far

    io.register(0x10, 1, Marker(), "marker")
    try:
        if not m.coalesced_serial:
            pytest.skip("this KVM has no coalesced PIO")
        m.start()
        assert m.wait(10).reason == "halt"
        summary = m.summary()
    finally:
        m.close()
    polled, irq, again = b"batched while the guest polls\n", b"one exit per byte by interrupt\n", b"batched again\n"
    assert bytes(out) == polled + irq + again
    assert marks == [polled, polled + irq, polled + irq + again]   # each line out before its marker
    assert counts[0] <= 1                                 # the marker itself: no exit per byte
    assert counts[1] - counts[0] >= len(irq) + 1          # IER write + every byte
    assert counts[2] - counts[1] <= 3                     # IER write + marker
    assert summary["serial_mode"] == "polled" and summary["serial_batch_toggles"] == 2


def test_an_unknown_serial_mode_is_a_config_error():
    from harness.errors import ConfigError
    with pytest.raises(ConfigError) as exc:
        _machine("hlt", coalesce_serial="sometimes")
    assert "coalesce_serial 'sometimes'" in exc.value.problem and "polled" in exc.value.fix
