"""The built-in backend's options (guest file `builtin:`, `harness boot --option`): names, values.

One table says what each option accepts, so a bad value is one line when the guest file is
loaded (with its line number) or when `--option` is parsed, not a VMM child's failure minutes
into a run. The value sets that name things are owned here and imported by the code that acts
on them (the x86 Machine's serial modes, the raw loader's modes, the virtio transports, the ACPI
tables that may be left out); the virtio device names are the virtio registry's keys, which
tests/model/test_builtin_options.py holds to this table; the disk formats are the disk code's
own (harness.devices.virtio.disk, which also detects them).
docs/guest-files.md explains each option.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# coalesce_serial: the guest file's value -> the serial batching mode (harness.kvm.machine)
SERIAL_MODES: dict[Any, str] = {True: "on", False: "off", "on": "on", "off": "off", "polled": "polled"}
RAW_MODES = ("real16", "protected32", "long64")
VIRTIO_TRANSPORTS = ("pci", "mmio")
VIRTIO_DEVICES = ("blk", "console", "rng")
DISK_FORMATS = ("auto", "raw", "qcow2")
ACPI_TABLES = ("xsdt", "fadt", "madt", "dsdt")   # what acpi_omit may name
U32_MAX = 0xFFFF_FFFF


@dataclass(frozen=True)
class OptionSpec:
    """What one option accepts: `kind` bool | choice | choices (a list of choices) | int."""
    kind: str
    choices: tuple[Any, ...] = ()
    low: int = 0
    high: int = U32_MAX

    def problem(self, name: str, value: Any) -> tuple[str, str] | None:
        """(problem, fix) when `value` is not acceptable for option `name`, else None."""
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "choice":
            ok = any(value == c and type(value) is type(c) for c in self.choices)
        elif self.kind == "choices":
            ok = isinstance(value, (list, str)) and all(v in self.choices for v in _as_list(value))
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
        if ok:
            return None
        return f"builtin option {name}: {value!r} is not {self.describe()}", f"set {name} to {self.describe()}"

    def describe(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return " or ".join(_yaml(c) for c in self.choices)
        if self.kind == "choices":
            return f"a list of {', '.join(map(str, self.choices))}"
        return f"an integer from {self.low} to {self.high}"


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value)


def _yaml(value: Any) -> str:
    return {True: "true", False: "false"}.get(value, str(value)) if isinstance(value, bool) else str(value)


BOOL = OptionSpec("bool")
BUILTIN_OPTIONS: dict[str, OptionSpec] = {
    "coalesce_serial": OptionSpec("choice", (True, False, "polled")),
    "rescue": BOOL,
    "raw_mode": OptionSpec("choice", RAW_MODES),
    "acpi": BOOL,
    "mptable": BOOL,
    "acpi_omit": OptionSpec("choices", ACPI_TABLES),
    "acpi_watch": BOOL,
    "virtio_transport": OptionSpec("choice", VIRTIO_TRANSPORTS),
    "virtio_devices": OptionSpec("choices", VIRTIO_DEVICES),
    "disk_format": OptionSpec("choice", DISK_FORMATS),
    "virtio_size_max": OptionSpec("int", low=1),
    "virtio_seg_max": OptionSpec("int", low=1),
    "virtio_mmio_cmdline": BOOL,
    "virtio_msix": BOOL,
}


def option_problem(name: str, value: Any) -> tuple[str, str] | None:
    """(problem, fix) for an unknown option or a value it does not accept, else None."""
    spec = BUILTIN_OPTIONS.get(name)
    if spec is None:
        return f"unknown builtin option {name!r}", f"use one of: {', '.join(BUILTIN_OPTIONS)}"
    return spec.problem(name, value)
