"""Built-in against QEMU for the same guest in one run: milestone times and the first divergence."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fakerun import fixture_gaps, make_cell, make_run, xrstor_gap

from harness.report import load_run, write_reports
from harness.report.backend_diff import backend_diffs

REPO = Path(__file__).resolve().parents[2]


def two_backends(tmp_path: Path) -> Path:
    run = make_run(tmp_path / "r")
    make_cell(run, backend="builtin", outcome="gap", reached=2, times=[0.10, 0.40, 0.0, 0.0],
              gaps=fixture_gaps() + [xrstor_gap()])
    make_cell(run, backend="qemu-tcg", outcome="pass", times=[0.05, 0.20, 0.45, 0.60], gaps=[])
    return run


def test_first_divergence_names_milestone_exits_and_gap(tmp_path: Path):
    run = two_backends(tmp_path)
    [pair] = backend_diffs(load_run(run))
    assert (pair.backend_a, pair.backend_b) == ("builtin", "qemu-tcg")
    assert [(m.milestone, m.t_a, m.t_b) for m in pair.milestones] == [
        ("entry", 0.10, 0.05), ("handoff", 0.40, 0.20), ("probes", None, 0.45), ("login", None, 0.60)]
    assert pair.milestones[0].ratio == 2.0
    d = pair.divergence
    assert (d.milestone, d.reached_by, d.outcome_a, d.outcome_b) == ("probes", "qemu-tcg", "gap", "pass")
    assert d.first_gap_only_a["key"] == "0x10" and d.first_gap_only_b is None   # the first by time
    assert d.exits_a == {"io": 100, "mmio": 10, "msr": 1}                        # the stretch after handoff
    assert d.exits_b == {"io": 300, "mmio": 30, "msr": 3}                        # qemu's probes phase


def test_no_divergence_when_both_agree(tmp_path: Path):
    run = make_run(tmp_path / "r")
    make_cell(run, backend="builtin")
    make_cell(run, backend="qemu-tcg")
    [pair] = backend_diffs(load_run(run))
    assert pair.divergence is None


def test_report_and_cli_show_the_table(tmp_path: Path):
    run = two_backends(tmp_path)
    write_reports(run)
    results = json.loads((run / "results.json").read_text())
    assert results["backend_diff"][0]["divergence"]["milestone"] == "probes"
    summary = (run / "summary.md").read_text()
    assert "## Built-in against QEMU (1 pairs)" in summary and "probes reached only on qemu-tcg (gap vs pass)" in summary
    assert 'id="backend-diff"' in (run / "index.html").read_text()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    text = subprocess.run([sys.executable, "-m", "harness", "report", "diff-backends", str(run)], env=env,
                          capture_output=True, text=True, check=True).stdout
    assert "first divergence: milestone 'probes' reached only on qemu-tcg; outcome gap vs pass" in text
    assert "first gap only on builtin: tsc-msr 0x10" in text
    as_json = subprocess.run([sys.executable, "-m", "harness", "report", "diff-backends", str(run), "--format",
                              "json"], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(as_json)[0]["cell_b"].startswith("fixture-pvh@qemu-tcg")


def test_run_without_pairs_is_a_one_line_error(tmp_path: Path):
    run = make_run(tmp_path / "r")
    make_cell(run, backend="builtin")
    proc = subprocess.run([sys.executable, "-m", "harness", "report", "diff-backends", str(run)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1


def test_guest_failure_on_builtin_that_passes_on_qemu_suspects_the_hypervisor(tmp_path: Path):
    from harness.report.culprits import run_culprits
    run = make_run(tmp_path / "r")
    make_cell(run, backend="builtin", outcome="timeout", reached=2, times=[0.10, 0.40, 0.0, 0.0],
              gaps=fixture_gaps())
    make_cell(run, backend="qemu-tcg", outcome="pass", gaps=[])
    make_cell(run, guest="fixture-multiboot", backend="builtin", outcome="timeout", reached=2)   # no qemu reference
    culprits = run_culprits(load_run(run))
    pvh = culprits["fixture-pvh@builtin/default/emulate/1c/64M"]
    assert (pvh.party, pvh.evidence, pvh.gap["key"]) == ("hypervisor", "suspected", "0x10")
    assert "passes on qemu-tcg in the same run (first divergence at milestone 'probes')" in pvh.why
    assert culprits["fixture-multiboot@builtin/default/emulate/1c/64M"].party == "guest"
    write_reports(run)
    junit = (run / "junit.xml").read_text()
    assert 'type="hypervisor"' in junit and 'type="guest"' in junit
    cells = {c["key"]: c for c in json.loads((run / "results.json").read_text())["cells"]}
    assert cells["fixture-pvh@builtin/default/emulate/1c/64M"]["culprit"]["party"] == "hypervisor"
