"""The arm64 Machine's `coalesce_serial: polled`: PL011 DR writes are batched while the guest masks
the TX interrupt and exit again while it unmasks it, counted in the summary. The zone calls are
checked against a recording VM (the real ring is exercised by the aarch64 lab's Linux cell)."""
from __future__ import annotations

from harness.kvm.arch.aarch64.machine import Aarch64KvmMachine, Aarch64MachineConfig

DR_ADDRESS = 0x0900_0000


class ZoneRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def coalesce_mmio(self, addr: int, size: int) -> bool:
        self.calls.append(("coalesce", addr, size))
        return True

    def uncoalesce_mmio(self, addr: int, size: int) -> None:
        self.calls.append(("uncoalesce", addr, size))


def machine_in_mode(mode) -> tuple[Aarch64KvmMachine, ZoneRecorder]:
    """The batching half of Aarch64KvmMachine.__init__, on a recording VM instead of /dev/kvm."""
    m = Aarch64KvmMachine.__new__(Aarch64KvmMachine)
    m.config = Aarch64MachineConfig(coalesce_serial=mode, serial_data_register=DR_ADDRESS)
    m.vm = vm = ZoneRecorder()
    Aarch64KvmMachine._init_serial_batching(m)
    return m, vm


def test_polled_batches_only_while_the_tx_interrupt_is_masked():
    m, vm = machine_in_mode("polled")
    assert m.serial_mode == "polled" and m.coalesced_serial
    m.batch_serial(False)        # the guest unmasked TXIM: every DR write exits
    m.batch_serial(False)        # already so: no ioctl
    m.batch_serial(True)
    assert vm.calls == [("coalesce", DR_ADDRESS, 4), ("uncoalesce", DR_ADDRESS, 4), ("coalesce", DR_ADDRESS, 4)]
    assert m.serial_batch_toggles == 2


def test_on_batches_always_and_off_never():
    on, vm_on = machine_in_mode(True)
    on.batch_serial(False)
    assert on.serial_mode == "on" and vm_on.calls == [("coalesce", DR_ADDRESS, 4)] and on.serial_batch_toggles == 0
    off, vm_off = machine_in_mode(False)
    off.batch_serial(True)
    assert off.serial_mode == "off" and not off.coalesced_serial and vm_off.calls == []
