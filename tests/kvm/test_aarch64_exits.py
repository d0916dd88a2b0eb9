"""The arm64 run loop's exit handling, driven with a kvm_run the test fills in (no arm64 KVM here):
MMIO to the PL011 bus and to nothing, PSCI SYSTEM_OFF / SYSTEM_RESET, NISV data aborts, internal
errors, unknown exits; and the KVM_IRQ_LINE encoding of SPIs."""
from __future__ import annotations

import pytest

from harness import layout
from harness.boot.fdt import Aarch64Machine
from harness.devices.aarch64 import build_aarch64_devices
from harness.devices.context import DeviceContext
from harness.kvm.arch.aarch64 import ffi as a
from harness.kvm.arch.aarch64.ffi import ffi
from harness.kvm.arch.aarch64.runloop import MMIO_NO_SYNDROME, Aarch64VcpuLoop
from harness.kvm.arch.aarch64.vm import irq_line
from harness.kvm.flight import FlightRecorder
from harness.kvm.runloop import STOP_EMULATION_FAILURE, STOP_RESET, STOP_SHUTDOWN, STOP_UNKNOWN_EXIT, RunConfig
from harness.memory import GuestRam
from harness.model import events as ev
from harness.model import gap as gaps
from harness.model.gapsink import GapSink

PC = layout.A64_RAM_START + 0x1000


class FakeVcpu:
    index = 0
    thread_ident = None

    def __init__(self) -> None:
        self.run = ffi.new("struct kvm_run *")

    def current_pc(self) -> int:
        return PC

    current_rip = current_pc

    def registers(self) -> dict[str, int]:
        return {"pc": PC, "x0": 0x4700_0000}


class FakeVm:
    def __init__(self, ram: GuestRam) -> None:
        self.ram = ram


@pytest.fixture
def setup():
    ram = GuestRam.aarch64(64 * layout.MiB)
    ram.write_u32(PC, 0xD503207F)            # wfi
    out: list[bytes] = []
    events: list[ev.VmEvent] = []
    devs = build_aarch64_devices(DeviceContext(set_irq=lambda s, l: None, emit=events.append),
                                 Aarch64Machine(64 * layout.MiB), out.append)
    sink = GapSink()
    cfg = RunConfig(io_bus=None, mmio_bus=devs.mmio_bus, msr=None, gaps=sink, recorder=FlightRecorder(),
                    emit=events.append, rescue=False)
    vcpu = FakeVcpu()
    loop = Aarch64VcpuLoop(FakeVm(ram), vcpu, cfg)
    yield loop, vcpu.run, out, events, sink
    devs.close()
    ram.close()


def _mmio(run, addr: int, size: int, write: bool, value: int = 0) -> None:
    run.exit_reason = a.KVM_EXIT_MMIO
    run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = addr, size, int(write)
    for i in range(8):
        run.mmio.data[i] = (value >> (8 * i)) & 0xFF


def test_mmio_write_reaches_the_pl011_and_read_comes_back(setup):
    loop, run, out, _events, sink = setup
    _mmio(run, layout.A64_UART_BASE, 4, True, ord("A"))
    assert loop._exit(a.KVM_EXIT_MMIO) is None and out == [b"A"]
    _mmio(run, layout.A64_UART_BASE + 0xFE0, 4, False)
    loop._exit(a.KVM_EXIT_MMIO)
    assert run.mmio.data[0] == 0x11
    assert len(sink) == 0 and loop.cfg.recorder.dump()[-1]["reason"] == "mmio"


def test_unclaimed_mmio_is_a_gap_and_reads_all_ones(setup):
    loop, run, _out, _events, sink = setup
    _mmio(run, 0x0C00_0000, 4, False)
    loop._exit(a.KVM_EXIT_MMIO)
    assert bytes(run.mmio.data[0:4]) == b"\xff" * 4
    (gap,) = sink.records()
    assert gap.kind == gaps.MMIO and gap.key == "0xc000000" and gap.first_rip == PC


@pytest.mark.parametrize("kind,stop,event", [(a.KVM_SYSTEM_EVENT_SHUTDOWN, STOP_SHUTDOWN, ev.SHUTDOWN),
                                             (a.KVM_SYSTEM_EVENT_RESET, STOP_RESET, ev.RESET)])
def test_psci_system_off_and_reset(setup, kind, stop, event):
    loop, run, _out, events, _sink = setup
    run.system_event.type = kind
    info = loop._exit(a.KVM_EXIT_SYSTEM_EVENT)
    assert info.reason == stop and events[-1].type == event


def test_no_syndrome_abort_is_a_stopping_gap(setup):
    loop, run, _out, _events, sink = setup
    run.arm_nisv.fault_ipa, run.arm_nisv.esr_iss = layout.A64_UART_BASE, 0x1234
    info = loop._exit(a.KVM_EXIT_ARM_NISV)
    assert info.reason == STOP_EMULATION_FAILURE
    (gap,) = sink.records()
    assert gap.access == MMIO_NO_SYNDROME and gap.fate == gaps.FATE_STOPPED and gap.key == hex(layout.A64_UART_BASE)


def test_internal_error_names_the_instruction_word(setup):
    loop, run, _out, events, sink = setup
    run.internal.suberror, run.internal.ndata = 1, 0
    info = loop._exit(a.KVM_EXIT_INTERNAL_ERROR)
    assert info.reason == STOP_EMULATION_FAILURE and info.detail["insn"] == "d503207f"
    assert events[-1].type == ev.HOST_EMULATION_FAILURE and sink.records()[0].key == "d503207f"


def test_unknown_exit_stops_with_a_gap(setup):
    loop, _run, _out, _events, sink = setup
    assert loop._exit(55).reason == STOP_UNKNOWN_EXIT
    assert sink.records()[0].kind == gaps.UNKNOWN_EXIT


def test_spi_encoding_for_kvm_irq_line():
    assert irq_line(layout.A64_UART_SPI) == (1 << 24) | 33
    with pytest.raises(ValueError):
        irq_line(96)
    with pytest.raises(ValueError):
        irq_line(-1)
