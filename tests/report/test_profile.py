import pytest

from harness.gaps.phases import phases_from_snapshots
from harness.model.events import EXIT_COUNTS, GAP, VmEvent
from harness.model.result import CellResult, MilestoneHit
from harness.report.profile import compare_cell, milestone_stats
from harness.report.stats import mann_whitney_greater, spread

T0 = 100.0


def snap(t, io, user):
    return VmEvent(EXIT_COUNTS, T0 + t, {"counts": {"io": io, "hlt": io // 10}, "user_time_s": user})


def test_phases_from_snapshots_subtracts_boundary_snapshots():
    ms = [MilestoneHit("entry", 0.05, 0.05, 10), MilestoneHit("handoff", 0.25, 0.2, 20),
          MilestoneHit("login", 0.62, 0.37, 30)]
    snaps = [snap(0.1 * k, 100 * k * k, 0.01 * k) for k in range(1, 8)]
    snaps.insert(2, VmEvent(GAP, T0 + 0.15, {"kind": "io-port"}))   # other events are ignored
    phases = phases_from_snapshots(ms, snaps, T0)
    assert [(p.name, p.start, p.end) for p in phases] == [("entry", 0.0, 0.05), ("handoff", 0.05, 0.25),
                                                          ("login", 0.25, 0.62)]
    # entry: VM start (zero) .. snapshot at 0.1 (100); handoff: 0.1 (100) .. 0.3 (900); login: 0.3 .. 0.7 (4900)
    assert [p.exit_counts.get("io") for p in phases] == [100, 800, 4000]
    assert sum(p.exit_counts["io"] for p in phases) == 4900         # phases add up to the last snapshot
    assert phases[1].user_time_s == pytest.approx(0.02)


def test_phases_without_snapshots_or_after_last_snapshot():
    ms = [MilestoneHit("entry", 0.05, 0.05, 10), MilestoneHit("login", 2.0, 1.95, 20)]
    assert [p.exit_counts for p in phases_from_snapshots(ms, [], T0)] == [{}, {}]
    phases = phases_from_snapshots(ms, [snap(0.1, 10, 0.0), snap(0.2, 30, 0.0)], T0)
    assert phases[1].exit_counts["io"] == 20      # lower bound from the last snapshot


def result(times, outcome="pass", rep=0, names=("entry", "handoff", "probes", "login")):
    ms, prev = [], 0.0
    for n, t in zip(names, times):
        ms.append(MilestoneHit(n, t, t - prev, 0))
        prev = t
    return CellResult("g@builtin/default/gp/1c/64M", "g", "builtin", {}, outcome, milestones=ms,
                      expected_milestones=list(names), repeat_index=rep)


BASE = [[0.10, 0.50, 0.90, 1.20], [0.11, 0.52, 0.93, 1.24], [0.09, 0.49, 0.88, 1.18],
        [0.10, 0.55, 0.95, 1.26], [0.12, 0.51, 0.91, 1.22]]


def slowed(times, phase_index, by):
    return [t + (by if i >= phase_index else 0.0) for i, t in enumerate(times)]


def test_milestone_stats_median_and_spread():
    stats = milestone_stats([result(t, rep=i) for i, t in enumerate(BASE)])
    handoff = stats[1]
    assert handoff.name == "handoff" and handoff.reached == 5 and handoff.runs == 5
    assert handoff.at.median == pytest.approx(0.51) and handoff.at.min == 0.49 and handoff.at.max == 0.55
    assert handoff.at.mad == pytest.approx(0.01)


def test_phase_slowed_300ms_in_all_five_repeats_is_flagged():
    base = [result(t, rep=i) for i, t in enumerate(BASE)]
    new = [result(slowed(t, 2, 0.3), rep=i) for i, t in enumerate(BASE)]
    v = compare_cell(base, new)
    by = {p.milestone: p for p in v.phases}
    assert by["probes"].verdict == "slower" and by["probes"].p <= 0.05
    assert by["probes"].delta_s == pytest.approx(0.3, abs=0.02)
    assert by["entry"].verdict == by["handoff"].verdict == by["login"].verdict == "same"
    assert v.regression and "Mann-Whitney" in v.method and "N=5" in v.method
    assert any("phase probes slower" in r for r in v.reasons())


def test_same_data_twice_and_noise_within_spread_are_not_flagged():
    base = [result(t, rep=i) for i, t in enumerate(BASE)]
    assert not compare_cell(base, base).regression
    shuffled = [result(t, rep=i) for i, t in enumerate(reversed(BASE))]
    jitter = [result([x + d for x in t], rep=i) for i, (t, d) in enumerate(zip(BASE, [0.02, -0.01, 0.03, 0.0, 0.01]))]
    assert not compare_cell(base, shuffled).regression
    assert not compare_cell(base, jitter).regression


def test_consistent_but_small_shift_is_not_flagged():
    # statistically clear, but below 20% / 50 ms: not a regression worth a red build
    base = [result(t, rep=i) for i, t in enumerate(BASE)]
    new = [result(slowed(t, 1, 0.03), rep=i) for i, t in enumerate(BASE)]
    assert not compare_cell(base, new).regression


def test_single_run_uses_conservative_fixed_threshold():
    base, new = [result(BASE[0])], [result(slowed(BASE[0], 2, 0.3))]
    v = compare_cell(base, new)
    assert "fixed threshold" in v.method and "N=1" in v.method
    assert {p.milestone: p.verdict for p in v.phases}["probes"] == "slower"    # 0.4 -> 0.7 s: +75%, +300 ms
    small = compare_cell(base, [result(slowed(BASE[0], 2, 0.15))])
    assert not small.regression


def test_lost_milestone_and_new_failure_outcome_are_regressions():
    base = [result(t, rep=i) for i, t in enumerate(BASE)]
    new = [result(t[:3], outcome="timeout", rep=i, names=("entry", "handoff", "probes")) for i, t in enumerate(BASE)]
    v = compare_cell(base, new)
    assert {p.milestone: p.verdict for p in v.phases}["login"] == "lost"
    assert v.new_failures == ["timeout"] and v.regression
    assert "milestone login lost" in v.reasons()
    # one failing repeat out of five is still a regression
    flaky = [result(t, rep=i) for i, t in enumerate(BASE)]
    flaky[3] = result(BASE[3][:2], outcome="fail", rep=3, names=("entry", "handoff"))
    assert compare_cell(base, flaky).regression


def test_mann_whitney_exact():
    assert mann_whitney_greater([1, 2, 3], [4, 5, 6]) == pytest.approx(1 / 20)
    assert mann_whitney_greater([4, 5, 6], [1, 2, 3]) == pytest.approx(1.0)
    assert mann_whitney_greater([1, 1, 1], [1, 1, 1]) == pytest.approx(1.0)
    big = mann_whitney_greater(list(range(20)), [x + 30 for x in range(20)])   # sampled path
    assert big < 0.001
    assert spread([3.0, 1.0, 2.0]).median == 2.0
