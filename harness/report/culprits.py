"""A run's culprits: each cell's own (harness.gaps.culprit) plus the run's differential evidence."""
from __future__ import annotations

from harness.gaps.culprit import GUEST, HYPERVISOR, SUSPECTED, Culprit, culprit_of
from harness.model.result import PASS
from harness.report.backend_diff import backend_diffs
from harness.report.run import RunData


def run_culprits(run: RunData) -> dict[str, Culprit | None]:
    """Every cell's culprit (by cell key), with the run's differential evidence added.

    A built-in cell that would be the guest's fault, while the same guest passes on a QEMU
    backend in the same run, points at the hypervisor under test (suspected; the first gap only
    the built-in cell had is named). One function, so the reports all say the same.
    """
    out = {c.key: culprit_of(c.result) for c in run.cells}
    key_of = {c.result.cell_id: c.key for c in run.cells}
    for pair in backend_diffs(run):
        key = key_of.get(pair.cell_a)
        culprit = out.get(key) if key else None
        if culprit is None or culprit.party != GUEST or pair.divergence is None or pair.divergence.outcome_b != PASS:
            continue
        d = pair.divergence
        where = f"first divergence at milestone {d.milestone!r}" if d.milestone else "same milestones"
        out[key] = Culprit(HYPERVISOR, f"{d.outcome_a} on {pair.backend_a}, passes on {pair.backend_b} in the same "
                           f"run ({where}): {culprit.why}"[:300], SUSPECTED, d.first_gap_only_a)
    return out
