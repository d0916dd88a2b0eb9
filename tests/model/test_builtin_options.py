"""The built-in backend's option table: every value set it owns is the one its consumers act on,
every option is documented, and a bad value is refused with one line naming what is accepted."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.model.builtin_options import BUILTIN_OPTIONS, SERIAL_MODES, VIRTIO_DEVICES, option_problem

REPO = Path(__file__).resolve().parents[2]


def test_the_virtio_registry_builds_exactly_the_devices_the_table_accepts():
    from harness.devices.virtio import DEVICE_TYPES
    assert set(DEVICE_TYPES) == set(VIRTIO_DEVICES)


def test_every_coalesce_serial_value_the_table_accepts_is_a_machine_mode():
    from harness.kvm.machine import serial_coalescing
    for value in BUILTIN_OPTIONS["coalesce_serial"].choices:
        assert serial_coalescing(value) == SERIAL_MODES[value]


def test_every_option_is_documented_in_the_guest_file_reference():
    doc = (REPO / "docs" / "guest-files.md").read_text()
    section = doc.split("### Built-in backend options", 1)[1].split("\n### ", 1)[0]
    missing = [name for name in BUILTIN_OPTIONS if not re.search(rf"`{name}\b", section)]
    assert missing == []


@pytest.mark.parametrize("name, value", [
    ("coalesce_serial", True), ("coalesce_serial", "polled"), ("rescue", False), ("raw_mode", "long64"),
    ("acpi_omit", ["fadt", "madt"]), ("acpi_omit", "dsdt"), ("virtio_devices", ["blk", "rng"]),
    ("virtio_transport", "mmio"), ("disk_format", "qcow2"), ("virtio_size_max", 1 << 20), ("virtio_msix", False),
])
def test_accepted_values(name: str, value):
    assert option_problem(name, value) is None


@pytest.mark.parametrize("name, value, problem", [
    ("coalesce_serial", 1, "coalesce_serial: 1 is not true or false or polled"),
    ("coalesce_serial", "yes", "'yes' is not true or false or polled"),
    ("raw_mode", "real32", "'real32' is not real16 or protected32 or long64"),
    ("acpi_omit", ["hpet"], "['hpet'] is not a list of xsdt, fadt, madt, dsdt"),
    ("virtio_size_max", 1 << 32, "is not an integer from 1 to 4294967295"),
    ("virtio_seg_max", True, "True is not an integer"),
    ("acpi", "false", "'false' is not true or false"),
    ("colour", "blue", "unknown builtin option 'colour'"),
])
def test_refused_values_say_what_is_accepted(name: str, value, problem: str):
    found = option_problem(name, value)
    assert found is not None and problem in found[0] and found[1]


def test_boot_option_flag_refuses_a_bad_value_in_one_line():
    from harness.cli.boot_cmd import builtin_options
    from harness.errors import ConfigError
    assert builtin_options(["acpi=false", "virtio_devices=[blk, rng]"]) == {"acpi": False, "virtio_devices": ["blk", "rng"]}
    with pytest.raises(ConfigError) as e:
        builtin_options(["coalesce_serial=sometimes"])
    assert "coalesce_serial: 'sometimes' is not true or false or polled" in e.value.one_line()
    with pytest.raises(ConfigError) as e:
        builtin_options(["acpi_omit=[fadt"])
    assert "not YAML" in e.value.one_line()
