"""virtio-console (virtio 1.2, 5.3), one port, no multiport: the guest's hvc0.

Bytes the guest transmits go to `output` (the VMM records them as a second console stream, like
the UART's); `feed()` queues host input for the receive queue. No feature bits are offered, so the
config fields (cols, rows, max_nr_ports, emerg_wr) mean nothing and reading them is a gap.
"""
from __future__ import annotations

from typing import Any, Callable

from harness.devices.virtio.device import VirtioDevice
from harness.devices.virtio.queue import Virtqueue
from harness.model.gap import GapRecord

DEVICE_ID = 3
RECEIVEQ, TRANSMITQ = 0, 1
CONFIG_SIZE = 12
MAX_PENDING_INPUT = 1 << 16
MAX_TX_CHUNK = 1 << 16


class VirtioConsole(VirtioDevice):
    device_id = DEVICE_ID
    name = "console"
    queue_sizes = (64, 64)
    modelled_config = 0

    def __init__(self, ram: Any, gap: Callable[[GapRecord], None], output: Callable[[bytes], None]) -> None:
        self.output = output
        self.pending = bytearray()
        super().__init__(ram, gap)

    def config_bytes(self) -> bytes:
        return bytes(CONFIG_SIZE)

    def on_reset(self) -> None:
        self.pending.clear()

    def feed(self, data: bytes) -> None:
        """Host input for the guest (any thread); delivered when the driver has posted buffers."""
        with self.lock:
            self.pending += data[:MAX_PENDING_INPUT - len(self.pending)]
        self.notify(RECEIVEQ)

    def process(self, index: int, queue: Virtqueue) -> bool:
        return self._transmit(queue) if index == TRANSMITQ else self._receive(queue)

    def _transmit(self, queue: Virtqueue) -> bool:
        used = False
        while (chain := queue.pop()) is not None:
            data = queue.read_all(chain, MAX_TX_CHUNK)
            if data:
                self.output(data)
            queue.push(chain, 0)
            used = True
        return used

    def _receive(self, queue: Virtqueue) -> bool:
        used = False
        while self.pending and queue.pending():
            chain = queue.pop()
            if chain is None:
                break
            n = queue.write_all(chain, bytes(self.pending))
            del self.pending[:n]
            queue.push(chain, n)
            used = True
        return used
