"""The one record type for an emulation gap, shared by every backend and the ledger.

A backend emits a GapRecord each time a guest touches something the hypervisor does not
provide (or provides only by a rescue). The ledger (harness.gaps.ledger) deduplicates them
per cell by `key_tuple()`, counts repeats, and assigns the boot phase from milestone times.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from harness.model.record import JsonRecord

# Kinds, named after what the guest did. Add new kinds here, never ad hoc strings elsewhere.
MSR_READ = "msr-read"
MSR_WRITE = "msr-write"
MTRR_PROBE = "mtrr-probe"            # MTRRcap / MTRR range / PAT / MTRRdefType access
TSC_MSR = "tsc-msr"                  # MSR 0x10 read or written
IO_PORT = "io-port"                  # port access nothing claimed
REP_STRING_IO = "rep-string-io"      # REP INS/OUTS (recorded so the count/size path is visible)
MMIO = "mmio"                        # MMIO access nothing claimed
PCI_CONFIG = "pci-config"            # config-space access to an absent device/function
I8042_WAIT = "i8042-wait"            # guest polling the 8042 status register
HOST_EMULATION_FAILURE = "host-emulation-failure"
RESCUED_INSTRUCTION = "rescued-instruction"
MASKED_CPUID = "masked-cpuid"        # a CPUID feature the profile hid from the guest
TRIPLE_FAULT = "triple-fault"
FAIL_ENTRY = "fail-entry"
QEMU_UNIMPLEMENTED = "qemu-unimplemented"
QEMU_GUEST_ERROR = "qemu-guest-error"
UNKNOWN_EXIT = "unknown-exit"
FIRMWARE_TABLE_MISSING = "firmware-table-missing"   # an ACPI / MP table the guest options turned off
FIRMWARE_TABLE_READ = "firmware-table-read"         # a firmware table the guest read (watched tables)
VIRTIO_FEATURE = "virtio-feature"                   # a virtio feature bit the driver asked for, not offered
VIRTIO_CONFIG = "virtio-config"                     # a device-config field we do not model
VIRTIO_QUEUE = "virtio-queue"                       # a bad descriptor/index/length: the device stopped
FIRMWARE_BOOT = "firmware-boot"                     # a firmware (UEFI) boot this VMM cannot do for the arch

KINDS = (MSR_READ, MSR_WRITE, MTRR_PROBE, TSC_MSR, IO_PORT, REP_STRING_IO, MMIO, PCI_CONFIG, I8042_WAIT,
         HOST_EMULATION_FAILURE, RESCUED_INSTRUCTION, MASKED_CPUID, TRIPLE_FAULT, FAIL_ENTRY,
         QEMU_UNIMPLEMENTED, QEMU_GUEST_ERROR, UNKNOWN_EXIT, FIRMWARE_TABLE_MISSING, FIRMWARE_TABLE_READ,
         VIRTIO_FEATURE, VIRTIO_CONFIG, VIRTIO_QUEUE, FIRMWARE_BOOT)

# Gap policies: how the built-in hypervisor answers an MSR it does not provide (a matrix axis).
GAP_POLICIES = {
    "gp": "inject #GP (what a CPU without the MSR does)",
    "zero": "reads return 0, writes are ignored",
    "emulate": "answer as hardware would: the real TSC, MTRRcap, stored MTRRs/PAT, other MSRs read back what was written",
}

# What happened to the guest after the gap.
FATE_CONTINUED = "continued"   # the guest went on (value answered, write ignored, rescue applied)
FATE_GP_INJECTED = "gp-injected"
FATE_STOPPED = "stopped"       # the VM could not go on
# A stronger fate wins when repeats of one gap are merged.
FATE_RANK = {FATE_CONTINUED: 0, FATE_GP_INJECTED: 1, FATE_STOPPED: 2}


@dataclass
class GapRecord(JsonRecord):
    kind: str                     # one of KINDS
    key: str                      # MSR index "0x10", port "0x3fa", address "0xfed00000", mnemonic "xrstor"
    first_rip: int | None = None
    values: list[int] = field(default_factory=list)  # first few values written/read (bounded)
    count: int = 1
    policy: str = ""              # gap policy applied: gp | zero | emulate | "" (not applicable)
    fate: str = FATE_CONTINUED
    access: str = ""              # "read" | "write" | "" ; size in bytes for ports/MMIO in detail
    detail: dict[str, Any] = field(default_factory=dict)  # kind-specific: size, decoded insn, registers...
    first_t: float | None = None  # host CLOCK_MONOTONIC when first seen (time.monotonic())
    phase: str | None = None      # last milestone before first_t; filled by the ledger
    vcpu: int | None = None

    MAX_VALUES = 8

    def key_tuple(self) -> tuple[str, str, str]:
        return (self.kind, self.key, self.access)

    def copy(self) -> "GapRecord":
        """An independent copy (lists and detail not shared): later merges must not reach it."""
        return GapRecord.from_json(copy.deepcopy(self.to_json()))

    def merge(self, other: "GapRecord") -> None:
        """Fold a repeat of the same gap into this record: the one merge rule (the VMM's GapSink,
        the QEMU backend and the ledger all use it). Counts add up; the first few distinct values
        are kept; the earliest sighting gives first_t and, when it has one, first_rip; the stronger
        fate wins; policy and detail keys this record lacks are taken from the repeat."""
        self.count += other.count
        for v in other.values:
            if len(self.values) >= self.MAX_VALUES:
                break
            if v not in self.values:
                self.values.append(v)
        if other.first_t is not None and (self.first_t is None or other.first_t < self.first_t):
            self.first_t = other.first_t
            if other.first_rip is not None:
                self.first_rip = other.first_rip
        if self.first_rip is None:
            self.first_rip = other.first_rip
        if FATE_RANK.get(other.fate, 0) > FATE_RANK.get(self.fate, 0):
            self.fate = other.fate
        if not self.policy and other.policy:
            self.policy = other.policy
        for k, v in other.detail.items():
            self.detail.setdefault(k, v)
