"""`harness repro`: run one recorded cell again, N times, and say whether it reproduced.

A run reproduces the recording when it has the same outcome and the same decisive thing: the
failure line (panic text, triple-fault RIP), the gap that stopped it, or the milestone a timeout
waited for. Gaps are compared as (kind, key) sets and reported beside the verdict.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from harness.assets.pinned import resolve_pinned
from harness.model.result import PASS, TIMEOUT
from harness.repro.source import ReproSource
from harness.runner.execute import RunOptions, run_cell
from harness.runner.matrix import Cell


def decisive(result: dict[str, Any]) -> str:
    """The outcome and the one thing that decided it, comparable across runs."""
    outcome = result.get("outcome")
    failure = result.get("failure") or {}
    if outcome == PASS:
        return "pass"
    if outcome == TIMEOUT:
        waiting = (result.get("near_miss") or {}).get("waiting_for")
        return f"timeout waiting for {waiting}" + (" (hang)" if failure.get("kind") == "hang" else "")
    lines = [ln.strip() for ln in str(failure.get("message") or result.get("reason") or "").splitlines() if ln.strip()]
    return f"{outcome}: {failure.get('kind')}: {lines[0] if lines else ''}"


def gap_keys(result: dict[str, Any]) -> set[tuple[str, str]]:
    return {(str(g.get("kind")), str(g.get("key"))) for g in result.get("gaps") or []}


@dataclass
class ReproRun:
    index: int
    result: dict[str, Any]
    same: bool
    new_gaps: set[tuple[str, str]] = field(default_factory=set)
    missing_gaps: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class ReproReport:
    recorded: dict[str, Any]
    runs: list[ReproRun]

    @property
    def reproduced(self) -> int:
        return sum(r.same for r in self.runs)

    def verdict(self) -> str:
        return f"reproduced {self.reproduced}/{len(self.runs)}"


def reproduce(source: ReproSource, times: int, run_dir: Path, *, echo: Callable[[bytes], None] | None = None,
              on_run: Callable[[ReproRun], None] | None = None, **run_options: Any) -> ReproReport:
    """`run_options`: more RunOptions fields (the debug flags: debug, notify, progress)."""
    cell = source.cell()
    check_assets(source, cell)
    recorded = source.result
    want, want_gaps = decisive(recorded), gap_keys(recorded)
    runs = []
    for i in range(times):
        options = RunOptions(run_dir=run_dir, echo=echo, repeat_index=i,
                             pinned_assets=dict(source.record.get("assets") or {}),
                             pinned_commit=(source.record.get("harness") or {}).get("commit"), **run_options)
        result = run_cell(cell, options).to_json()
        got = gap_keys(result)
        run = ReproRun(i + 1, result, decisive(result) == want, got - want_gaps, want_gaps - got)
        runs.append(run)
        if on_run:
            on_run(run)
    return ReproReport(recorded, runs)


def check_assets(source: ReproSource, cell: Cell) -> None:
    """Before any run: every pinned asset resolves to the recorded bytes, or a one-line AssetError."""
    commit = (source.record.get("harness") or {}).get("commit")
    for role, sha in (source.record.get("assets") or {}).items():
        spec = getattr(cell.guest, role, None)
        if spec is not None:
            resolve_pinned(spec, role=role, guest=cell.guest.name, sha256=sha, commit=commit)


def boot_command(source: ReproSource, kernel: str | None = None, initrd: str | None = None) -> str:
    """The `harness boot` line that runs the same guest by hand (paths: what the recorded cell booted)."""
    rec, result = source.record, source.result
    guest = source.guest()
    cell = rec["cell"]
    prov = result.get("provenance") or {}
    kernel = kernel or (prov.get("kernel") or {}).get("path") or "KERNEL"
    initrd = initrd or (prov.get("initrd") or {}).get("path")
    scale = float(rec["timeouts"].get("scale") or 1.0)
    argv = ["harness", "boot", kernel]
    if initrd:
        argv += ["--initrd", initrd]
    argv += ["--cmdline", rec.get("cmdline", ""), "--memory", str(cell["memory"]), "--vcpus", str(cell["vcpus"]),
             "--boot", rec.get("boot", "auto"), "--backend", cell["backend"], "--host", cell.get("host", "native"),
             "--cpu-profile", cell["cpu_profile"],
             "--gap-policy", cell["gap_policy"], "--family", guest.family]
    for m in guest.milestones:
        argv += ["--expect", m.pattern]
    argv += ["--timeout", f"{max(m.timeout for m in guest.milestones) * scale:g}",
             "--hang-timeout", f"{float(rec['timeouts']['hang']) * scale:g}"]
    for f in guest.failures:
        argv += ["--failure", f"{f.name}={f.pattern}"]
    return shlex.join(argv)


def matrix_snippet(source: ReproSource) -> str:
    """The matrix.yaml lines that make this cell part of a matrix (with the recorded overrides)."""
    cell = source.record["cell"]
    axes = {"guest": source.result["guest"], "backend": cell["backend"], "host": cell.get("host", "native"),
            "cpu_profile": cell["cpu_profile"],
            "gap_policy": cell["gap_policy"], "vcpus": cell["vcpus"], "memory": cell["memory"], "tier": cell["tier"]}
    lines = ["include:", "  - " + _flow(axes)]
    settings = {k: cell[k] for k in ("expect", "cmdline_append", "hang_timeout", "fail_on_new_gaps")
                if cell.get(k) not in (None, "", False, "pass")}
    if settings:
        match = {k: axes[k] for k in ("guest", "backend", "cpu_profile", "gap_policy")}
        lines += ["overrides:", "  - match: " + _flow(match), "    set: " + _flow(settings)]
    return "\n".join(lines)


def _flow(mapping: dict[str, Any]) -> str:
    return yaml.safe_dump(mapping, default_flow_style=True, sort_keys=False, width=10_000).strip()
