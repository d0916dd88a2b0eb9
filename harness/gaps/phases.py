"""Boot phases of one cell, computed once when the cell ends and stored in its CellResult.

A phase is the stretch of boot that ends at a milestone (the first starts at VM start).
Backends report cumulative exit counts in EXIT_COUNTS events about every 100 ms, so a phase's
exits are `snapshot at/just after its end - snapshot at/just after its start` (VM start counts
as zero). Resolution is therefore one snapshot interval (~100 ms): up to 100 ms of exits after a
milestone are booked to the phase it ends, and a phase shorter than the interval may show none.
Phases add up exactly to the last snapshot because consecutive phases share their boundary.
Reports read `CellResult.phases`; they never recompute them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from harness.model.events import EXIT_COUNTS, VmEvent
from harness.model.result import MilestoneHit, Phase

_EPS = 1e-6


@dataclass
class _Snap:
    t: float                     # seconds since VM start
    counts: dict[str, int]
    user_time_s: float | None


def _snapshots(events: Iterable[VmEvent], start_time: float) -> list[_Snap]:
    out = []
    for ev in events:
        if ev.type != EXIT_COUNTS or not isinstance(ev.data, dict):
            continue
        counts = ev.data.get("counts") or {}
        if not isinstance(counts, dict):
            continue
        clean = {str(k): int(v) for k, v in counts.items() if isinstance(v, (int, float))}
        ut = ev.data.get("user_time_s")
        out.append(_Snap(ev.t - start_time, clean, float(ut) if isinstance(ut, (int, float)) else None))
    out.sort(key=lambda s: s.t)
    return out


def _at_or_after(snaps: list[_Snap], t: float) -> _Snap | None:
    for s in snaps:
        if s.t >= t - _EPS:
            return s
    return snaps[-1] if snaps else None  # the VM stopped reporting: best lower bound


def phases_from_snapshots(milestones: list[MilestoneHit], snapshots: list[VmEvent],
                          start_time: float) -> list[Phase]:
    """One Phase per milestone, with the exits and VMM user time spent in it (100 ms resolution)."""
    snaps = _snapshots(snapshots, start_time)
    zero = _Snap(0.0, {}, 0.0)
    phases, prev_t = [], 0.0
    for m in sorted(milestones, key=lambda m: m.t):
        begin = zero if prev_t <= _EPS else _at_or_after(snaps, prev_t)
        end = _at_or_after(snaps, m.t)
        counts: dict[str, int] = {}
        user_time = None
        if begin is not None and end is not None:
            for k, v in end.counts.items():
                d = v - begin.counts.get(k, 0)
                if d > 0:
                    counts[k] = d
            if end.user_time_s is not None and begin.user_time_s is not None:
                user_time = round(max(0.0, end.user_time_s - begin.user_time_s), 6)
        phases.append(Phase(m.name, prev_t, m.t, counts, user_time))
        prev_t = m.t
    return phases
