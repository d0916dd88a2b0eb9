"""The gap ledger: one deduplicated, phase-annotated list of gaps per cell.

A backend emits a GapRecord every time the guest touches something missing (an unknown MSR
read in a loop can produce thousands). The ledger folds repeats of the same gap (same
`key_tuple()`) into one record with a count, and names the boot phase in which the gap was
first seen, so a report can say "tsc-msr 0x10, 4 times, first after milestone `kernel`".

Phase naming: a gap's `phase` is the name of the last milestone reached at or before the gap
was first seen, or "boot" when no milestone had been reached yet. (A `Phase` in a CellResult
is named after the milestone that *ends* it, so a gap with phase "kernel" happened during the
Phase that starts at "kernel".)
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from harness.model.events import GAP, VmEvent
from harness.model.gap import GapRecord
from harness.model.result import MilestoneHit

BEFORE_FIRST_MILESTONE = "boot"

def gaps_from_events(events: Iterable[VmEvent]) -> list[GapRecord]:
    """The GapRecords carried by GAP events (malformed ones are skipped: a torn write is not a gap)."""
    out = []
    for ev in events:
        if ev.type != GAP or not isinstance(ev.data, dict):
            continue
        try:
            rec = GapRecord.from_json(ev.data)
        except TypeError:
            continue
        if rec.first_t is None:
            rec.first_t = ev.t
        out.append(rec)
    return out


def as_record(gap: GapRecord | dict[str, Any]) -> GapRecord:
    return gap if isinstance(gap, GapRecord) else GapRecord.from_json(gap)


def dedup(records: Iterable[GapRecord | dict[str, Any]]) -> list[GapRecord]:
    """Fold repeats by key_tuple(); the first occurrence keeps its place. Inputs are not modified."""
    by_key: dict[tuple[str, str, str], GapRecord] = {}
    for rec in records:
        rec = as_record(rec)
        k = rec.key_tuple()
        if k in by_key:
            by_key[k].merge(rec)
        else:
            by_key[k] = copy.deepcopy(rec)
    return list(by_key.values())


def phase_at(t: float | None, milestones: list[MilestoneHit], start_time: float) -> str | None:
    """Name of the last milestone at or before monotonic time `t` ("boot" before the first)."""
    if t is None:
        return None
    name = BEFORE_FIRST_MILESTONE
    for m in sorted(milestones, key=lambda m: m.t):
        if start_time + m.t <= t:
            name = m.name
        else:
            break
    return name


def build_ledger(records: list[GapRecord], milestones: list[MilestoneHit], start_time: float) -> list[GapRecord]:
    """Deduplicate one cell's gap records, assign phases, sort by first sighting (stable).

    `start_time` is the VM start on the host monotonic clock; milestone times are relative to it,
    gap `first_t` values are absolute monotonic times. Records without a time keep any phase they
    carry and sort last, in input order.
    """
    ledger = dedup(records)
    for rec in ledger:
        phase = phase_at(rec.first_t, milestones, start_time)
        if phase is not None:
            rec.phase = phase
    ledger.sort(key=lambda r: (r.first_t is None, r.first_t if r.first_t is not None else 0.0))
    return ledger


def gap_id(family: str, record: GapRecord | dict[str, Any]) -> str:
    """A stable id for (guest family, kind, key): readable form plus a short hash.

    The hash makes ids safe as HTML anchors and file names whatever the key holds; the readable
    part makes them greppable. Same inputs give the same id on every run and host.
    """
    rec = as_record(record)
    family = (family or "unknown").strip().lower()
    key = rec.key.strip().lower()
    digest = hashlib.sha256(f"{family}\0{rec.kind}\0{key}".encode()).hexdigest()[:8]
    return f"{family}/{rec.kind}/{key}#{digest}"


@dataclass
class RunGap:
    """One gap across the cells of a run (the run-wide ledger entry)."""
    id: str
    family: str
    kind: str
    key: str
    access: str
    count: int = 0
    cells: list[str] = field(default_factory=list)
    guests: list[str] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    fates: list[str] = field(default_factory=list)
    first_rip: int | None = None
    values: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _add_unique(items: list[Any], value: Any) -> None:
    if value not in (None, "") and value not in items:
        items.append(value)


def merge_run_ledger(cells: Iterable[tuple[str, str, str, list[dict[str, Any]]]]) -> list[RunGap]:
    """Merge the per-cell ledgers of a run. Input: (cell_id, guest, family, gaps) per cell.

    Entries are keyed by (gap_id, access) so a read and a write of the same MSR stay apart.
    """
    merged: dict[tuple[str, str], RunGap] = {}
    for cell_id, guest, family, gaps in cells:
        for g in gaps:
            rec = as_record(g)
            gid = gap_id(family, rec)
            entry = merged.get((gid, rec.access))
            if entry is None:
                entry = merged[(gid, rec.access)] = RunGap(gid, family, rec.kind, rec.key, rec.access,
                                                           first_rip=rec.first_rip)
            entry.count += rec.count
            _add_unique(entry.cells, cell_id)
            _add_unique(entry.guests, guest)
            _add_unique(entry.phases, rec.phase)
            _add_unique(entry.policies, rec.policy)
            _add_unique(entry.fates, rec.fate)
            if entry.first_rip is None:
                entry.first_rip = rec.first_rip
            for v in rec.values:
                if len(entry.values) < GapRecord.MAX_VALUES:
                    _add_unique(entry.values, v)
    return sorted(merged.values(), key=lambda e: (e.family, e.kind, e.key, e.access))
