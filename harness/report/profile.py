"""Boot-time profiles: phases with exit counts, repeated-run statistics, regression verdicts.

Phases are computed once, when the cell ends (harness.gaps.phases), and read here from the
CellResult.

Repeats. `harness run --repeat N` gives N CellResults with the same cell_id and repeat_index
0..N-1. Per milestone we report median, min, max and MAD of its time since VM start and of its
phase duration.

Regressions (against a baseline run). A phase is "slower" only when the difference holds
against the noise of the repeats: the one-sided Mann-Whitney U test (exact permutation) gives
p <= 0.05 AND the median grew by >= 20% AND by >= 50 ms. When a side has too few samples for the
test to ever reach p <= 0.05 (N=1, or 2 vs 2), the verdict uses a conservative fixed threshold
instead: >= 50% AND >= 250 ms, and the report says so. A milestone the baseline reached and this
run lost, or an outcome that is a failure the baseline did not have, is always a regression.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from harness.model.result import PASS, CellResult, Phase
from harness.model.rundir import base_cell_id
from harness.report.stats import Spread, mann_whitney_greater, min_attainable_p, spread

# ---------------------------------------------------------------------------- repeated runs

def repeat_groups(results: Iterable[CellResult]) -> dict[str, list[CellResult]]:
    """Results grouped by cell id (the runner suffixes repeats "#rN"), each ordered by repeat_index."""
    groups: dict[str, list[CellResult]] = defaultdict(list)
    for r in results:
        groups[base_cell_id(r)].append(r)
    return {k: sorted(v, key=lambda r: r.repeat_index) for k, v in groups.items()}


@dataclass
class MilestoneStats:
    name: str
    reached: int                   # repeats that reached it
    runs: int                      # repeats in total
    at: Spread | None              # seconds since VM start
    phase: Spread | None           # phase duration (since the previous milestone)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _milestone_names(group: list[CellResult]) -> list[str]:
    names: list[str] = []
    for r in group:
        for n in list(r.expected_milestones) + [m.name for m in r.milestones]:
            if n not in names:
                names.append(n)
    return names


def _samples(group: list[CellResult], name: str) -> tuple[list[float], list[float]]:
    at, ph = [], []
    for r in group:
        for m in r.milestones:
            if m.name == name:
                at.append(m.t)
                ph.append(m.since_previous)
                break
    return at, ph


def milestone_stats(group: list[CellResult]) -> list[MilestoneStats]:
    """Median and spread per milestone over the repeats of one cell."""
    out = []
    for name in _milestone_names(group):
        at, ph = _samples(group, name)
        out.append(MilestoneStats(name, len(at), len(group), spread(at) if at else None,
                                  spread(ph) if ph else None))
    return out


# ---------------------------------------------------------------------------- regression verdict

@dataclass
class RegressionPolicy:
    alpha: float = 0.05
    min_rel: float = 0.20
    min_abs_s: float = 0.050
    fixed_rel: float = 0.50          # used when the test cannot reach alpha (N=1, ...)
    fixed_abs_s: float = 0.250

    def uses_test(self, n_base: int, n_new: int) -> bool:
        return min(n_base, n_new) >= 2 and min_attainable_p(n_base, n_new) <= self.alpha

    def describe(self, n_base: int, n_new: int) -> str:
        if self.uses_test(n_base, n_new):
            return (f"one-sided Mann-Whitney U test (exact permutation) on N={n_new} vs baseline N={n_base} "
                    f"repeats, p <= {self.alpha:g}, and median slower by >= {self.min_rel:.0%} "
                    f"and >= {self.min_abs_s * 1000:.0f} ms")
        return (f"N={n_new} vs baseline N={n_base}: too few repeats for a significance test, so a conservative "
                f"fixed threshold: slower by >= {self.fixed_rel:.0%} and >= {self.fixed_abs_s * 1000:.0f} ms "
                f"(run with --repeat 5 for a noise-aware verdict)")


@dataclass
class PhaseVerdict:
    milestone: str
    verdict: str                   # slower | faster | same | lost | gained | not-reached
    base: Spread | None
    new: Spread | None
    delta_s: float | None = None   # median difference of phase duration (new - base)
    rel: float | None = None
    p: float | None = None
    method: str = ""

    @property
    def regression(self) -> bool:
        return self.verdict in ("slower", "lost")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regression"] = self.regression
        return d


@dataclass
class CellVerdict:
    cell_id: str
    base_outcomes: list[str]
    new_outcomes: list[str]
    n_base: int
    n_new: int
    method: str
    phases: list[PhaseVerdict] = field(default_factory=list)

    @property
    def new_failures(self) -> list[str]:
        """Failure outcomes this run has that the baseline never had."""
        return sorted({o for o in self.new_outcomes if o != PASS and o not in self.base_outcomes})

    @property
    def regression(self) -> bool:
        return bool(self.new_failures) or any(p.regression for p in self.phases)

    def reasons(self) -> list[str]:
        out = [f"outcome {'/'.join(sorted(set(self.base_outcomes)))} -> {o}" for o in self.new_failures]
        for p in self.phases:
            if p.verdict == "lost":
                out.append(f"milestone {p.milestone} lost")
            elif p.verdict == "slower" and p.delta_s is not None and p.rel is not None:
                out.append(f"phase {p.milestone} slower by {p.delta_s * 1000:.0f} ms ({p.rel:+.0%})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "base_outcomes": self.base_outcomes, "new_outcomes": self.new_outcomes,
                "n_base": self.n_base, "n_new": self.n_new, "method": self.method,
                "new_failures": self.new_failures, "regression": self.regression, "reasons": self.reasons(),
                "phases": [p.to_dict() for p in self.phases]}


def _timing_verdict(name: str, base: list[float], new: list[float], policy: RegressionPolicy) -> PhaseVerdict:
    sb, sn = spread(base), spread(new)
    delta = sn.median - sb.median
    rel = delta / sb.median if sb.median > 0 else (float("inf") if delta > 0 else 0.0)
    method = policy.describe(len(base), len(new))
    if policy.uses_test(len(base), len(new)):
        p_slow = mann_whitney_greater(base, new)
        p_fast = mann_whitney_greater(new, base)
        if p_slow <= policy.alpha and delta >= policy.min_abs_s and rel >= policy.min_rel:
            verdict, p = "slower", p_slow
        elif p_fast <= policy.alpha and -delta >= policy.min_abs_s and -rel >= policy.min_rel / (1 + policy.min_rel):
            verdict, p = "faster", p_fast
        else:
            verdict, p = "same", min(p_slow, p_fast)
    else:
        p = None
        if delta >= policy.fixed_abs_s and rel >= policy.fixed_rel:
            verdict = "slower"
        elif -delta >= policy.fixed_abs_s and -rel >= policy.fixed_rel / (1 + policy.fixed_rel):
            verdict = "faster"
        else:
            verdict = "same"
    return PhaseVerdict(name, verdict, sb, sn, round(delta, 6), round(rel, 4) if rel != float("inf") else None,
                        p, method)


def compare_cell(base: list[CellResult], new: list[CellResult],
                 policy: RegressionPolicy | None = None) -> CellVerdict:
    """Verdict for one cell: repeats of the baseline run against repeats of this run."""
    policy = policy or RegressionPolicy()
    cv = CellVerdict(base_cell_id(new[0] if new else base[0]), [r.outcome for r in base],
                     [r.outcome for r in new], len(base), len(new), policy.describe(len(base), len(new)))
    for name in _milestone_names(base + new):
        _, b_ph = _samples(base, name)
        _, n_ph = _samples(new, name)
        base_always = bool(b_ph) and len(b_ph) == len(base)
        if base_always and len(n_ph) < len(new):
            cv.phases.append(PhaseVerdict(name, "lost", spread(b_ph), spread(n_ph) if n_ph else None))
        elif b_ph and n_ph:
            cv.phases.append(_timing_verdict(name, b_ph, n_ph, policy))
        elif n_ph:
            cv.phases.append(PhaseVerdict(name, "gained", None, spread(n_ph)))
        else:  # reached by no repeat now, and not reliably before either
            cv.phases.append(PhaseVerdict(name, "not-reached", spread(b_ph) if b_ph else None, None))
    return cv


def compare_runs(base: list[CellResult], new: list[CellResult],
                 policy: RegressionPolicy | None = None) -> dict[str, CellVerdict]:
    """Verdicts for every cell present in both result sets."""
    bg, ng = repeat_groups(base), repeat_groups(new)
    return {cid: compare_cell(bg[cid], ng[cid], policy) for cid in ng if cid in bg}
