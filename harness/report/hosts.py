"""Hosts in a report: which kinds of KVM a run's cells ran on, and the same-KVM differential.

The differential puts the built-in VMM and qemu-kvm side by side where both ran the same guest
with the same parameters on the same host (in the lab: the same nested kvm_amd), per milestone.
"""
from __future__ import annotations

from typing import Any

from harness.runner.result import CellResult

DIFFERENTIAL = ("builtin", "qemu-kvm")


def host_of(result: CellResult) -> str:
    return str(result.params.get("host") or result.host.get("host") or "native")


def host_kinds(results: list[CellResult]) -> dict[str, dict[str, Any]]:
    """host -> what it was: KVM kind, CPU model, kernel (the lab's kernel for the lab)."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        host = host_of(r)
        if host in out or not r.host:
            continue
        lab = r.host.get("lab") or {}
        out[host] = {"kvm": lab.get("kind") or r.host.get("kvm_module") or r.host.get("accel") or "-",
                     "cpu_model": lab.get("cpu_model") or r.host.get("cpu_model") or "-",
                     "kernel": lab.get("lab_kernel") or r.host.get("kernel_release") or "-"}
    return out


def differential(results: list[CellResult]) -> list[dict[str, Any]]:
    """Rows {guest, host, milestone, builtin, qemu-kvm, ratio} for guests both backends ran alike."""
    groups: dict[tuple, dict[str, CellResult]] = {}
    for r in results:
        if r.backend not in DIFFERENTIAL or r.repeat_index:
            continue
        p = r.params
        key = (r.guest, host_of(r), p.get("vcpus"), p.get("memory_mib"))
        groups.setdefault(key, {})[r.backend] = r
    rows = []
    for (guest, host, _vcpus, _mem), pair in sorted(groups.items()):
        if len(pair) < 2:
            continue
        times = {b: {m.name: m.t for m in pair[b].milestones} for b in DIFFERENTIAL}
        for name in pair["builtin"].expected_milestones:
            a, b = times["builtin"].get(name), times["qemu-kvm"].get(name)
            rows.append({"guest": guest, "host": host, "milestone": name, "builtin": a, "qemu-kvm": b,
                         "ratio": (a / b) if a is not None and b else None})
    return rows


def render_markdown(results: list[CellResult], md: Any) -> list[str]:
    out: list[str] = []
    kinds = host_kinds(results)
    if kinds:
        out += ["", "## Hosts", "", "| host | KVM | CPU | kernel |", "|---|---|---|---|"]
        for host, k in sorted(kinds.items()):
            out.append(f"| {md(host)} | {md(k['kvm'])} | {md(k['cpu_model'])} | {md(k['kernel'])} |")
    rows = differential(results)
    if rows:
        out += ["", "## Same-KVM differential: builtin vs qemu-kvm", "",
                "| guest | host | milestone | builtin (s) | qemu-kvm (s) | builtin / qemu-kvm |", "|---|---|---|---:|---:|---:|"]
        for r in rows:
            fmt = lambda v: "-" if v is None else f"{v:.2f}"   # noqa: E731
            out.append(f"| {md(r['guest'])} | {md(r['host'])} | {md(r['milestone'])} | {fmt(r['builtin'])} "
                       f"| {fmt(r['qemu-kvm'])} | {fmt(r['ratio'])} |")
    return out
