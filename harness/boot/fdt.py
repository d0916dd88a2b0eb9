"""The aarch64 guest's flattened device tree, generated from one machine description.

`Aarch64Machine` is the single description of an aarch64 VM of the built-in hypervisor: memory,
vCPUs, the GICv3, the architected timer, PSCI, the PL011 console, the PL031 RTC, the virtio-mmio
slots and the /chosen node. The VMM builds its devices from it and `build_fdt` turns the very
same object into the DTB the kernel gets in x0, so the tree can never name a device the VMM did
not create (or miss one it did). The blob is written by the PyPI `fdt` library; tests check each
generated blob with Debian's dtc (`dtc -I dtb -O dts` without warnings).

Bindings followed (Linux Documentation/devicetree/bindings): arm/cpus.yaml, arm/psci.yaml,
interrupt-controller/arm,gic-v3.yaml (3 interrupt cells: type 0 SPI / 1 PPI, number, flags),
timer/arm,arch_timer.yaml, serial/arm,pl011.yaml (AMBA primecell: needs an `apb_pclk` clock),
rtc/arm,pl031.yaml, virtio/mmio.yaml, chosen.yaml (linux,initrd-start/-end, stdout-path).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import fdt

from harness import layout
from harness.errors import ConfigError

FDT_VERSION = 17
GIC_PHANDLE, CLOCK_PHANDLE = 1, 2
IRQ_TYPE_SPI, IRQ_TYPE_PPI = 0, 1
IRQ_EDGE_RISING, IRQ_LEVEL_HIGH = 1, 4
APB_CLOCK_HZ = 24_000_000        # the PL011's reference clock (QEMU virt's 24 MHz)
PSCI_COMPATIBLE = ("arm,psci-1.0", "arm,psci-0.2", "arm,psci")
MAX_VCPUS = layout.A64_GICR_MAX_SIZE // layout.A64_GICR_STRIDE


@dataclass(frozen=True)
class MmioDevice:
    """One memory-mapped device of the machine: where it is and which SPI it raises."""
    name: str          # node name without unit address ("serial", "rtc", "virtio_mmio")
    base: int
    size: int
    spi: int

    @property
    def node(self) -> str:
        return f"{self.name}@{self.base:x}"


@dataclass
class Aarch64Machine:
    memory_bytes: int
    vcpus: int = 1
    cmdline: str = ""
    initrd: tuple[int, int] | None = None      # (guest-physical start, size)
    virtio_slots: int = 0                       # how many virtio-mmio transports exist
    psci_method: str = "hvc"                    # KVM answers PSCI calls made with HVC
    uart: MmioDevice = field(default_factory=lambda: MmioDevice(
        "pl011", layout.A64_UART_BASE, layout.A64_UART_SIZE, layout.A64_UART_SPI))
    rtc: MmioDevice = field(default_factory=lambda: MmioDevice(
        "pl031", layout.A64_RTC_BASE, layout.A64_RTC_SIZE, layout.A64_RTC_SPI))

    def __post_init__(self) -> None:
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ConfigError(f"{self.vcpus} vCPUs do not fit the aarch64 layout",
                              f"use 1..{MAX_VCPUS} vCPUs")
        if not 32 * layout.MiB <= self.memory_bytes <= layout.A64_MAX_RAM:
            raise ConfigError(f"{self.memory_bytes >> 20} MiB is not a usable aarch64 guest memory size",
                              f"use 32 MiB .. {layout.A64_MAX_RAM >> 30} GiB")
        if not 0 <= self.virtio_slots <= layout.A64_VIRTIO_MMIO_SLOTS:
            raise ConfigError(f"{self.virtio_slots} virtio-mmio slots requested",
                              f"use at most {layout.A64_VIRTIO_MMIO_SLOTS}")
        if self.initrd is not None:
            start, size = self.initrd
            if start < layout.A64_RAM_START or start + size > self.ram_end or size <= 0:
                raise ConfigError(f"initrd [{start:#x}, +{size:#x}) is not inside guest RAM",
                                  "give the guest more memory")

    @property
    def ram_end(self) -> int:
        return layout.a64_ram_end(self.memory_bytes)

    @property
    def fdt_addr(self) -> int:
        return layout.a64_fdt_addr(self.memory_bytes)

    @property
    def gicr_size(self) -> int:
        return self.vcpus * layout.A64_GICR_STRIDE

    def virtio_devices(self) -> list[MmioDevice]:
        slots = (layout.a64_virtio_slot(i) for i in range(self.virtio_slots))
        return [MmioDevice("virtio_mmio", base, layout.A64_VIRTIO_MMIO_SLOT, spi) for base, spi in slots]


def _cells64(*values: int) -> list[int]:
    """64-bit values as pairs of 32-bit cells (#address-cells = #size-cells = 2)."""
    out: list[int] = []
    for v in values:
        out.extend(((v >> 32) & 0xFFFF_FFFF, v & 0xFFFF_FFFF))
    return out


def _node(name: str, *props) -> fdt.Node:
    node = fdt.Node(name)
    for prop in props:
        node.append(prop)
    return node


def _words(name: str, *words: int) -> fdt.PropWords:
    return fdt.PropWords(name, *words)


def _strings(name: str, *values: str) -> fdt.PropStrings:
    return fdt.PropStrings(name, *values)


def kvm_mpidr(index: int) -> int:
    """The MPIDR affinity KVM gives vCPU `index` (arch/arm64/kvm/sys_regs.c reset_mpidr: 16 CPUs per
    Aff0 cluster, then Aff1, Aff2): a cpu node's reg must be it, or the guest cannot match them."""
    return ((index >> 12) & 0xFF) << 16 | ((index >> 4) & 0xFF) << 8 | (index & 0xF)


def _cpus(m: Aarch64Machine) -> fdt.Node:
    cpus = _node("cpus", _words("#address-cells", 1), _words("#size-cells", 0))
    for i in range(m.vcpus):
        mpidr = kvm_mpidr(i)
        cpus.append(_node(f"cpu@{mpidr:x}", _strings("device_type", "cpu"),
                          _strings("compatible", "arm,armv8"), _words("reg", mpidr),
                          _strings("enable-method", "psci")))
    return cpus


def _gic(m: Aarch64Machine) -> fdt.Node:
    return _node(f"intc@{layout.A64_GICD_BASE:x}",
                 _strings("compatible", "arm,gic-v3"),
                 _words("#interrupt-cells", 3),
                 fdt.Property("interrupt-controller"),
                 _words("#address-cells", 2), _words("#size-cells", 2), fdt.Property("ranges"),
                 _words("#redistributor-regions", 1),
                 _words("reg", *_cells64(layout.A64_GICD_BASE, layout.A64_GICD_SIZE,
                                         layout.A64_GICR_BASE, m.gicr_size)),
                 _words("phandle", GIC_PHANDLE))


def _timer() -> fdt.Node:
    ppis = layout.A64_TIMER_PPIS
    cells: list[int] = []
    for kind in ("secure-phys", "phys", "virt", "hyp"):     # the binding's order
        cells.extend((IRQ_TYPE_PPI, ppis[kind], IRQ_LEVEL_HIGH))
    return _node("timer", _strings("compatible", "arm,armv8-timer"), _words("interrupts", *cells),
                 fdt.Property("always-on"))


def _primecell(dev: MmioDevice, compatible: str, clocks: tuple[str, ...]) -> fdt.Node:
    return _node(dev.node, _strings("compatible", compatible, "arm,primecell"),
                 _words("reg", *_cells64(dev.base, dev.size)),
                 _words("interrupts", IRQ_TYPE_SPI, dev.spi, IRQ_LEVEL_HIGH),
                 _words("clocks", *([CLOCK_PHANDLE] * len(clocks))), _strings("clock-names", *clocks))


def _virtio(dev: MmioDevice) -> fdt.Node:
    return _node(dev.node, _strings("compatible", "virtio,mmio"), fdt.Property("dma-coherent"),
                 _words("reg", *_cells64(dev.base, dev.size)),
                 _words("interrupts", IRQ_TYPE_SPI, dev.spi, IRQ_EDGE_RISING))


def _chosen(m: Aarch64Machine) -> fdt.Node:
    # The library refuses an empty string property; an empty command line is one NUL byte.
    bootargs = _strings("bootargs", m.cmdline) if m.cmdline else fdt.PropBytes("bootargs", data=b"\0")
    chosen = _node("chosen", bootargs, _strings("stdout-path", f"/{m.uart.node}"))
    if m.initrd is not None:
        start, size = m.initrd
        chosen.append(_words("linux,initrd-start", *_cells64(start)))
        chosen.append(_words("linux,initrd-end", *_cells64(start + size)))
    return chosen


def build_fdt(m: Aarch64Machine) -> bytes:
    """The DTB for machine `m` (version 17, at most A64_FDT_MAX bytes)."""
    tree = fdt.FDT()
    root = tree.root
    for prop in (_strings("compatible", "linux,dummy-virt"), _strings("model", "harness aarch64 VM"),
                 _words("#address-cells", 2), _words("#size-cells", 2),
                 _words("interrupt-parent", GIC_PHANDLE)):
        root.append(prop)
    root.append(_node("psci", _strings("compatible", *PSCI_COMPATIBLE), _strings("method", m.psci_method)))
    root.append(_node(f"memory@{layout.A64_RAM_START:x}", _strings("device_type", "memory"),
                      _words("reg", *_cells64(layout.A64_RAM_START, m.memory_bytes))))
    root.append(_cpus(m))
    root.append(_gic(m))
    root.append(_timer())
    root.append(_node("apb-pclk", _strings("compatible", "fixed-clock"), _words("#clock-cells", 0),
                      _words("clock-frequency", APB_CLOCK_HZ), _strings("clock-output-names", "clk24mhz"),
                      _words("phandle", CLOCK_PHANDLE)))
    root.append(_primecell(m.uart, "arm,pl011", ("uartclk", "apb_pclk")))
    root.append(_primecell(m.rtc, "arm,pl031", ("apb_pclk",)))
    for dev in m.virtio_devices():
        root.append(_virtio(dev))
    root.append(_chosen(m))
    blob = tree.to_dtb(version=FDT_VERSION)
    if len(blob) > layout.A64_FDT_MAX:
        raise ConfigError(f"the device tree is {len(blob)} bytes, over the 2 MiB arm64 booting limit",
                          "shorten the command line")
    return blob
