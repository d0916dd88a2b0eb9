"""One description of the machine a guest sees, from which every firmware table is generated.

ACPI (MADT, DSDT), the MP table and the virtio-mmio command-line hints all read the same
`MachineDescription`: the CPUs, the IOAPIC, the ISA devices with their ports and lines, the
virtio-mmio slots and the PCI functions with the IOAPIC pin each INTx pin reaches. Nothing in a
table is written from a second source, so the tables cannot disagree with each other or with the
devices on the buses.

Interrupt routing (what KVM's in-kernel irqchip does with its default GSI table, arch/x86/kvm/
irq_comm.c): GSI n < 16 drives both 8259 input n and IOAPIC pin n; GSI 16-23 only IOAPIC pin n.
So ISA IRQ n is GSI n (identity: the MADT's overrides and the MP table's assignments say so
explicitly), and every level-triggered line (PCI INTx, virtio-mmio) is on pins 16-23.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from harness import layout

# Interrupt line polarity / trigger, as both ACPI and the MP spec name them.
EDGE, LEVEL = "edge", "level"
HIGH, LOW = "high", "low"


@dataclass(frozen=True)
class Cpu:
    apic_id: int
    enabled: bool = True


@dataclass(frozen=True)
class IoApic:
    apic_id: int
    address: int = layout.IOAPIC_ADDR
    gsi_base: int = 0
    pins: int = layout.IOAPIC_PINS


@dataclass(frozen=True)
class IsaDevice:
    """A legacy device the DSDT names by its PNP id (COM ports, RTC, i8042)."""
    name: str                         # ACPI name segment, e.g. "COM1"
    hid: str                          # EISA id, e.g. "PNP0501"
    ports: tuple[tuple[int, int], ...]  # (base, length) I/O ranges
    irq: int | None                   # ISA IRQ (= GSI here)
    uid: int = 0


@dataclass(frozen=True)
class MmioDevice:
    """A virtio-mmio transport: base, size, GSI (level, active high)."""
    base: int
    size: int
    gsi: int
    kind: str = "virtio"              # what sits behind it (blk, console, rng), for reports


@dataclass(frozen=True)
class PciDevice:
    slot: int                         # device number on bus 0
    function: int = 0
    pin: int = 1                      # INTx pin 1..4 = INTA#..INTD#, 0 = none
    kind: str = "pci"

    @property
    def gsi(self) -> int | None:
        """The IOAPIC pin its INTx reaches: the standard swizzle (slot + pin - 1) mod 4."""
        if not self.pin:
            return None
        return layout.PCI_INTX_GSIS[(self.slot + self.pin - 1) % len(layout.PCI_INTX_GSIS)]


@dataclass(frozen=True)
class InterruptOverride:
    """ISA IRQ -> GSI with trigger/polarity: one MADT type-2 entry and one MP type-3 entry."""
    isa_irq: int
    gsi: int
    trigger: str = EDGE
    polarity: str = HIGH


@dataclass
class MachineDescription:
    cpus: list[Cpu]
    ioapic: IoApic
    isa: list[IsaDevice] = field(default_factory=list)
    mmio: list[MmioDevice] = field(default_factory=list)
    pci: list[PciDevice] = field(default_factory=list)
    lapic_address: int = layout.LAPIC_ADDR
    pic_present: bool = True          # KVM's 8259 pair (MADT PCAT_COMPAT, MP table ExtINT on LINT0)
    i8042_present: bool = True
    msi_supported: bool = False       # KVM_SIGNAL_MSI: absent on kvm_pvm, so devices use INTx
    reset_port: int = layout.PCI_CONFIG_ADDRESS + 1   # 0xCF9 reset control (harness.devices.pci)
    reset_value: int = 0x06           # SYS_RST | RST_CPU
    sleep_port: int = layout.ACPI_SLEEP_CONTROL_PORT  # hardware-reduced sleep control / status (+1)

    @property
    def has_pci(self) -> bool:
        """A PCI host bridge is announced only with a PCI device behind it (seed 000: NetBSD
        crashed on a DSDT naming a host bridge that was not there)."""
        return bool(self.pci)

    def overrides(self) -> list[InterruptOverride]:
        """Every ISA IRQ a device uses, plus the timer (IRQ 0, KVM's PIT), with the GSI it reaches."""
        irqs = sorted({TIMER_IRQ} | {d.irq for d in self.isa if d.irq is not None})
        return [InterruptOverride(irq, isa_gsi(irq)) for irq in irqs]

    def isa_routes(self) -> list[InterruptOverride]:
        """Every ISA IRQ line the IOAPIC receives (all 16 but the 8259 cascade), for the MP table."""
        return [InterruptOverride(irq, isa_gsi(irq)) for irq in range(ISA_IRQS) if irq != CASCADE_IRQ]


TIMER_IRQ, CASCADE_IRQ, ISA_IRQS = 0, 2, 16


def isa_gsi(irq: int) -> int:
    """KVM's default routing wires ISA IRQ n to IOAPIC pin n (no 0 -> 2 swap as on PC chipsets)."""
    return irq


def legacy_devices(second_uart: bool = False, i8042: bool = True) -> list[IsaDevice]:
    """The ISA devices harness.devices.build_x86_devices registers, in DSDT form."""
    devices = [IsaDevice("COM1", "PNP0501", ((layout.COM1_PORT, 8),), layout.COM1_IRQ, uid=1)]
    if second_uart:
        devices.append(IsaDevice("COM2", "PNP0501", ((layout.COM2_PORT, 8),), layout.COM2_IRQ, uid=2))
    devices.append(IsaDevice("RTC_", "PNP0B00", ((layout.RTC_PORT, 2),), layout.RTC_IRQ))
    if i8042:
        devices.append(IsaDevice("KBD_", "PNP0303", ((layout.I8042_DATA_PORT, 1), (layout.I8042_CMD_PORT, 1)), 1))
    return devices


# KVM's in-kernel IOAPIC resets its ID register to 0 (virt/kvm/ioapic.c) and QEMU's MADT says 0
# too. The tables state the ID the register holds: BSD ioapic drivers compare the two and rewrite
# the register ("misconfigured as apic N") when they differ.
KVM_IOAPIC_ID = 0


def describe(vcpus: int, mmio: list[MmioDevice] | None = None, pci: list[PciDevice] | None = None,
             second_uart: bool = False, msi_supported: bool = False) -> MachineDescription:
    """The built-in VMM's machine: `vcpus` CPUs with APIC ids 0..n-1 (KVM's LAPIC ID = vCPU id)."""
    return MachineDescription(cpus=[Cpu(i) for i in range(vcpus)], ioapic=IoApic(apic_id=KVM_IOAPIC_ID),
                              isa=legacy_devices(second_uart), mmio=list(mmio or []), pci=list(pci or []),
                              msi_supported=msi_supported)
