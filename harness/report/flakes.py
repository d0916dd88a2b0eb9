"""Flakes and regression calls, from every try of every repeat of a cell (across runs when given).

A cell is *flaky* when some of its tries ended as expected and some did not; its flake rate is
the share that did not. A new failure is only *called* a regression when it repeated: every
try of the cell in the new run failed, at least MIN_FAILURES of them. The confidence is the
chance that a cell still as healthy as the baseline would not fail that often by bad luck:
with p the probability that a healthy cell passes one try, N failing tries happen by chance
with probability (1-p)^N (the formula syzkaller's bisection uses for "the crash did not
reproduce in N runs"), so the call's confidence is 1 - (1-p)^N. p is estimated from the
baseline's tries with Laplace's rule of succession, (passes + 1) / (tries + 2), so one lucky
baseline pass does not claim certainty.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from harness.model.result import ERROR, CellResult, outcome_as_expected
from harness.model.tries import passed_on_retry, tries_of
from harness.report.profile import base_cell_id, repeat_groups

MIN_FAILURES = 2
CONFIRMED, UNCONFIRMED, FLAKY = "confirmed", "unconfirmed", "flaky"


def _outcomes(group: Iterable[CellResult]) -> list[tuple[str, bool]]:
    """(outcome, ended as expected) of every non-error try: infrastructure errors say nothing of the guest."""
    out = []
    for r in group:
        out += [(t.outcome, outcome_as_expected(t.outcome, r.params)) for t in tries_of(r) if t.outcome != ERROR]
    return out


@dataclass
class FlakeStat:
    cell_id: str
    tries: int
    failed: int
    passed_on_retry: int           # results that needed a retry to pass
    outcomes: list[str]

    @property
    def flaky(self) -> bool:
        return 0 < self.failed < self.tries

    @property
    def rate(self) -> float:
        return self.failed / self.tries if self.tries else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "flaky": self.flaky, "rate": round(self.rate, 4)}


def flake_stats(results: Iterable[CellResult]) -> dict[str, FlakeStat]:
    """Per cell id (repeats folded): tries, failed tries, passes that came on a retry."""
    out = {}
    for cid, group in repeat_groups(results).items():
        outcomes = _outcomes(group)
        out[cid] = FlakeStat(cid, len(outcomes), sum(1 for _, ok in outcomes if not ok),
                             sum(1 for r in group if passed_on_retry(r)), [o for o, _ in outcomes])
    return out


@dataclass
class RegressionCall:
    cell_id: str
    status: str                 # confirmed | unconfirmed | flaky
    failing_tries: int          # N: tries in the new run that failed
    tries: int                  # tries in the new run
    pass_probability: float     # p: estimated from the baseline's tries
    confidence: float           # 1 - (1-p)^N; 0 unless confirmed

    @property
    def confirmed(self) -> bool:
        return self.status == CONFIRMED

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.status == CONFIRMED:
            return (f"regression confirmed: failed {self.failing_tries} of {self.tries} tries; a cell as healthy as "
                    f"the baseline (p={self.pass_probability:.2f}) would fail that often with probability "
                    f"{1 - self.confidence:.2g}, confidence {self.confidence:.1%}")
        if self.status == FLAKY:
            return (f"flaky, not a regression: failed {self.failing_tries} of {self.tries} tries "
                    f"(flake rate {self.failing_tries / max(1, self.tries):.0%})")
        return (f"unconfirmed: failed {self.failing_tries} of {self.tries} tries; a regression is called after "
                f"{MIN_FAILURES} failing tries (harness run --retry-failures 1 or --repeat 2)")


def regression_call(base: list[CellResult], new: list[CellResult]) -> RegressionCall | None:
    """The call on a cell that fails now where the baseline did not fail that way; None when nothing failed anew."""
    base_tries, new_tries = _outcomes(base), _outcomes(new)
    base_failures = {o for o, ok in base_tries if not ok}
    if not any(not ok and o not in base_failures for o, ok in new_tries):
        return None
    passes = sum(1 for _, ok in base_tries if ok)
    p = (passes + 1) / (len(base_tries) + 2)
    failing = sum(1 for _, ok in new_tries if not ok)
    if failing < len(new_tries):
        status = FLAKY
    elif failing >= MIN_FAILURES:
        status = CONFIRMED
    else:
        status = UNCONFIRMED
    confidence = 1 - (1 - p) ** failing if status == CONFIRMED else 0.0
    cid = base_cell_id(new[0]) if new else ""
    return RegressionCall(cid, status, failing, len(new_tries), round(p, 4), round(confidence, 6))
