"""virtio 1.x devices for the built-in VMM: one device a module, one shared virtqueue module,
two transports.

    queue.py    split virtqueue, every guest value bounds-checked (shared by all devices, and by an
                aarch64 VMM through virtio-mmio)
    device.py   feature negotiation, status, config space, failure -> gap + DEVICE_NEEDS_RESET
    mmio.py     virtio-mmio v2 (announced in the DSDT, optionally on the kernel command line)
    pci.py      virtio-pci modern + transitional legacy I/O BAR, INTx
    blk.py      virtio-blk over disk.py's copy-on-write overlay (raw, or qcow2 via qemu-img)
    console.py  virtio-console (hvc0), a second console stream
    rng.py      virtio-rng

`attach()` builds what a guest's options ask for and puts it on the buses of a DeviceSet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness import layout
from harness.devices.pci import Bdf
from harness.devices.virtio.blk import DEFAULT_SEG_MAX, DEFAULT_SIZE_MAX, VirtioBlk
from harness.devices.virtio.console import VirtioConsole
from harness.devices.virtio.disk import CowDisk, prepare_image
from harness.devices.virtio.mmio import VirtioMmio
from harness.devices.virtio.pci import PciWindows, VirtioPci
from harness.devices.virtio.rng import VirtioRng
from harness.errors import ConfigError
from harness.model.builtin_options import VIRTIO_TRANSPORTS

TRANSPORTS = VIRTIO_TRANSPORTS
FIRST_PCI_SLOT = 1                 # 00:00.0 is the host bridge


@dataclass
class VirtioSetup:
    """What the guest asked for (guest file `builtin:` keys virtio_devices, virtio_transport, ...)."""
    devices: list[str] = field(default_factory=list)
    transport: str = "pci"
    disk: Path | None = None
    disk_format: str = "auto"
    size_max: int = DEFAULT_SIZE_MAX
    seg_max: int = DEFAULT_SEG_MAX
    workdir: Path = Path(".")
    msix: bool = True

    @classmethod
    def from_guest(cls, options: dict[str, Any] | None, disk: Path | None, workdir: Path,
                   transports: tuple[str, ...] = TRANSPORTS) -> "VirtioSetup":
        """`transports`: what this machine offers, its default first (an aarch64 VM has mmio only)."""
        opts = options or {}
        named = opts.get("virtio_devices")
        named = [named] if isinstance(named, str) else named    # one device may be named bare, as acpi_omit's table
        devices = list(named or (["blk"] if disk is not None else []))
        unknown = sorted(set(devices) - set(DEVICE_TYPES))
        if unknown:
            raise ConfigError(f"unknown virtio devices {unknown}", f"use some of: {', '.join(DEVICE_TYPES)}")
        if "blk" in devices and disk is None:
            raise ConfigError("virtio_devices lists blk but the guest has no disk", "give the guest a disk: source")
        transport = str(opts.get("virtio_transport", transports[0]))
        if transport not in transports:
            raise ConfigError(f"virtio transport {transport!r} is not offered here",
                              f"use one of: {', '.join(transports)}")
        return cls(devices=devices, transport=transport, disk=disk, disk_format=str(opts.get("disk_format", "auto")),
                   size_max=int(opts.get("virtio_size_max", DEFAULT_SIZE_MAX)),
                   seg_max=int(opts.get("virtio_seg_max", DEFAULT_SEG_MAX)), workdir=workdir,
                   msix=bool(opts.get("virtio_msix", True)))


def _blk(ram: Any, gap: Callable, setup: VirtioSetup, sinks: dict[str, Callable[[bytes], None]]) -> VirtioBlk:
    base = prepare_image(setup.disk, setup.workdir, setup.disk_format)
    disk = CowDisk(base, setup.workdir / "disk.overlay")
    return VirtioBlk(ram, gap, disk, size_max=setup.size_max, seg_max=setup.seg_max)


def _console(ram: Any, gap: Callable, setup: VirtioSetup, sinks: dict[str, Callable[[bytes], None]]) -> VirtioConsole:
    return VirtioConsole(ram, gap, sinks.get("hvc0", lambda data: None))


def _rng(ram: Any, gap: Callable, setup: VirtioSetup, sinks: dict[str, Callable[[bytes], None]]) -> VirtioRng:
    return VirtioRng(ram, gap)


DEVICE_TYPES: dict[str, Callable[..., Any]] = {"blk": _blk, "console": _console, "rng": _rng}


@dataclass(frozen=True)
class MmioSlots:
    """Where a machine puts its virtio-mmio transports: slot i at place(i) = (base, interrupt line)."""
    place: Callable[[int], tuple[int, int]]
    count: int
    size: int                              # bytes of bus each slot claims


X86_MMIO_SLOTS = MmioSlots(lambda i: (layout.VIRTIO_MMIO_START + i * layout.VIRTIO_MMIO_SLOT,
                                      layout.VIRTIO_MMIO_GSIS[i]),
                           layout.VIRTIO_MMIO_SLOTS, layout.VIRTIO_MMIO_SLOT)


def build_models(ctx: Any, ram: Any, setup: VirtioSetup,
                 sinks: dict[str, Callable[[bytes], None]] | None = None) -> list[Any]:
    """The device models `setup.devices` names, in order, before any transport wraps them."""
    return [DEVICE_TYPES[kind](ram, ctx.gap, setup, sinks or {}) for kind in setup.devices]


def attach_mmio(bus: Any, models: list[Any], slots: MmioSlots, set_irq: Callable[[int, int], None]) -> list[VirtioMmio]:
    """Each model behind a virtio-mmio transport in the next slot of `slots`, registered on `bus`."""
    if len(models) > slots.count:
        raise ConfigError(f"{len(models)} virtio-mmio devices, {slots.count} slots",
                          "use fewer devices or virtio_transport: pci")
    transports = []
    for i, device in enumerate(models):
        base, line = slots.place(i)
        transport = VirtioMmio(device, base, line, set_irq)
        bus.register(base, slots.size, transport, f"virtio-mmio-{device.name}")
        transports.append(transport)
    return transports


def close_transports(transports: list[Any]) -> None:
    """Close what the devices behind `transports` hold open (a blk device's disk overlay)."""
    for transport in transports:
        disk = getattr(transport.device, "disk", None)
        if disk is not None:
            disk.close()


def attach(devset: Any, ctx: Any, ram: Any, setup: VirtioSetup,
           sinks: dict[str, Callable[[bytes], None]] | None = None,
           msi: Callable[[int, int], bool] | None = None) -> list[Any]:
    """Build `setup.devices` on `setup.transport` and register them on `devset`'s buses (x86).
    `msi` (address, data) -> delivered: given when the VMM can inject MSIs; virtio-pci devices
    then offer MSI-X (unless the guest's options say virtio_msix: false)."""
    models = build_models(ctx, ram, setup, sinks)
    transports: list[Any]
    if setup.transport == "mmio":
        transports = list(attach_mmio(devset.mmio_bus, models, X86_MMIO_SLOTS, ctx.set_irq))
    else:
        transports = [VirtioPci(device, FIRST_PCI_SLOT + i, ctx.set_irq, msi=msi if setup.msix else None)
                      for i, device in enumerate(models)]
        for transport in transports:
            devset.pci.add_function(Bdf(0, transport.slot, 0), transport)
        windows = PciWindows(transports) if transports else None
        if windows is not None:
            devset.mmio_bus.register(layout.PCI_MMIO_START, layout.PCI_MMIO_SIZE, windows.memory, "pci-mmio-window")
            devset.io_bus.register(layout.PCI_IO_WINDOW[0], layout.PCI_IO_WINDOW[1], windows.io, "pci-io-window")
    devset.virtio.extend(transports)
    return transports
