"""Whose fault is a cell that did not pass: the guest, the hypervisor under test, or the harness/host.

LAVA classes job failures as Infrastructure / Job / Test / Bug; for this project the third
party is the hypervisor under test, and the evidence for it is the gap ledger:
- `harness`     the cell never got to judge the guest: an asset was missing, a backend failed to
                start or died, the watcher crashed (outcome `error`);
- `hypervisor`  the VM stopped on an emulation gap, or a gap new to the baseline failed the cell
                (certain); or the guest failed after the hypervisor refused it something (a #GP
                injected for an MSR) in the phase it failed in (suspected: `harness gaps bisect
                CELL` says which gap decides);
- `guest`       the guest failed (panic, oops, a command's check, a timeout) with no refused access
                before it, and (in a report: harness.report.culprits.run_culprits) it does not pass
                on QEMU in the same run; if it does, the hypervisor is suspected.
The cell's own culprit is classified once, when the cell ends (the runner stores it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.gaps.baseline import GapDiff
from harness.model.gap import FATE_GP_INJECTED, FATE_STOPPED
from harness.model.result import ERROR, GAP, PASS, CellResult

GUEST, HYPERVISOR, HARNESS = "guest", "hypervisor", "harness"
PARTIES = (GUEST, HYPERVISOR, HARNESS)
CERTAIN, SUSPECTED = "certain", "suspected"


@dataclass
class Culprit:
    party: str                      # one of PARTIES
    why: str                        # one line
    evidence: str = CERTAIN         # certain | suspected
    gap: dict[str, Any] | None = None   # {kind, key, access, fate, phase} of the deciding gap

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Culprit":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def label(self) -> str:
        gap = f" ({self.gap['kind']} {self.gap['key']})" if self.gap else ""
        return f"{self.party}{'?' if self.evidence == SUSPECTED else ''}{gap}"


def _gap_ref(g: dict[str, Any]) -> dict[str, Any]:
    return {k: g.get(k) for k in ("kind", "key", "access", "fate", "phase")}


def _refused_in_failing_phase(result: CellResult) -> list[dict[str, Any]]:
    """Accesses the hypervisor refused (a #GP injected) in the phase the guest failed in, oldest first.

    Refusals of earlier phases the guest survived; the ledger's phase is the last milestone before
    the gap, so the failing phase is the last milestone reached.
    """
    failing_phase = result.milestones[-1].name if result.milestones else None
    out = [g for g in result.gaps if g.get("phase") == failing_phase and g.get("fate") == FATE_GP_INJECTED]
    return sorted(out, key=lambda g: g.get("first_t") or 0.0)


def classify(result: CellResult) -> Culprit | None:
    """The culprit of a cell that did not pass (None for a pass)."""
    if result.outcome == PASS:
        return None
    if result.outcome == ERROR:
        kind = result.failure.kind if result.failure else "infrastructure"
        return Culprit(HARNESS, f"infrastructure error ({kind}): {result.reason}"[:300])
    stopped = [g for g in result.gaps if g.get("fate") == FATE_STOPPED]
    if result.outcome == GAP or stopped:
        g = stopped[0] if stopped else None
        what = f"{g['kind']} {g['key']}" if g else (result.failure.message if result.failure else result.reason)
        return Culprit(HYPERVISOR, f"stopped by an emulation gap: {what}"[:300], CERTAIN, _gap_ref(g) if g else None)
    if result.failure and result.failure.kind == "new-gap":
        new = GapDiff.from_dict(result.gap_diff).new
        return Culprit(HYPERVISOR, result.reason[:300], CERTAIN, _gap_ref(new[0]) if new else None)
    refused = _refused_in_failing_phase(result)
    if refused:
        g = refused[-1]
        return Culprit(HYPERVISOR, f"{result.outcome} after the hypervisor refused {g['kind']} {g['key']} "
                       f"({g.get('fate')}, phase {g.get('phase') or 'start'}): {result.reason}"[:300],
                       SUSPECTED, _gap_ref(g))
    return Culprit(GUEST, f"guest {result.outcome}: {result.reason}"[:300])


def culprit_of(result: CellResult) -> Culprit | None:
    """The culprit recorded in the result, or classified now (results written before culprits existed)."""
    if result.outcome == PASS:
        return None
    if isinstance(result.culprit, dict) and result.culprit.get("party") in PARTIES:
        return Culprit.from_json(result.culprit)
    return classify(result)
