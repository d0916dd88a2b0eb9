"""virtio-pci transport (virtio 1.2, 4.1): modern capabilities in a memory BAR, plus the legacy
I/O BAR of a *transitional* device for drivers older than virtio 1.0; INTx, level-triggered.

MSI-X is offered when the VMM can inject MSIs (`msi` given: KVM_SIGNAL_MSI): a table of one
vector per queue plus one for configuration changes, in the modern BAR; masked entries latch their
pending bit and fire on unmask. Without it (or with MSI-X disabled by the driver) interrupts are
INTx, and the FADT says "MSI not supported". Read-only config registers ignore writes (OpenBSD
writes the MSI capability, seed 001) - harness.devices.pci.PciFunction's write masks do that.

BARs are set the way firmware would leave them (slot-indexed addresses in the windows of
harness.layout); the guest may move them: `PciWindows` decodes every access against the BARs'
current values and the command register's decode-enable bits.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from harness import layout
from harness.devices.pci import BAR0, CAP_PTR, COMMAND, INTERRUPT_LINE, INTERRUPT_PIN, STATUS, PciFunction
from harness.devices.virtio.device import ISR_CONFIG, VirtioDevice

VIRTIO_VENDOR = 0x1AF4
MODERN_DEVICE_BASE = 0x1040            # device id = 0x1040 + virtio device type (4.1.2.1)
TRANSITIONAL_IDS = {2: 0x1001, 3: 0x1003, 4: 0x1005}   # blk, console, rng (4.1.2.3)
CLASS_CODES = {2: 0x018000, 3: 0x078000, 4: 0x00FF00}  # mass storage / communication / unclassified

# PCI command / status bits
CMD_IO, CMD_MEMORY, CMD_INTX_DISABLE = 1 << 0, 1 << 1, 1 << 10
STATUS_INTERRUPT, STATUS_CAP_LIST = 1 << 3, 1 << 4

# virtio vendor capabilities (4.1.4)
PCI_CAP_VENDOR = 0x09
CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE = 1, 2, 3, 4
MODERN_BAR, LEGACY_BAR = 4, 0
MODERN_BAR_SIZE = 0x4000
COMMON_OFF, ISR_OFF, DEVICE_OFF, NOTIFY_OFF = 0x0000, 0x1000, 0x2000, 0x3000
COMMON_LEN, ISR_LEN, DEVICE_LEN, NOTIFY_LEN = 0x38, 1, 0x1000, 0x1000
NOTIFY_MULTIPLIER = 4
CAP_FIRST = 0x40
NO_VECTOR = 0xFFFF

# MSI-X (PCI 3.0 6.8.2): capability, table and PBA (the table inside the ISR page, which uses 1 byte)
PCI_CAP_MSIX = 0x11
MSIX_ENABLE, MSIX_FUNCTION_MASK = 1 << 15, 1 << 14
MSIX_TABLE_OFF, MSIX_PBA_OFF = 0x1800, 0x1C00
MSIX_ENTRY = 16
MSIX_VECTOR_MASKED = 1

# common configuration structure (4.1.4.3)
CC_DFSELECT, CC_DF, CC_GFSELECT, CC_GF = 0x00, 0x04, 0x08, 0x0C
CC_MSIX, CC_NUMQ, CC_STATUS, CC_CFGGEN = 0x10, 0x12, 0x14, 0x15
CC_Q_SELECT, CC_Q_SIZE, CC_Q_MSIX, CC_Q_ENABLE, CC_Q_NOFF = 0x16, 0x18, 0x1A, 0x1C, 0x1E
CC_Q_DESC, CC_Q_AVAIL, CC_Q_USED = 0x20, 0x28, 0x30
_CC_QUEUE_ADDRESS = {CC_Q_DESC: "desc_addr", CC_Q_AVAIL: "avail_addr", CC_Q_USED: "used_addr"}

# legacy I/O layout without MSI-X (4.1.4.8)
LEG_HOST_FEATURES, LEG_GUEST_FEATURES, LEG_QUEUE_PFN, LEG_QUEUE_SIZE = 0x00, 0x04, 0x08, 0x0C
LEG_QUEUE_SELECT, LEG_QUEUE_NOTIFY, LEG_STATUS, LEG_ISR, LEG_CONFIG = 0x0E, 0x10, 0x12, 0x13, 0x14
LEGACY_BAR_SIZE = 0x100
LEGACY_ALIGN = 4096


def _legacy_rings(queue: Any, pfn: int) -> None:
    """Legacy layout: descriptors at pfn*4096, avail right after, used at the next 4 KiB."""
    queue.size = queue.max_size
    queue.desc_addr = pfn * LEGACY_ALIGN
    queue.avail_addr = queue.desc_addr + 16 * queue.size
    queue.used_addr = (queue.avail_addr + 6 + 2 * queue.size + LEGACY_ALIGN - 1) // LEGACY_ALIGN * LEGACY_ALIGN


class VirtioPci(PciFunction):
    transport = "pci"

    def __init__(self, device: VirtioDevice, slot: int, set_irq: Callable[[int, int], None],
                 transitional: bool = True, msi: Callable[[int, int], bool] | None = None) -> None:
        self.transitional = transitional and device.device_id in TRANSITIONAL_IDS
        dev_id = TRANSITIONAL_IDS[device.device_id] if self.transitional else MODERN_DEVICE_BASE + device.device_id
        super().__init__(vendor=VIRTIO_VENDOR, device=dev_id, class_code=CLASS_CODES.get(device.device_id, 0xFF0000),
                         revision=0 if self.transitional else 1, subsystem_vendor=VIRTIO_VENDOR,
                         subsystem=device.device_id)
        self.device, self.slot = device, slot
        self.pin = 1
        self._set_irq = set_irq
        self._lock = threading.Lock()
        self.isr = 0
        self.df_select = self.gf_select = self.queue_sel = 0
        self._driver_features = 0
        self._msi = msi
        self.msix_vectors = len(device.queues) + 1 if msi else 0
        self.msix_table = bytearray(MSIX_ENTRY * self.msix_vectors)
        for i in range(self.msix_vectors):
            self.msix_table[MSIX_ENTRY * i + 12] = MSIX_VECTOR_MASKED   # masked until the driver programs it
        self.msix_pending: set[int] = set()
        self.config_vector = NO_VECTOR
        self.gsi = self.firmware_entry().gsi            # INTA#, swizzled by slot: the tables' own rule
        self._put(INTERRUPT_PIN, 1, 1)
        self._put(INTERRUPT_LINE, 1, self.gsi)
        self._put(STATUS, 2, STATUS_CAP_LIST)
        self.set_bar(MODERN_BAR, MODERN_BAR_SIZE)
        self._put(BAR0 + 4 * MODERN_BAR, 4, layout.PCI_MMIO_START + slot * MODERN_BAR_SIZE)
        if self.transitional:
            self.set_bar(LEGACY_BAR, LEGACY_BAR_SIZE, io=True)
            self._put(BAR0 + 4 * LEGACY_BAR, 4, (layout.PCI_IO_WINDOW[0] + slot * LEGACY_BAR_SIZE) | 1)
        self._put(COMMAND, 2, CMD_MEMORY | (CMD_IO if self.transitional else 0))
        self._write_capabilities()
        device.interrupt = self.raise_interrupt

    def _write_capabilities(self) -> None:
        caps = [(CAP_COMMON, COMMON_OFF, COMMON_LEN), (CAP_NOTIFY, NOTIFY_OFF, NOTIFY_LEN),
                (CAP_ISR, ISR_OFF, ISR_LEN), (CAP_DEVICE, DEVICE_OFF, DEVICE_LEN)]
        self._put(CAP_PTR, 1, CAP_FIRST)
        at = CAP_FIRST
        for i, (kind, offset, length) in enumerate(caps):
            cap_len = 20 if kind == CAP_NOTIFY else 16
            nxt = at + cap_len if i + 1 < len(caps) or self.msix_vectors else 0
            raw = bytes([PCI_CAP_VENDOR, nxt, cap_len, kind, MODERN_BAR, 0, 0, 0]) + offset.to_bytes(4, "little") \
                + length.to_bytes(4, "little")
            if kind == CAP_NOTIFY:
                raw += NOTIFY_MULTIPLIER.to_bytes(4, "little")
            self.config[at:at + cap_len] = raw
            at += cap_len
        if self.msix_vectors:
            self.msix_cap = at
            self.config[at:at + 12] = bytes([PCI_CAP_MSIX, 0]) + (self.msix_vectors - 1).to_bytes(2, "little") \
                + (MSIX_TABLE_OFF | MODERN_BAR).to_bytes(4, "little") + (MSIX_PBA_OFF | MODERN_BAR).to_bytes(4, "little")
            self._put_mask(at + 2, 2, MSIX_ENABLE | MSIX_FUNCTION_MASK)
    # -- firmware ----------------------------------------------------------------------------------
    def firmware_entry(self) -> Any:
        from harness.firmware.machine import PciDevice
        return PciDevice(self.slot, 0, self.pin, self.device.name)

    # -- BARs --------------------------------------------------------------------------------------
    def bar_base(self, index: int) -> int:
        raw = self.read_config(BAR0 + 4 * index, 4)
        return raw & (0xFFFF_FFFC if raw & 1 else 0xFFFF_FFF0)

    def decodes(self, io: bool) -> bool:
        return bool(self.read_config(COMMAND, 2) & (CMD_IO if io else CMD_MEMORY))

    # -- interrupts ----------------------------------------------------------------------------------
    def raise_interrupt(self, bits: int, queue: int | None = None) -> None:
        if self._msix_control() & MSIX_ENABLE:
            vector = self.config_vector if bits & ISR_CONFIG or queue is None else self.device.queues[queue].msix_vector
            if vector != NO_VECTOR:               # NO_VECTOR: the driver wants no interrupt (4.1.4.3)
                self._fire(vector)
            return
        with self._lock:
            self.isr |= bits
            self._update_line()

    # -- MSI-X -----------------------------------------------------------------------------------------
    def _msix_control(self) -> int:
        return self.read_config(self.msix_cap + 2, 2) if self.msix_vectors else 0

    def _fire(self, vector: int) -> None:
        with self._lock:
            if vector >= self.msix_vectors:
                return
            entry = self.msix_table[MSIX_ENTRY * vector:MSIX_ENTRY * (vector + 1)]
            if self._msix_control() & MSIX_FUNCTION_MASK or entry[12] & MSIX_VECTOR_MASKED:
                self.msix_pending.add(vector)     # latched: delivered when unmasked (PCI 3.0 6.8.3.5)
                return
            self.msix_pending.discard(vector)
            address = int.from_bytes(entry[0:8], "little")
            data = int.from_bytes(entry[8:12], "little")
        self._msi(address, data)

    def _msix_table_write(self, offset: int, size: int, value: int) -> None:
        if offset + size > len(self.msix_table):
            return
        self.msix_table[offset:offset + size] = value.to_bytes(size, "little")
        vector = offset // MSIX_ENTRY
        if vector in self.msix_pending and not self.msix_table[MSIX_ENTRY * vector + 12] & MSIX_VECTOR_MASKED:
            self._fire(vector)

    def _pba_read(self, offset: int, size: int) -> int:
        bits = sum(1 << v for v in self.msix_pending)
        return (bits >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def write_config(self, offset: int, size: int, value: int) -> None:
        super().write_config(offset, size, value)
        if self.msix_vectors and self.msix_cap <= offset < self.msix_cap + 4 \
                and not self._msix_control() & MSIX_FUNCTION_MASK:
            for vector in sorted(self.msix_pending):   # function unmasked: deliver what was latched
                self._fire(vector)

    def _read_isr(self) -> int:
        with self._lock:
            value, self.isr = self.isr, 0                 # reading the ISR clears it (4.1.4.5)
            self._update_line()
            return value

    def _update_line(self) -> None:
        level = bool(self.isr) and not self.read_config(COMMAND, 2) & CMD_INTX_DISABLE
        status = self.read_config(STATUS, 2)
        self._put(STATUS, 2, (status | STATUS_INTERRUPT) if level else (status & ~STATUS_INTERRUPT))
        self._set_irq(self.gsi, 1 if level else 0)

    # -- modern BAR ----------------------------------------------------------------------------------
    def mem_read(self, offset: int, size: int) -> int:
        if self.msix_vectors and MSIX_TABLE_OFF <= offset < MSIX_TABLE_OFF + len(self.msix_table):
            at = offset - MSIX_TABLE_OFF
            return int.from_bytes(self.msix_table[at:at + size].ljust(size, b"\0"), "little")
        if self.msix_vectors and MSIX_PBA_OFF <= offset < MSIX_PBA_OFF + 8:
            return self._pba_read(offset - MSIX_PBA_OFF, size)
        if COMMON_OFF <= offset < COMMON_OFF + COMMON_LEN:
            return self._common_read(offset - COMMON_OFF, size)
        if offset == ISR_OFF:
            return self._read_isr()
        if DEVICE_OFF <= offset < DEVICE_OFF + DEVICE_LEN:
            return self.device.read_config(offset - DEVICE_OFF, size)
        return 0

    def mem_write(self, offset: int, size: int, value: int) -> None:
        if self.msix_vectors and MSIX_TABLE_OFF <= offset < MSIX_TABLE_OFF + len(self.msix_table):
            self._msix_table_write(offset - MSIX_TABLE_OFF, size, value)
        elif COMMON_OFF <= offset < COMMON_OFF + COMMON_LEN:
            self._common_write(offset - COMMON_OFF, size, value)
        elif DEVICE_OFF <= offset < DEVICE_OFF + DEVICE_LEN:
            self.device.write_config(offset - DEVICE_OFF, size, value)
        elif NOTIFY_OFF <= offset < NOTIFY_OFF + NOTIFY_LEN:
            self.device.notify((offset - NOTIFY_OFF) // NOTIFY_MULTIPLIER)

    def _queue(self) -> Any:
        queues = self.device.queues
        return queues[self.queue_sel] if self.queue_sel < len(queues) else None

    def _common_read(self, offset: int, size: int) -> int:
        dev, queue = self.device, self._queue()
        base = offset & ~7 if offset >= CC_Q_DESC else offset
        if base in _CC_QUEUE_ADDRESS:
            value = getattr(queue, _CC_QUEUE_ADDRESS[base]) if queue else 0
            return (value >> (8 * (offset - base))) & ((1 << (8 * size)) - 1)
        values = {CC_DFSELECT: self.df_select,
                  CC_DF: (dev.offered >> (32 * self.df_select)) & 0xFFFF_FFFF if self.df_select < 2 else 0,
                  CC_GFSELECT: self.gf_select,
                  CC_GF: (self._driver_features >> (32 * self.gf_select)) & 0xFFFF_FFFF if self.gf_select < 2 else 0,
                  CC_MSIX: self.config_vector, CC_NUMQ: len(dev.queues), CC_STATUS: dev.status, CC_CFGGEN: 0,
                  CC_Q_SELECT: self.queue_sel, CC_Q_SIZE: queue.size if queue else 0,
                  CC_Q_MSIX: queue.msix_vector if queue else NO_VECTOR,
                  CC_Q_ENABLE: int(queue.ready) if queue else 0, CC_Q_NOFF: self.queue_sel}
        return values.get(offset, 0)

    def _common_write(self, offset: int, size: int, value: int) -> None:
        dev, queue = self.device, self._queue()
        base = offset & ~7 if offset >= CC_Q_DESC else offset
        if base in _CC_QUEUE_ADDRESS:
            if queue and not queue.ready:
                attr, shift = _CC_QUEUE_ADDRESS[base], 8 * (offset - base)
                mask = ((1 << (8 * size)) - 1) << shift
                setattr(queue, attr, (getattr(queue, attr) & ~mask) | ((value << shift) & mask))
            return
        if offset == CC_DFSELECT:
            self.df_select = value
        elif offset == CC_GFSELECT:
            self.gf_select = value
        elif offset == CC_GF and self.gf_select < 2:
            shift = 32 * self.gf_select
            self._driver_features = (self._driver_features & ~(0xFFFF_FFFF << shift)) | (value << shift)
            dev.set_driver_features(self._driver_features)
        elif offset == CC_STATUS:
            self._write_status(value)
        elif offset == CC_Q_SELECT:
            self.queue_sel = value
        elif offset == CC_Q_SIZE and queue and not queue.ready:
            queue.size = value
        elif offset == CC_Q_ENABLE and queue and value & 1:
            dev.enable_queue(self.queue_sel)
        elif offset == CC_MSIX:
            self.config_vector = self._vector(value)
        elif offset == CC_Q_MSIX and queue:
            queue.msix_vector = self._vector(value)

    def _vector(self, value: int) -> int:
        """A vector the table has, else NO_VECTOR: the driver reads it back to learn it failed (4.1.4.3.2)."""
        return value if value < self.msix_vectors else NO_VECTOR

    def _write_status(self, value: int) -> None:
        self.device.write_status(value)
        if value == 0:
            self._driver_features = 0
            self.config_vector = NO_VECTOR
            with self._lock:
                self.isr = 0
                self._update_line()

    # -- legacy I/O BAR ---------------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        dev, queue = self.device, self._queue()
        if offset >= LEG_CONFIG:
            return dev.read_config(offset - LEG_CONFIG, size)
        if offset == LEG_ISR:
            return self._read_isr()
        values = {LEG_HOST_FEATURES: dev.offered & 0xFFFF_FFFF, LEG_GUEST_FEATURES: self._driver_features & 0xFFFF_FFFF,
                  LEG_QUEUE_PFN: (queue.desc_addr // LEGACY_ALIGN) if queue and queue.ready else 0,
                  LEG_QUEUE_SIZE: queue.max_size if queue else 0, LEG_QUEUE_SELECT: self.queue_sel,
                  LEG_STATUS: dev.status}
        return values.get(offset, 0) & ((1 << (8 * size)) - 1)

    def io_write(self, offset: int, size: int, value: int) -> None:
        dev, queue = self.device, self._queue()
        if offset >= LEG_CONFIG:
            dev.write_config(offset - LEG_CONFIG, size, value)
        elif offset == LEG_GUEST_FEATURES:
            self._driver_features = value
            dev.set_driver_features(value)
        elif offset == LEG_QUEUE_PFN and queue:
            if value == 0:
                queue.reset()
            else:
                _legacy_rings(queue, value)
                dev.enable_queue(self.queue_sel)
        elif offset == LEG_QUEUE_SELECT:
            self.queue_sel = value
        elif offset == LEG_QUEUE_NOTIFY:
            dev.notify(value)
        elif offset == LEG_STATUS:
            self._write_status(value)


class PciWindows:
    """The PCI memory and I/O windows as one bus device each: accesses go to the function whose
    BAR currently covers the address (the guest may move BARs; firmware's values are a start)."""

    def __init__(self, functions: list[VirtioPci]) -> None:
        self.functions = functions
        self.memory = _Window(self, io=False, base=layout.PCI_MMIO_START)
        self.io = _Window(self, io=True, base=layout.PCI_IO_WINDOW[0])

    def find(self, addr: int, io: bool) -> tuple[VirtioPci, int] | None:
        for fn in self.functions:
            if io and not fn.transitional:
                continue
            index, size = (LEGACY_BAR, LEGACY_BAR_SIZE) if io else (MODERN_BAR, MODERN_BAR_SIZE)
            base = fn.bar_base(index)
            if fn.decodes(io) and base <= addr < base + size:
                return fn, addr - base
        return None


class _Window:
    def __init__(self, owner: PciWindows, io: bool, base: int) -> None:
        self.owner, self.is_io, self.base = owner, io, base

    def read(self, offset: int, size: int) -> int:
        hit = self.owner.find(self.base + offset, self.is_io)
        if hit is None:
            return (1 << (8 * size)) - 1
        fn, off = hit
        return fn.io_read(off, size) if self.is_io else fn.mem_read(off, size)

    def write(self, offset: int, size: int, value: int) -> None:
        hit = self.owner.find(self.base + offset, self.is_io)
        if hit is not None:
            fn, off = hit
            (fn.io_write if self.is_io else fn.mem_write)(off, size, value)


__all__ = ["VirtioPci", "PciWindows", "ISR_CONFIG"]
