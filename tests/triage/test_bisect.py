"""`harness gaps bisect` on fixture-msr-gate: of the MSRs refused under gp, it names the one that kills the guest.

Slow: 8 fixture boots on the built-in hypervisor (reference, one per MSR gap, the complement), ~20 s here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import layout

REPO = Path(__file__).resolve().parents[2]
CELL = "fixture-msr-gate@builtin/default/gp/1c/64M"

pytestmark = [pytest.mark.slow, pytest.mark.kvm,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                 reason="/dev/kvm absent or not accessible: built-in backend cannot run")]


def test_bisect_names_the_one_msr_that_decides(tmp_path: Path):
    out = tmp_path / "bisect"
    proc = subprocess.run([sys.executable, "-m", "harness", "gaps", "bisect", CELL, "--to", "emulate",
                           "--out", str(out), "--format", "json"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    gate = f"{layout.FIXTURE_GATE_MSR:#x}"
    assert report["reference"]["outcome"] == "fail" and gate in report["reference"]["reason"]
    keys = [c["key"] for c in report["candidates"]]
    assert gate in keys and len(keys) >= 5          # TSC, MTRRcap, MTRRdefType, PAT, the unknown MSR: all refused
    assert report["deciding"] == [{"key": gate, "kind": "msr-read", "policy": "emulate", "confirmed": True}]
    singles = {s["changed"]: s["outcome"] for s in report["steps"] if s["changed"]}
    assert singles[gate] == "pass" and all(o == "fail" for k, o in singles.items() if k != gate)
    complement = [s for s in report["steps"] if not s["changed"]]
    assert len(complement) == 1 and complement[0]["outcome"] == "fail" and gate not in complement[0]["overrides"]
    assert json.loads((out / "bisect.json").read_text()) == report
    # the override reached the VMM: the passing step's result records it, and its gap says emulate
    passing = next(s for s in report["steps"] if s["changed"] == gate)
    cell = json.loads(next((Path(passing["run_dir"]) / "cells").glob("*.json")).read_text())
    assert cell["params"]["gap_overrides"] == {gate: "emulate"}
    assert {g["key"]: g["policy"] for g in cell["gaps"] if g["kind"] == "msr-read"}[gate] == "emulate"


def test_bisect_refuses_a_passing_cell(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "harness", "gaps", "bisect",
                           "fixture-msr-gate@builtin/default/emulate/1c/64M", "--out", str(tmp_path / "b")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "passes: nothing to bisect" in proc.stderr and "Traceback" not in proc.stderr
