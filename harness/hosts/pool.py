"""Warm labs: one lab per process (per pytest-xdist worker), serving its cells one after another.

A cell pays the lab's boot once per worker. A lab that died or wedged (harness.hosts.lab marks
it dead and its cell ends `error`) is closed and replaced by the next cell that needs one, so
the retried cell gets a fresh lab. Labs are closed at interpreter exit; their QEMU also dies
with this process (PR_SET_PDEATHSIG), so a killed worker leaves no lab behind.
"""
from __future__ import annotations

import atexit
import threading

from harness.assets.lab import lab_params
from harness.hosts.lab import Lab

_labs: dict[str, Lab] = {}
_lock = threading.Lock()


def lab_for(arch: str) -> Lab:
    """The warm lab for `arch`, started (or replaced, if dead) on demand."""
    with _lock:
        lab = _labs.get(arch)
        if lab is not None and lab.dead is None:
            return lab
        if lab is not None:
            lab.close()
            del _labs[arch]
        lab = Lab(lab_params(arch)).start()
        _labs[arch] = lab
        return lab


def running() -> dict[str, Lab]:
    return dict(_labs)


def close_all() -> None:
    with _lock:
        for lab in _labs.values():
            lab.close()
        _labs.clear()


atexit.register(close_all)
