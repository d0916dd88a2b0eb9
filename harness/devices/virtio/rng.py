"""virtio-rng (virtio 1.2, 5.4): every device-writable buffer filled from the host's os.urandom."""
from __future__ import annotations

import os

from harness.devices.virtio.device import VirtioDevice
from harness.devices.virtio.queue import Virtqueue

DEVICE_ID = 4
MAX_REQUEST = 1 << 16              # bytes per buffer we fill at most; the driver asks again


class VirtioRng(VirtioDevice):
    device_id = DEVICE_ID
    name = "rng"
    queue_sizes = (64,)

    def process(self, index: int, queue: Virtqueue) -> bool:
        used = False
        while (chain := queue.pop()) is not None:
            n = queue.write_all(chain, os.urandom(min(chain.writable_bytes, MAX_REQUEST)))
            queue.push(chain, n)
            used = True
        return used
