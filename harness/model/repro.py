"""What a cell's repro record says to a reader: the command that bundles it for another machine
and the one word naming the kind of host that ran it. The record itself is written by
harness.runner.repro_record; the reports (which never import the runner) and `harness repro` read it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def bundle_command(cell_dir: str, with_assets: bool = True) -> str:
    """The command a report shows next to a failed cell."""
    name = Path(cell_dir).name
    return f"harness bundle {cell_dir} -o {name}.tar.gz" + (" --with-assets" if with_assets else "")


def host_kind(host: dict[str, Any]) -> str | None:
    """The one word that says what kind of host ran a cell (kvm_pvm, kvm_intel, ...; qemu's accel)."""
    return host.get("kvm_module") or host.get("module") or host.get("accel") or None
