"""The model layer: JSON round trips beside each type, the run-directory layout, the atomic write,
and the one definition of "ended as expected"."""
from __future__ import annotations

import json
import os

import pytest

from harness.errors import HarnessError
from harness.model.events import GAP, EventReader, EventWriter, VmEvent
from harness.model.files import atomic_file, write_json_atomic
from harness.model.gap import IO_PORT, GapRecord
from harness.model.result import (FAIL, GAP as GAP_OUTCOME, PASS, CellResult, Failure, MilestoneHit, NearMiss, Phase,
                                  ended_as_expected)
from harness.model.rundir import REPORTS_ENV, RunDir, base_cell_id, repeat_id, result_key
from harness.model.session import BootRequest, SessionSummary


def _result(outcome: str, expect: str | None = None, cell_id: str = "g/builtin", repeat: int = 0) -> CellResult:
    params = {"expect": expect} if expect else {}
    return CellResult(cell_id=repeat_id(cell_id, repeat), guest="g", backend="builtin", params=params,
                      outcome=outcome, repeat_index=repeat)


@pytest.mark.parametrize("outcome, expect, ok", [
    (PASS, None, True), (PASS, "gap", True),           # a pass where a gap was expected is good news
    (GAP_OUTCOME, "gap", True), (GAP_OUTCOME, None, False), (FAIL, "gap", False), (FAIL, None, False)])
def test_ended_as_expected(outcome, expect, ok):
    assert ended_as_expected(_result(outcome, expect)) is ok


def test_cell_result_round_trips_with_its_parts():
    r = _result(FAIL)
    r.milestones = [MilestoneHit("entry", 0.5, 0.5, 10, "fixture: entry")]
    r.phases = [Phase("entry", 0.0, 0.5, {"io": 3}, 0.01)]
    r.failure = Failure("panic", "Kernel panic", 0.7, 99)
    r.near_miss = NearMiss("login", "login:", "entry", ["a", "b"], "logn:", 0.8)
    back = CellResult.from_json(json.loads(json.dumps(r.to_json())))
    assert back == r


def test_gap_record_copy_is_independent():
    g = GapRecord(IO_PORT, "0x510", values=[1], detail={"size": 1})
    c = g.copy()
    c.values.append(2)
    c.detail["size"] = 4
    assert (g.values, g.detail) == ([1], {"size": 1})
    assert GapRecord.from_json(g.to_json()) == g


def test_session_types_round_trip(tmp_path):
    req = BootRequest("c", "g", "linux", "x86_64", "pvh", tmp_path / "k", initrd=None, workdir=tmp_path,
                      options={"rescue": False})
    data = json.loads(json.dumps(req.to_json()))
    assert data["kernel"] == str(tmp_path / "k") and BootRequest.from_json(data) == req
    summary = SessionSummary(0, {"io": 1}, host={"kvm": True}, extra={"gaps": []})
    assert SessionSummary.from_json({**summary.to_json(), "unknown_key": 1}) == summary


def test_events_file_round_trip_skips_torn_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    w.emit(VmEvent(GAP, 1.5, GapRecord(IO_PORT, "0x80").to_json()))
    w.close()
    with open(path, "ab") as f:
        f.write(b'{"type": "gap", "t": \n{"type"')        # a torn line, then a partial one
    reader = EventReader(path)
    [event] = reader.poll()
    assert event == VmEvent(GAP, 1.5, GapRecord(IO_PORT, "0x80").to_json())
    with open(path, "ab") as f:
        f.write(b': "reset", "t": 2.0}\n')                # the partial line completes
    assert [e.type for e in reader.poll()] == ["reset"]


def test_run_dir_layout(tmp_path):
    run = RunDir.create(tmp_path)
    assert run.path.parent == tmp_path and not run.exists()
    first, repeat = _result(PASS), _result(PASS, repeat=2)
    assert run.write_result(first) == run.cells_dir / "g_builtin.json"
    assert run.write_result(repeat) == run.cells_dir / "g_builtin_r2.json"
    assert run.workdir("g/builtin", 2) == run.cells_dir / "g_builtin-r2"
    assert sorted(r.cell_id for r in run.results()) == ["g/builtin", "g/builtin#r2"]
    assert (base_cell_id(repeat), result_key(repeat)) == ("g/builtin", "g/builtin#r2")
    assert run.outcome_of("g/builtin#r2") == PASS and run.outcome_of("absent") is None
    run.update_progress("g/builtin", {"cell": "g/builtin", "milestone": "entry"})
    run.update_progress("g/builtin", {"elapsed": 1.0})
    assert run.progress() == {"g/builtin": {"cell": "g/builtin", "milestone": "entry", "elapsed": 1.0}}
    (run.cells_dir / ".g_builtin.json.x.tmp").write_text("{")   # a killed writer's temporary file
    assert len(run.results()) == 2


def test_newest_and_resolve_follow_the_reports_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(REPORTS_ENV, str(tmp_path))
    with pytest.raises(HarnessError, match="no runs under"):
        RunDir.resolve(None)
    old, new = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    for run, mtime in ((old, 1_000_000), (new, 2_000_000)):
        run.write_run_json({"run_id": run.path.name})
        os.utime(run.run_json, (mtime, mtime))
    assert RunDir.resolve(None) == new and RunDir.resolve("a") == old
    with pytest.raises(HarnessError, match="not a run directory"):
        RunDir.resolve("nope")


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(path) as f:
            f.write(b'{"v": 2')
            raise RuntimeError("killed halfway")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_one_merge_rule_for_sink_and_ledger():
    from harness.gaps.ledger import dedup
    from harness.model.gap import FATE_CONTINUED, FATE_GP_INJECTED, FATE_STOPPED
    from harness.model.gapsink import GapSink
    records = [GapRecord(IO_PORT, "0x80", first_rip=None, values=[1], first_t=2.0, fate=FATE_CONTINUED),
               GapRecord(IO_PORT, "0x80", first_rip=0x1000, values=[2], first_t=3.0, fate=FATE_GP_INJECTED,
                         policy="gp", detail={"size": 1}),
               GapRecord(IO_PORT, "0x80", first_rip=0x2000, values=[1], first_t=1.0, fate=FATE_CONTINUED)]
    sent: list[GapRecord] = []
    sink = GapSink(on_new=sent.append)
    for r in records:
        sink.record(r.copy())
    [merged] = sink.records()
    assert merged == dedup(records)[0]
    assert (merged.count, merged.values, merged.first_t, merged.first_rip) == (3, [1, 2], 1.0, 0x2000)
    assert (merged.fate, merged.policy, merged.detail) == (FATE_GP_INJECTED, "gp", {"size": 1})
    assert len(sent) == 1 and sent[0].count == 1            # the first sighting, at once
    [repeats] = sink.unsent_repeats()
    assert (repeats.count, repeats.values) == (2, [])       # the two repeats since
    assert sink.unsent_repeats() == []
    sink.record(GapRecord(IO_PORT, "0x80", fate=FATE_STOPPED, first_t=5.0))
    assert sink.records()[0].fate == FATE_STOPPED and sink.unsent_repeats()[0].count == 1
