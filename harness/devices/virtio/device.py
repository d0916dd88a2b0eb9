"""What every virtio device shares, whatever its transport (virtio 1.2, chapters 2-3).

A `VirtioDevice` owns its queues, its feature bits and its configuration space; the transport
(mmio.py, pci.py) owns the registers and calls in here. Device types (blk.py, console.py, rng.py)
implement `process(queue_index)` and the config fields they model.

Gaps, under their own kinds (harness.model.gap):
  virtio-feature  the driver acknowledged a feature bit we did not offer (key: device/bit), once
  virtio-config   the driver touched a config offset we do not model (key: device/offset), once
  virtio-queue    a malformed ring: the device sets DEVICE_NEEDS_RESET, stops, and says why
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from harness.devices.virtio.queue import Virtqueue, VirtqueueError
from harness.errors import GuestMemoryError
from harness.model.gap import (FATE_STOPPED, VIRTIO_CONFIG, VIRTIO_FEATURE, VIRTIO_QUEUE,
                                 GapRecord)

# device status bits (2.1)
STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK = 1, 2, 4
STATUS_FEATURES_OK, STATUS_DEVICE_NEEDS_RESET, STATUS_FAILED = 8, 64, 128
# reserved feature bits (6)
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
# ISR bits (4.1.4.5)
ISR_QUEUE, ISR_CONFIG = 1, 2


class VirtioDevice:
    """Base class: `device_id`, `name`, `queue_sizes`, `device_features()`, `config` bytes, `process()`."""

    device_id = 0
    name = "virtio"
    queue_sizes: tuple[int, ...] = (256,)
    modelled_config = 0               # bytes of `config` that mean something; beyond: a gap

    def __init__(self, ram: Any, gap: Callable[[GapRecord], None]) -> None:
        self.ram = ram
        self.gap = gap
        self.lock = threading.RLock()
        self.queues = [Virtqueue(ram, size) for size in self.queue_sizes]
        self.config = bytearray(self.config_bytes())
        # set by the transport: (ISR bits, queue index or None for a configuration change)
        self.interrupt: Callable[[int, int | None], None] = lambda isr_bits, queue=None: None
        self.status = 0
        self.driver_features = 0
        self.broken: str | None = None
        self._config_gaps: set[int] = set()
        self._feature_gaps: set[int] = set()

    # -- to be provided by each device type -------------------------------------------------------
    def device_features(self) -> int:
        return 0

    def config_bytes(self) -> bytes:
        return b""

    def process(self, index: int, queue: Virtqueue) -> bool:
        """Serve what the driver queued on queue `index`; True when used buffers were added."""
        raise NotImplementedError

    def on_reset(self) -> None:
        """Device-specific state to drop when the driver resets the device."""

    # -- features ---------------------------------------------------------------------------------------
    @property
    def offered(self) -> int:
        return self.device_features() | (1 << VIRTIO_F_VERSION_1)

    def set_driver_features(self, value: int) -> None:
        self.driver_features = value
        unknown = value & ~self.offered
        for bit in range(unknown.bit_length()):
            if unknown >> bit & 1 and bit not in self._feature_gaps:   # once per bit and device
                self._feature_gaps.add(bit)
                self.gap(GapRecord(kind=VIRTIO_FEATURE, key=f"{self.name}/{bit}", access="write",
                                   values=[bit], detail={"offered": hex(self.offered)}))

    def features_ok(self) -> bool:
        """FEATURES_OK is accepted only for a subset of what we offered, including VERSION_1."""
        return not self.driver_features & ~self.offered and bool(self.driver_features >> VIRTIO_F_VERSION_1 & 1)

    def has(self, bit: int) -> bool:
        return bool(self.driver_features >> bit & 1)

    # -- status ------------------------------------------------------------------------------------------
    def write_status(self, value: int) -> None:
        with self.lock:
            if value == 0:
                self.reset()
                return
            if value & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK and not self.features_ok():
                value &= ~STATUS_FEATURES_OK           # the driver reads it back and gives up (3.1.1)
            self.status = value | (self.status & STATUS_DEVICE_NEEDS_RESET)

    def reset(self) -> None:
        with self.lock:
            self.status = 0
            self.driver_features = 0
            self.broken = None
            for q in self.queues:
                q.reset()
            self.config[:] = self.config_bytes()
            self.on_reset()

    # -- configuration space -----------------------------------------------------------------------------
    def read_config(self, offset: int, size: int) -> int:
        if offset < 0 or size <= 0 or offset + size > len(self.config) or offset + size > self.modelled_config:
            self._config_gap(offset, size, "read")
            if offset < 0 or offset >= len(self.config):
                return 0
        return int.from_bytes(self.config[offset:offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Config space is read-only for the fields we model; writes are recorded and dropped."""
        self._config_gap(offset, size, "write")

    def _config_gap(self, offset: int, size: int, access: str) -> None:
        if offset in self._config_gaps:
            return
        self._config_gaps.add(offset)
        self.gap(GapRecord(kind=VIRTIO_CONFIG, key=f"{self.name}/{offset:#x}", access=access,
                           detail={"size": size, "modelled_bytes": self.modelled_config}))

    # -- queues ---------------------------------------------------------------------------------------
    def enable_queue(self, index: int) -> None:
        with self.lock:
            try:
                self.queues[index].enable()
            except VirtqueueError as exc:
                self.fail(index, exc)

    def notify(self, index: int) -> None:
        """The driver kicked queue `index` (any thread). Malformed rings stop the device, not the VM."""
        with self.lock:
            if self.broken or not self.status & STATUS_DRIVER_OK or not 0 <= index < len(self.queues):
                return
            queue = self.queues[index]
            if not queue.ready:
                return
            try:
                used = self.process(index, queue)
                if used and not queue.interrupts_suppressed():
                    self.interrupt(ISR_QUEUE, index)
            except VirtqueueError as exc:
                self.fail(index, exc)
            except GuestMemoryError as exc:
                self.fail(index, VirtqueueError("guest-memory", {"error": str(exc)}))

    def fail(self, index: int, exc: VirtqueueError) -> None:
        """Stop the device: DEVICE_NEEDS_RESET + a config interrupt (2.1.2), one gap record."""
        self.broken = exc.what
        self.status |= STATUS_DEVICE_NEEDS_RESET
        self.gap(GapRecord(kind=VIRTIO_QUEUE, key=f"{self.name}/{exc.what}", fate=FATE_STOPPED,
                           detail={"queue": index, **{k: v for k, v in exc.detail.items()}}))
        self.interrupt(ISR_CONFIG, None)
