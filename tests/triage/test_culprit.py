"""Culprit classes: harness (infrastructure), hypervisor (stopped by / after a refused gap), guest."""
from __future__ import annotations

from harness.gaps.culprit import CERTAIN, GUEST, HARNESS, HYPERVISOR, SUSPECTED, classify, culprit_of
from harness.model.gap import FATE_GP_INJECTED, FATE_STOPPED
from harness.model.result import CellResult, Failure, MilestoneHit


def result(outcome: str, gaps=(), milestones=("entry", "probes"), failure=None, reason="why") -> CellResult:
    hits = [MilestoneHit(n, 0.1 * i, 0.1, 10 * i) for i, n in enumerate(milestones)]
    return CellResult("g@builtin/default/gp/1c/64M", "g", "builtin", {"expect": "pass"}, outcome, reason,
                      milestones=hits, gaps=list(gaps), failure=failure)


def gap(key: str, phase: str, fate: str = FATE_GP_INJECTED, kind: str = "msr-read") -> dict:
    return {"kind": kind, "key": key, "access": "read", "fate": fate, "phase": phase, "policy": "gp"}


def test_pass_has_no_culprit():
    assert classify(result("pass")) is None


def test_infrastructure_error_is_the_harness():
    c = classify(result("error", failure=Failure("infrastructure", "missing asset"), reason="asset missing"))
    assert (c.party, c.evidence) == (HARNESS, CERTAIN) and "asset missing" in c.why


def test_stopped_by_a_gap_is_the_hypervisor_and_names_it():
    c = classify(result("gap", gaps=[gap("xrstor", "probes", FATE_STOPPED, "host-emulation-failure")]))
    assert (c.party, c.evidence) == (HYPERVISOR, CERTAIN)
    assert c.gap["key"] == "xrstor" and c.label() == "hypervisor (host-emulation-failure xrstor)"


def test_failure_after_a_refused_msr_in_the_failing_phase_suspects_that_gap():
    gaps = [gap("0x10", "entry"), gap("0x4b564dfe", "probes")]
    c = classify(result("fail", gaps=gaps, failure=Failure("panic", "panic: x")))
    assert (c.party, c.evidence, c.gap["key"]) == (HYPERVISOR, SUSPECTED, "0x4b564dfe")
    assert c.label().startswith("hypervisor?")


def test_refusals_the_guest_survived_in_earlier_phases_do_not_blame_the_hypervisor():
    c = classify(result("fail", gaps=[gap("0x10", "entry")], failure=Failure("panic", "panic: x")))
    assert c.party == GUEST and c.gap is None


def test_timeout_without_gaps_is_the_guest():
    assert classify(result("timeout", reason="milestone 'login' not seen")).party == GUEST


def test_recorded_culprit_wins_over_reclassifying():
    r = result("fail")
    r.culprit = {"party": HARNESS, "why": "recorded", "evidence": CERTAIN, "gap": None}
    assert culprit_of(r).why == "recorded"
