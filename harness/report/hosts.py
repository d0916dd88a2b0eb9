"""Hosts in a report: which kinds of KVM a run's cells ran on.

The same-KVM differential (builtin beside qemu-kvm in the lab, per milestone) is
harness.report.backend_diff, which pairs cells only within one host (`host_of`).
"""
from __future__ import annotations

from typing import Any

from harness.model.result import CellResult


def host_of(result: CellResult) -> str:
    return str(result.params.get("host") or result.host.get("host") or "native")


def host_kinds(results: list[CellResult]) -> dict[str, dict[str, Any]]:
    """host -> what it was: KVM kind, CPU model, kernel (the lab's kernel for the lab)."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: not r.host.get("kvm_module")):   # a KVM cell says most
        host = host_of(r)
        if host in out or not r.host:
            continue
        lab = r.host.get("lab") or {}
        out[host] = {"kvm": lab.get("kind") or r.host.get("kvm_module") or r.host.get("accel") or "-",
                     "cpu_model": lab.get("cpu_model") or r.host.get("cpu_model") or "-",
                     "kernel": lab.get("lab_kernel") or r.host.get("kernel_release") or "-",
                     # what the host's KVM gets wrong and the VMM worked around (harness.hosts.quirks)
                     "quirks": ", ".join(lab.get("quirks") or r.host.get("quirks") or []) or "-"}
    return out


def render_markdown(results: list[CellResult], md: Any) -> list[str]:
    out: list[str] = []
    kinds = host_kinds(results)
    if kinds:
        out += ["", "## Hosts", "", "| host | KVM | CPU | kernel | quirks |", "|---|---|---|---|---|"]
        for host, k in sorted(kinds.items()):
            out.append(f"| {md(host)} | {md(k['kvm'])} | {md(k['cpu_model'])} | {md(k['kernel'])} | {md(k['quirks'])} |")
    return out
