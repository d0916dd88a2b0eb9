"""Run-to-run comparison: what changed from run A (the baseline) to run B, per cell.

For each cell id in both runs: outcome change, milestones lost or gained, phase timing verdicts
(harness.report.profile, noise-aware over repeats), and gaps new or fixed (the union of the
gaps over a cell's repeats, B against A). Cells only in one run are listed, not judged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.gaps.baseline import compare
from harness.gaps.ledger import dedup
from harness.model.result import CellResult
from harness.report.flakes import RegressionCall, regression_call
from harness.report.profile import CellVerdict, RegressionPolicy, compare_cell, repeat_groups
from harness.report.run import load_run


@dataclass
class CellChange:
    cell_id: str
    outcome_a: str
    outcome_b: str
    verdict: CellVerdict
    gaps_new: list[dict[str, Any]] = field(default_factory=list)
    gaps_fixed: list[dict[str, Any]] = field(default_factory=list)
    call: RegressionCall | None = None     # a new failure: confirmed only when it repeated (report.flakes)

    @property
    def milestones_lost(self) -> list[str]:
        return [p.milestone for p in self.verdict.phases if p.verdict == "lost"]

    @property
    def milestones_gained(self) -> list[str]:
        return [p.milestone for p in self.verdict.phases if p.verdict == "gained"]

    @property
    def slower(self) -> list[str]:
        return [p.milestone for p in self.verdict.phases if p.verdict == "slower"]

    @property
    def faster(self) -> list[str]:
        return [p.milestone for p in self.verdict.phases if p.verdict == "faster"]

    @property
    def regression(self) -> bool:
        if self.call is None:
            return self.verdict.regression
        return self.call.confirmed or any(p.regression for p in self.verdict.phases)

    @property
    def changed(self) -> bool:
        return bool(self.outcome_a != self.outcome_b or self.milestones_lost or self.milestones_gained
                    or self.slower or self.faster or self.gaps_new or self.gaps_fixed)

    def to_dict(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "outcome_a": self.outcome_a, "outcome_b": self.outcome_b,
                "regression": self.regression, "reasons": self.verdict.reasons(),
                "milestones_lost": self.milestones_lost, "milestones_gained": self.milestones_gained,
                "slower": self.slower, "faster": self.faster,
                "gaps_new": self.gaps_new, "gaps_fixed": self.gaps_fixed, "timing": self.verdict.to_dict(),
                "call": self.call.to_json() if self.call else None}


@dataclass
class RunDiff:
    a: str
    b: str
    cells: list[CellChange] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[CellChange]:
        return [c for c in self.cells if c.regression]

    @property
    def methods(self) -> list[str]:
        return sorted({c.verdict.method for c in self.cells})

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "regressions": len(self.regressions), "methods": self.methods,
                "only_in_a": self.only_in_a, "only_in_b": self.only_in_b,
                "cells": [c.to_dict() for c in self.cells]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    def to_text(self) -> str:
        lines = [f"{self.b} against {self.a}: {len(self.cells)} common cells, "
                 f"{len(self.regressions)} regressed"]
        lines += [f"timing method: {m}" for m in self.methods]
        for c in self.cells:
            if not c.changed:
                continue
            mark = "REGRESSION" if c.regression else "changed"
            lines.append(f"{mark:10} {c.cell_id}")
            if c.outcome_a != c.outcome_b:
                lines.append(f"           outcome {c.outcome_a} -> {c.outcome_b}")
            if c.call:
                lines.append(f"           {c.call.describe()}")
            for r in c.verdict.reasons():
                if not r.startswith("outcome"):
                    lines.append(f"           {r}")
            for m in c.milestones_gained:
                lines.append(f"           milestone {m} gained")
            for m in c.faster:
                lines.append(f"           phase {m} faster")
            for g in c.gaps_new:
                lines.append(f"           gap new   {g['kind']} {g['key']} {g.get('access', '')}".rstrip())
            for g in c.gaps_fixed:
                lines.append(f"           gap fixed {g['kind']} {g['key']} {g.get('access', '')}".rstrip())
        lines += [f"only in {self.a}: {c}" for c in self.only_in_a]
        lines += [f"only in {self.b}: {c}" for c in self.only_in_b]
        return "\n".join(lines)


def _summary_outcome(group: list[CellResult]) -> str:
    outcomes = sorted({r.outcome for r in group})
    return outcomes[0] if len(outcomes) == 1 else "/".join(outcomes)


def _union_gaps(group: list[CellResult]) -> list[dict[str, Any]]:
    return [g.to_json() for g in dedup(g for r in group for g in r.gaps)]


def diff_results(a_name: str, a: list[CellResult], b_name: str, b: list[CellResult],
                 policy: RegressionPolicy | None = None) -> RunDiff:
    ga, gb = repeat_groups(a), repeat_groups(b)
    out = RunDiff(a_name, b_name, only_in_a=sorted(set(ga) - set(gb)), only_in_b=sorted(set(gb) - set(ga)))
    for cid in sorted(set(ga) & set(gb)):
        old = _union_gaps(ga[cid])
        expected = [{"kind": g["kind"], "key": g["key"], "access": g.get("access", ""), "_gap": g} for g in old]
        gd = compare(_union_gaps(gb[cid]), expected)
        out.cells.append(CellChange(cid, _summary_outcome(ga[cid]), _summary_outcome(gb[cid]),
                                    compare_cell(ga[cid], gb[cid], policy), gd.new,
                                    [e["_gap"] for e in gd.fixed], regression_call(ga[cid], gb[cid])))
    return out


def diff_runs(a: Path, b: Path, policy: RegressionPolicy | None = None) -> RunDiff:
    """Compare run directory `b` against baseline run directory `a`."""
    ra, rb = load_run(Path(a)), load_run(Path(b))
    return diff_results(ra.run_id, ra.results, rb.run_id, rb.results, policy)
