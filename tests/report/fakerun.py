"""Builds run directories the way the runner writes them, for report and gap tests.

The cells look like the fixture guests' real ones: the consoles print the fixture milestones,
the gaps are the ones the fixtures probe, exit-count snapshots arrive every 100 ms.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.model.events import EXIT_COUNTS, GAP, VM_START, EventWriter, VmEvent
from harness.model.files import write_json_atomic
from harness.model.gap import (FATE_CONTINUED, FATE_STOPPED, GapRecord, HOST_EMULATION_FAILURE, I8042_WAIT,
                               IO_PORT, MTRR_PROBE, PCI_CONFIG, REP_STRING_IO, TSC_MSR)
from harness.model.result import CellResult, Failure, MilestoneHit, NearMiss
from harness.model.rundir import RunDir

VM_T0 = 1000.0   # the VM's start on the (fake) monotonic clock

FIXTURE_LINES = [("entry", "fixture: entry"), ("handoff", "fixture: handoff ok"),
                 ("probes", "fixture: probes done"), ("login", "fixture login:")]
DEFAULT_TIMES = [0.05, 0.20, 0.45, 0.60]


def fixture_gaps(policy: str = "emulate") -> list[GapRecord]:
    """The gaps a fixture guest hits, in the order it probes (first_t absolute monotonic)."""
    t = VM_T0
    return [
        GapRecord(TSC_MSR, "0x10", first_rip=0x100123, access="read", policy=policy, first_t=t + 0.1),
        GapRecord(MTRR_PROBE, "0xfe", first_rip=0x100140, access="read", policy=policy, first_t=t + 0.25),
        GapRecord(MTRR_PROBE, "0x2ff", first_rip=0x100150, access="read", policy=policy, first_t=t + 0.26),
        GapRecord(IO_PORT, "0x510", first_rip=0x100200, access="write", values=[1], policy=policy,
                  first_t=t + 0.3, detail={"size": 2}),
        GapRecord(PCI_CONFIG, "00:1f.0", first_rip=0x100300, access="read", policy=policy, first_t=t + 0.31),
        GapRecord(REP_STRING_IO, "0x3f8", first_rip=0x100400, access="write", count=3, first_t=t + 0.35),
        GapRecord(I8042_WAIT, "0x64", first_rip=0x100500, access="read", count=40, first_t=t + 0.4),
    ]


def xrstor_gap() -> GapRecord:
    return GapRecord(HOST_EMULATION_FAILURE, "xrstor", first_rip=0xffffffff81000abc, fate=FATE_STOPPED,
                     first_t=VM_T0 + 0.5, detail={"insn": "xrstor [rsp]", "suberror": 1})


def make_cell(run_dir: Path, guest: str = "fixture-pvh", backend: str = "builtin", profile: str = "default",
              policy: str = "emulate", outcome: str = "pass", times: list[float] | None = None,
              gaps: list[GapRecord] | None = None, repeat_index: int = 0, reached: int | None = None,
              console_extra: str = "", started_at: str = "2026-11-21T22:00:00Z", attempts: int = 1,
              expected_gaps: list[dict[str, Any]] | None = None, host: str = "native",
              arch: str = "x86_64") -> CellResult:
    """Write one finished cell (result JSON, console.log, events.jsonl) and return its CellResult."""
    from harness.gaps.baseline import compare
    from harness.gaps.ledger import build_ledger
    from harness.gaps.phases import phases_from_snapshots

    times = list(times or DEFAULT_TIMES)
    reached = len(FIXTURE_LINES) if reached is None else reached
    base_id = f"{guest}@{backend}{'' if host == 'native' else '+' + host}/{profile}/{policy}/1c/64M"
    # like harness.runner.execute: repeats are "<id>#rN" with their work dir in cells/<slug>-rN
    cell_id = f"{base_id}#r{repeat_index}" if repeat_index else base_id
    work = RunDir(run_dir).workdir(base_id, repeat_index)
    work.mkdir(parents=True, exist_ok=True)
    console = b"SeaBIOS-free boot\r\n"
    milestones, prev = [], 0.0
    for (name, line), t in list(zip(FIXTURE_LINES, times))[:reached]:
        console += f"{line}\n".encode()
        milestones.append(MilestoneHit(name, t, t - prev, len(console) - 1, line))
        prev = t
    console += console_extra.encode()
    (work / "console.log").write_bytes(console)
    # events: vm-start, gaps, exit-count snapshots every 100 ms (cumulative)
    ev_path = work / "events.jsonl"
    ev_path.unlink(missing_ok=True)
    w = EventWriter(ev_path)
    w.emit(VmEvent(VM_START, VM_T0, {"host": {"kvm": "kvm_pvm"}}))
    recs = gaps if gaps is not None else fixture_gaps(policy)
    for g in recs:
        w.emit(VmEvent(GAP, g.first_t or VM_T0, g.to_json()))
    snaps = []
    end = (times[reached - 1] if reached else 0.1) + 0.1
    k = 1
    while k * 0.1 <= end + 1e-9:
        ev = VmEvent(EXIT_COUNTS, VM_T0 + k * 0.1, {"counts": {"io": 100 * k, "mmio": 10 * k, "msr": k},
                                                      "user_time_s": 0.01 * k})
        w.emit(ev)
        snaps.append(ev)
        k += 1
    w.close()
    ledger = build_ledger(recs, milestones, VM_T0)
    phases = phases_from_snapshots(milestones, snaps, VM_T0)
    expected = [m for m, _ in FIXTURE_LINES]
    near = None
    failure = None
    if reached < len(FIXTURE_LINES):
        waiting = FIXTURE_LINES[reached][0]
        near = NearMiss(waiting, FIXTURE_LINES[reached][1], milestones[-1].name if milestones else None,
                        console.decode(errors="replace").splitlines()[-3:], None, 0.0)
        if outcome in ("fail", "gap"):
            failure = Failure("panic" if outcome == "fail" else "host-emulation-failure",
                              "Kernel panic - not syncing: fixture" if outcome == "fail" else "xrstor", 0.5)
    res = CellResult(
        cell_id=cell_id, guest=guest, backend=backend,
        params={"cpu_profile": profile, "gap_policy": policy, "vcpus": 1, "memory_mib": 64, "tier": "quick",
                "family": "fixture", "host": host, "arch": arch},
        outcome=outcome, reason="" if outcome == "pass" else f"{outcome}: waiting for {near.waiting_for if near else '?'}",
        started_at=started_at, duration_s=(times[reached - 1] if reached else 0.0) + 0.05,
        milestones=milestones, expected_milestones=expected, phases=phases, failure=failure, near_miss=near,
        gaps=[g.to_json() for g in ledger],
        gap_diff=compare(ledger, expected_gaps if expected_gaps is not None else []).to_dict(),
        exit_counts=dict(snaps[-1].data["counts"]) if snaps else {},
        flight_recorder=[{"rip": 0x100500 + i, "reason": "io", "port": "0x64"} for i in range(3)]
        if outcome != "pass" else [],
        console_log=str((work / "console.log").relative_to(run_dir)),
        attempts=attempts, repeat_index=repeat_index)
    RunDir(run_dir).write_result(res)
    return res


def make_run(run_dir: Path, run_id: str = "run-a", shard: str | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "run.json", {"run_id": run_id, "matrix": "matrix.yaml", "tier": "quick",
                                             "shard": shard, "started_at": "2026-11-21T22:00:00Z",
                                             "host": {"kvm": "kvm_pvm"}})
    return run_dir


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
