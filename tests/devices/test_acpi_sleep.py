from harness import layout
from harness.devices import build_x86_devices
from harness.devices.acpi_sleep import SLP_EN, SLP_TYP_SHIFT
from harness.firmware.acpi import S5_SLP_TYP
from harness.model.events import SHUTDOWN
from harness.model.gap import IO_PORT


def test_s5_through_the_sleep_control_register_powers_off(rec):
    devs = build_x86_devices(rec.context(), lambda b: None)
    devs.io_bus.write(layout.ACPI_SLEEP_CONTROL_PORT, 1, S5_SLP_TYP << SLP_TYP_SHIFT)   # SLP_EN clear: nothing
    assert not rec.events
    devs.io_bus.write(layout.ACPI_SLEEP_CONTROL_PORT, 1, (S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN)
    assert [e.type for e in rec.events] == [SHUTDOWN]
    devs.close()


def test_other_sleep_states_are_gaps(rec):
    devs = build_x86_devices(rec.context(), lambda b: None)
    devs.io_bus.write(layout.ACPI_SLEEP_CONTROL_PORT, 1, (3 << SLP_TYP_SHIFT) | SLP_EN)      # S3
    assert not rec.events and [g.kind for g in rec.gaps] == [IO_PORT]
    assert devs.io_bus.read(layout.ACPI_SLEEP_CONTROL_PORT + 1, 1) == 0                     # WAK_STS clear
    devs.close()
