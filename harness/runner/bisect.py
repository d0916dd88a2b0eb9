"""Gap bisection: which single emulation gap decides a failing built-in cell's fate.

    harness gaps bisect 'fixture-msr-gate@builtin/default/gp/1c/64M'

1. boot the cell as the matrix has it (the reference): it must fail, or there is nothing to find;
2. every MSR gap of the reference whose policy can change (gp -> emulate, then zero) is a
   candidate; boot the cell once per candidate with only that MSR's policy changed
   (`gap_overrides` of the built-in VMM, harness.kvm.msr.MsrPolicy);
3. a candidate *decides* when changing it alone makes the cell pass;
4. a decider is then checked the other way round: every other candidate changed, the decider
   left as it was, the cell must still fail. Then that one gap is both needed and enough.
It lives in the runner, not in harness.gaps, because it boots cells.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.errors import HarnessError
from harness.model.files import write_json_atomic
from harness.model.gap import MSR_READ, MSR_WRITE, MTRR_PROBE, TSC_MSR
from harness.model.result import PASS, CellResult
from harness.runner.execute import RunOptions, run_cell
from harness.runner.matrix import Cell

MSR_KINDS = (MSR_READ, MSR_WRITE, MTRR_PROBE, TSC_MSR)   # the gaps a policy answers
TARGETS = ("emulate", "zero")


@dataclass
class BisectStep:
    overrides: dict[str, str]          # MSR key -> policy for this boot
    outcome: str
    reason: str
    run_dir: str
    changed: str = ""                  # the candidate key this step changed ("" for reference/complement)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BisectReport:
    cell_id: str
    policy: str
    reference: BisectStep
    candidates: list[dict[str, Any]] = field(default_factory=list)   # {kind, key, access, fate}
    steps: list[BisectStep] = field(default_factory=list)
    deciding: list[dict[str, Any]] = field(default_factory=list)     # {key, kind, policy, confirmed}

    def to_json(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "policy": self.policy, "reference": self.reference.to_json(),
                "candidates": self.candidates, "steps": [s.to_json() for s in self.steps],
                "deciding": self.deciding}

    def to_text(self) -> str:
        lines = [f"{self.cell_id}: reference {self.reference.outcome}: {self.reference.reason}",
                 f"{len(self.candidates)} MSR gaps under policy {self.policy}, each changed alone:"]
        for s in self.steps:
            change = ", ".join(f"{k} -> {v}" for k, v in s.overrides.items())
            what = f"only {change}" if s.changed else f"all but the decider ({len(s.overrides)} changed)"
            lines.append(f"  {s.outcome:8} {what}")
        if not self.deciding:
            lines.append("no single gap decides: the failure needs more than one change, or is not a gap's doing")
        for d in self.deciding:
            proof = "needed and enough" if d["confirmed"] else "enough, but not alone (the others also matter)"
            lines.append(f"DECIDES: {d['kind']} {d['key']} (gp -> {d['policy']} makes it pass; {proof})")
        return "\n".join(lines)


def _candidates(result: CellResult, policy: str) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for g in sorted(result.gaps, key=lambda g: g.get("first_t") or 0.0):
        if g.get("kind") in MSR_KINDS and g.get("policy", policy) == policy and g.get("key") not in seen:
            seen[str(g["key"])] = {k: g.get(k) for k in ("kind", "key", "access", "fate", "phase")}
    return list(seen.values())


def bisect_cell(cell: Cell, out_dir: Path, targets: tuple[str, ...] = TARGETS,
                say: Callable[[str], None] = lambda line: None) -> BisectReport:
    if cell.backend != "builtin":
        raise HarnessError(f"{cell.id} runs on {cell.backend}", "gap bisection changes the built-in VMM's "
                           "policies: pick a builtin cell (harness list)")
    counter = iter(range(10_000))
    step_result: dict[int, CellResult] = {}

    def boot(overrides: dict[str, str], changed: str = "") -> BisectStep:
        run_dir = out_dir / f"step{next(counter):03d}"
        result = run_cell(cell, RunOptions(run_dir=run_dir, gap_overrides=overrides))
        step = BisectStep(dict(overrides), result.outcome, result.reason, str(run_dir), changed)
        say(f"{step.outcome:8} {', '.join(f'{k}->{v}' for k, v in overrides.items()) or 'as in the matrix'}")
        step_result[id(step)] = result
        return step

    reference = boot({})
    ref_result = step_result[id(reference)]
    if ref_result.outcome == PASS:
        raise HarnessError(f"{cell.id} passes: nothing to bisect", "bisect a cell that fails (harness run shows them)")
    report = BisectReport(cell.id, cell.gap_policy, reference, _candidates(ref_result, cell.gap_policy))
    if not report.candidates:
        raise HarnessError(f"{cell.id} recorded no MSR gap under policy {cell.gap_policy}",
                           "the failure is not an MSR policy's doing; see the cell's gaps (harness gaps)")
    for cand in report.candidates:
        for target in (t for t in targets if t != cell.gap_policy):
            step = boot({cand["key"]: target}, changed=cand["key"])
            report.steps.append(step)
            if step.outcome == PASS:
                report.deciding.append({"key": cand["key"], "kind": cand["kind"], "policy": target})
                break
    for d in report.deciding:
        others = {c["key"]: d["policy"] for c in report.candidates if c["key"] != d["key"]}
        complement = boot(others) if others else reference
        if others:
            report.steps.append(complement)
        d["confirmed"] = complement.outcome != PASS
    return report


def write_report(report: BisectReport, out_dir: Path) -> Path:
    path = out_dir / "bisect.json"
    write_json_atomic(path, report.to_json())
    return path
