"""virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): one 4 KiB slot, one level-triggered GSI.

Announced to the guest in the DSDT (harness.firmware, _HID LNRO0005) and, for kernels built with
CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, by `cmdline_hint()` (virtio_mmio.device=<size>@<base>:<irq>).
Architecture-neutral: an aarch64 VMM maps the same class and wires its GSI to the GIC.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from harness.devices.virtio.device import VirtioDevice

# register offsets (4.2.2)
MAGIC_VALUE, VERSION, DEVICE_ID, VENDOR_ID = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY = 0x030, 0x034, 0x038, 0x044
QUEUE_NOTIFY, INTERRUPT_STATUS, INTERRUPT_ACK, STATUS = 0x050, 0x060, 0x064, 0x070
QUEUE_DESC_LOW, QUEUE_DESC_HIGH = 0x080, 0x084
QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH = 0x090, 0x094
QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH = 0x0A0, 0x0A4
SHM_SEL, SHM_LEN_LOW, SHM_LEN_HIGH = 0x0AC, 0x0B0, 0x0B4
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100
MAGIC = 0x74726976                 # "virt"
MMIO_VERSION = 2                   # virtio 1.x (version 1 is the legacy layout)
VENDOR = 0x554D4551                # "QEMU", as Linux's drivers expect of an emulated device
SLOT_SIZE = 0x200                  # what the DSDT / cmdline announce (registers + config)

_QUEUE_ADDRESS = {QUEUE_DESC_LOW: ("desc_addr", 0), QUEUE_DESC_HIGH: ("desc_addr", 32),
                  QUEUE_DRIVER_LOW: ("avail_addr", 0), QUEUE_DRIVER_HIGH: ("avail_addr", 32),
                  QUEUE_DEVICE_LOW: ("used_addr", 0), QUEUE_DEVICE_HIGH: ("used_addr", 32)}


class VirtioMmio:
    transport = "mmio"

    def __init__(self, device: VirtioDevice, base: int, gsi: int, set_irq: Callable[[int, int], None]) -> None:
        self.device = device
        self.base, self.gsi = base, gsi
        self._set_irq = set_irq
        self._lock = threading.Lock()
        self.isr = 0
        self.features_sel = self.driver_features_sel = self.queue_sel = 0
        self._driver_features = 0
        device.interrupt = self.raise_interrupt

    # -- interrupts (level: the line follows InterruptStatus != 0) ---------------------------------
    def raise_interrupt(self, bits: int, queue: int | None = None) -> None:
        with self._lock:
            self.isr |= bits
            self._set_irq(self.gsi, 1)

    def _ack(self, bits: int) -> None:
        with self._lock:
            self.isr &= ~bits
            if not self.isr:
                self._set_irq(self.gsi, 0)

    # -- firmware ----------------------------------------------------------------------------------
    def firmware_entry(self) -> Any:
        from harness.firmware.machine import MmioDevice
        return MmioDevice(self.base, SLOT_SIZE, self.gsi, self.device.name)

    def cmdline_hint(self) -> str:
        return f"virtio_mmio.device={SLOT_SIZE:#x}@{self.base:#x}:{self.gsi}"

    # -- bus interface ---------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        dev = self.device
        if offset >= CONFIG:
            return dev.read_config(offset - CONFIG, size)
        if size != 4:
            return 0                                  # registers are 32-bit only (4.2.2.2)
        queue = dev.queues[self.queue_sel] if self.queue_sel < len(dev.queues) else None
        simple = {MAGIC_VALUE: MAGIC, VERSION: MMIO_VERSION, DEVICE_ID: dev.device_id, VENDOR_ID: VENDOR,
                  INTERRUPT_STATUS: self.isr, STATUS: dev.status, CONFIG_GENERATION: 0,
                  SHM_LEN_LOW: 0xFFFF_FFFF, SHM_LEN_HIGH: 0xFFFF_FFFF}
        if offset in simple:
            return simple[offset]
        if offset == DEVICE_FEATURES:
            return (dev.offered >> (32 * self.features_sel)) & 0xFFFF_FFFF if self.features_sel < 2 else 0
        if offset == QUEUE_NUM_MAX:
            return queue.max_size if queue else 0
        if offset == QUEUE_READY:
            return int(queue.ready) if queue else 0
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        dev = self.device
        if offset >= CONFIG:
            dev.write_config(offset - CONFIG, size, value)
            return
        if size != 4:
            return
        queue = dev.queues[self.queue_sel] if self.queue_sel < len(dev.queues) else None
        if offset == DEVICE_FEATURES_SEL:
            self.features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES and self.driver_features_sel < 2:
            shift = 32 * self.driver_features_sel
            self._driver_features = (self._driver_features & ~(0xFFFF_FFFF << shift)) | (value << shift)
            dev.set_driver_features(self._driver_features)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == QUEUE_NUM and queue and not queue.ready:
            queue.size = value
        elif offset in _QUEUE_ADDRESS and queue and not queue.ready:
            attr, shift = _QUEUE_ADDRESS[offset]
            old = getattr(queue, attr)
            setattr(queue, attr, (old & ~(0xFFFF_FFFF << shift)) | (value << shift))
        elif offset == QUEUE_READY and queue:
            if value & 1:
                dev.enable_queue(self.queue_sel)
            else:
                queue.ready = False
        elif offset == QUEUE_NOTIFY:
            dev.notify(value & 0xFFFF)
        elif offset == INTERRUPT_ACK:
            self._ack(value)
        elif offset == STATUS:
            dev.write_status(value)
            if value == 0:
                self._driver_features = 0
                self._ack(0xFFFF_FFFF)
