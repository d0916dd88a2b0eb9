import pytest
import yaml

from harness.errors import ConfigError
from harness.gaps.baseline import GapDiff, compare, load_baseline, read_baseline_file, write_baseline
from harness.model.gap import GapRecord, HOST_EMULATION_FAILURE, IO_PORT, MTRR_PROBE, TSC_MSR
from harness.runner.guestfile import load_guest


def test_compare_new_fixed_known():
    gaps = [GapRecord(TSC_MSR, "0x10", access="read"), GapRecord(IO_PORT, "0x510", access="write").to_json(),
            GapRecord(HOST_EMULATION_FAILURE, "xrstor")]
    expected = [{"kind": TSC_MSR, "key": "0x010"},                       # numeric key compare
                {"kind": IO_PORT, "key": "0x510", "access": "read"},     # access mismatch -> not known
                {"kind": MTRR_PROBE, "key": "0xfe"}]                     # nothing hit it -> fixed
    d = compare(gaps, expected)
    assert [g["key"] for g in d.known] == ["0x10"]
    assert [g["key"] for g in d.new] == ["0x510", "xrstor"]
    assert d.fixed == [{"kind": IO_PORT, "key": "0x510", "access": "read"}, {"kind": MTRR_PROBE, "key": "0xfe"}]
    assert GapDiff.from_dict(d.to_dict()) == d


def test_compare_glob_key():
    d = compare([GapRecord(MTRR_PROBE, "0x2ff"), GapRecord(MTRR_PROBE, "0x200")], [{"kind": MTRR_PROBE, "key": "0x2*"}])
    assert len(d.known) == 2 and not d.new and not d.fixed


def test_baseline_roundtrip_and_merge_with_guest_file(tmp_path):
    (tmp_path / "guests").mkdir()
    (tmp_path / "guests" / "g.yaml").write_text(yaml.safe_dump({
        "family": "fixture", "arch": "x86_64", "boot": "pvh", "kernel": {"fixture": "pvh"},
        "milestones": [{"name": "entry", "pattern": "fixture: entry", "timeout": 5}], "expected_gaps": [
        {"kind": TSC_MSR, "key": "0x10"}]}))
    write_baseline(tmp_path / "baselines" / "g.yaml", "g",
                   [GapRecord(IO_PORT, "0x510", access="write"), GapRecord(IO_PORT, "0x510", access="write"),
                    GapRecord(TSC_MSR, "0x10")], "reports/r1")
    entries = read_baseline_file(tmp_path / "baselines" / "g.yaml")
    assert entries == [{"kind": IO_PORT, "key": "0x510", "access": "write"}, {"kind": TSC_MSR, "key": "0x10"}]
    merged = load_baseline("g", load_guest(tmp_path / "guests" / "g.yaml").expected_gaps, root=tmp_path)
    assert {(e["kind"], e["key"]) for e in merged} == {(TSC_MSR, "0x10"), (IO_PORT, "0x510")}
    assert load_baseline("absent", root=tmp_path) == []


def test_bad_baseline_file_is_a_config_error(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("gaps: [{kind: not-a-kind, key: x}]")
    with pytest.raises(ConfigError) as e:
        read_baseline_file(p)
    assert "not a gap kind" in e.value.problem and e.value.fix
    p.write_text("gaps: [{kind: io-port")
    with pytest.raises(ConfigError):
        read_baseline_file(p)
