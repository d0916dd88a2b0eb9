"""The same guest on the built-in hypervisor and on QEMU in one run: where they part ways.

Both cells ran on the same host in the same run, so QEMU is the reference for the built-in
hypervisor under test. Per pair: each milestone's time on both backends, and the first
divergence: the first milestone one backend reached and the other did not (or, when both
reached every milestone alike, a differing outcome), the exit counts of the phase ending at
that milestone on each side, and the first gap (by time) each side had that the other did not.

    harness report diff-backends RUN [--guest G] [--format text|json]
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from harness.model.result import CellResult
from harness.report.hosts import host_of
from harness.report.run import CellView, RunData

REFERENCE_PREFIX = "qemu"
BUILTIN = "builtin"


@dataclass
class MilestoneTimes:
    milestone: str
    t_a: float | None            # seconds since VM start on backend A (builtin); None: not reached
    t_b: float | None

    @property
    def ratio(self) -> float | None:
        return round(self.t_a / self.t_b, 3) if self.t_a is not None and self.t_b and self.t_b > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class Divergence:
    milestone: str | None        # the first milestone reached by one side only (None: only the outcome differs)
    reached_by: str | None       # the backend that reached it
    outcome_a: str
    outcome_b: str
    exits_a: dict[str, int] = field(default_factory=dict)    # the phase ending at `milestone`, per side
    exits_b: dict[str, int] = field(default_factory=dict)
    first_gap_only_a: dict[str, Any] | None = None
    first_gap_only_b: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BackendPair:
    guest: str
    cell_a: str
    cell_b: str
    backend_a: str
    backend_b: str
    milestones: list[MilestoneTimes]
    divergence: Divergence | None

    def to_json(self) -> dict[str, Any]:
        return {"guest": self.guest, "cell_a": self.cell_a, "cell_b": self.cell_b, "backend_a": self.backend_a,
                "backend_b": self.backend_b, "milestones": [m.to_json() for m in self.milestones],
                "divergence": self.divergence.to_json() if self.divergence else None}

    def to_text(self) -> str:
        lines = [f"{self.guest}: {self.cell_a}  vs  {self.cell_b}",
                 f"  {'milestone':24} {self.backend_a:>12} {self.backend_b:>12}  ratio"]
        for m in self.milestones:
            a = f"{m.t_a:.3f}" if m.t_a is not None else "-"
            b = f"{m.t_b:.3f}" if m.t_b is not None else "-"
            lines.append(f"  {m.milestone:24} {a:>12} {b:>12}  {m.ratio if m.ratio is not None else ''}")
        d = self.divergence
        if d is None:
            lines.append("  no divergence: same milestones, same outcome")
            return "\n".join(lines)
        where = (f"milestone {d.milestone!r} reached only on {d.reached_by}" if d.milestone
                 else "every milestone alike")
        lines.append(f"  first divergence: {where}; outcome {d.outcome_a} vs {d.outcome_b}")
        lines.append(f"    exits in that phase: {self.backend_a} {_counts(d.exits_a)}; "
                     f"{self.backend_b} {_counts(d.exits_b)}")
        for side, gap in ((self.backend_a, d.first_gap_only_a), (self.backend_b, d.first_gap_only_b)):
            if gap:
                lines.append(f"    first gap only on {side}: {gap['kind']} {gap['key']} (phase {gap.get('phase')})")
        return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none recorded"


def _times(result: CellResult) -> dict[str, float]:
    return {m.name: m.t for m in result.milestones}


def _phase_exits(result: CellResult, milestone: str) -> dict[str, int]:
    """Exits of the phase ending at `milestone`; not reached: the phase in progress (total minus reached phases)."""
    for p in result.phases:
        if p.name == milestone:
            return dict(p.exit_counts)
    rest = dict(result.exit_counts)
    for p in result.phases:
        for k, v in p.exit_counts.items():
            rest[k] = rest.get(k, 0) - v
    return {k: v for k, v in rest.items() if v > 0}


def _first_only(a: CellResult, b: CellResult) -> dict[str, Any] | None:
    keys_b = {(g.get("kind"), g.get("key")) for g in b.gaps}
    only = [g for g in a.gaps if (g.get("kind"), g.get("key")) not in keys_b]
    only.sort(key=lambda g: g.get("first_t") or 0.0)
    return {k: only[0].get(k) for k in ("kind", "key", "access", "phase", "fate", "policy")} if only else None


def compare_pair(a: CellResult, b: CellResult) -> BackendPair:
    names = a.expected_milestones or b.expected_milestones or [m.name for m in a.milestones]
    ta, tb = _times(a), _times(b)
    rows = [MilestoneTimes(n, ta.get(n), tb.get(n)) for n in names]
    split = next((r for r in rows if (r.t_a is None) != (r.t_b is None)), None)
    divergence = None
    if split is not None or a.outcome != b.outcome:
        ms = split.milestone if split else None
        divergence = Divergence(ms, (a.backend if split.t_a is not None else b.backend) if split else None,
                                a.outcome, b.outcome,
                                _phase_exits(a, ms) if ms else dict(a.exit_counts),
                                _phase_exits(b, ms) if ms else dict(b.exit_counts),
                                _first_only(a, b), _first_only(b, a))
    return BackendPair(a.guest, a.cell_id, b.cell_id, a.backend, b.backend, rows, divergence)


def _pairs(cells: list[CellView]) -> list[tuple[CellResult, CellResult]]:
    """Each built-in cell with the reference cell (qemu-*) of the same guest, vCPUs, memory and host
    (in the lab: builtin and qemu-kvm on the same nested KVM; never a lab cell against a native one)."""
    first = [c.result for c in cells if c.result.repeat_index == 0]
    out = []
    for a in (r for r in first if r.backend == BUILTIN):
        for b in (r for r in first if r.backend.startswith(REFERENCE_PREFIX) and r.guest == a.guest
                  and host_of(r) == host_of(a)):
            if (a.params.get("vcpus"), a.params.get("memory_mib")) == (b.params.get("vcpus"), b.params.get("memory_mib")):
                out.append((a, b))
    return out


def backend_diffs(run: RunData, guest: str | None = None) -> list[BackendPair]:
    return [compare_pair(a, b) for a, b in _pairs(run.cells) if guest is None or a.guest == guest]
