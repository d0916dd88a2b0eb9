"""Matrix tiers: how much of the matrix (and of the asset recipes) a run takes.

One table for the matrix expander, the asset builder and every CLI/pytest `--tier` choice.
"""
from __future__ import annotations

QUICK, NIGHTLY = "quick", "nightly"
TIERS = {
    QUICK: "every push: the fixtures and the fast boots",
    NIGHTLY: "everything, the quick tier included (boots that take minutes)",
}


def tiers_run_by(tier: str) -> set[str]:
    """The entry tiers a run of `tier` takes: nightly includes quick."""
    return {QUICK} if tier == QUICK else set(TIERS)
