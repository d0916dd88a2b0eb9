"""Crash titles and warnings in cell results, settle time, replay of a recorded cell, the crash index."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from harness.gaps.baseline import write_baseline
from harness.report import write_reports
from harness.report.crashes import crash_index
from harness.report.run import load_run
from harness.report.summary import md
from harness.runner.execute import RunOptions, run_cell
from harness.runner.guestfile import load_guest
from harness.runner.matrix import Cell

BOOT = "[    0.000000] Linux version 6.1.0 (gcc)\n[    1.000000] Run /init as init process\n"
WARN = ("[    1.500000] WARNING: CPU: 0 PID: 1 at drivers/tty/serial/8250/8250_port.c:2050 serial8250_tx+0x1c/0x30\n"
        "[    1.500001] RIP: 0010:serial8250_tx+0x1c/0x30\n[    1.500002] Call Trace:\n"
        "[    1.500003]  uart_write+0x7d/0xb0\n[    1.500004] ---[ end trace 0000000000000000 ]---\n")
CRASH = ("[   55.280000] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
         "[   55.280001] RIP: 0010:ext4_readdir+0x1a/0x80\n[   55.280002] Call Trace:\n"
         "[   55.280003]  iterate_dir+0x7d/0xb0\n[   55.280004] Kernel panic - not syncing: Fatal exception\n")


def _cell(tmp: Path, name: str, steps: list[dict], **guest) -> Cell:
    transcript = tmp / f"{name}.yaml"
    transcript.write_text(yaml.safe_dump(steps))
    doc = {"family": "linux", "arch": "x86_64", "boot": "raw", "kernel": {"path": str(transcript)},
           "backends": ["replay"], "hang_timeout": 3,
           "milestones": [{"name": "kernel", "pattern": r"Linux version \d", "timeout": 3},
                          {"name": "login", "pattern": "login: ", "timeout": 3}], **guest}
    (tmp / "guests").mkdir(exist_ok=True)
    path = tmp / "guests" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return Cell(load_guest(path), "replay", "host", "emulate", 1, 64, "quick", retries=0)


def _run(tmp: Path, cell: Cell, run: str = "run1"):
    return run_cell(cell, RunOptions(run_dir=tmp / run))


def test_a_crash_right_after_login_fails_the_cell_within_the_settle_time(tmp_path):
    # The crash comes on the login prompt's line (a prompt that never ends) 0.3 s after it.
    steps = [{"at": 0.05, "out": BOOT + "debian login: "}, {"at": 0.35, "out": CRASH}]
    r = _run(tmp_path, _cell(tmp_path, "late", steps, settle=1.5))
    assert r.outcome == "fail", r.reason
    assert r.reason == "BUG: unable to handle kernel NULL pointer dereference in ext4_readdir"
    assert r.crash.title == r.reason and "iterate_dir" in r.crash.block
    assert [m.name for m in r.milestones] == ["kernel", "login"]
    quick = _run(tmp_path, _cell(tmp_path, "nosettle", steps, settle=0), run="run2")
    assert quick.outcome == "pass"          # without a settle time the crash passes unseen


def test_a_warning_on_a_passing_boot_is_recorded_and_new_warnings_can_fail_the_cell(tmp_path):
    steps = [{"at": 0.05, "out": BOOT + WARN + "debian login: "}]
    r = _run(tmp_path, _cell(tmp_path, "warn", steps, settle=0.3))
    assert r.outcome == "pass", r.reason
    assert [w.title for w in r.warnings] == ["WARNING in serial8250_tx"]
    assert r.warning_diff.new == ["WARNING in serial8250_tx"]
    strict = _run(tmp_path, _cell(tmp_path, "strict", steps, settle=0.3, warnings="fail-new"), run="run2")
    assert strict.outcome == "fail" and strict.failure.kind == "new-warning"
    assert "WARNING in serial8250_tx" in strict.reason
    known = _run(tmp_path, _cell(tmp_path, "known", steps, settle=0.3, warnings="fail-new",
                                 expected_warnings=["WARNING in serial8250_*"]), run="run3")
    assert known.outcome == "pass" and known.warning_diff.known == ["WARNING in serial8250_tx"]
    at_once = _run(tmp_path, _cell(tmp_path, "panic-on-warn", steps, settle=0.3, warnings="fail"), run="run4")
    assert at_once.outcome == "fail" and at_once.reason == "WARNING in serial8250_tx"
    assert [m.name for m in at_once.milestones] == ["kernel"]


def test_replay_plays_a_recorded_cell_directory(tmp_path):
    first = _run(tmp_path, _cell(tmp_path, "orig", [{"at": 0.05, "out": BOOT}, {"at": 0.1, "out": CRASH}]))
    assert first.outcome == "fail"
    recorded = tmp_path / "run1" / Path(first.console_log).parent
    doc = yaml.safe_load((tmp_path / "guests" / "orig.yaml").read_text())
    doc["kernel"] = {"path": str(recorded)}
    (tmp_path / "guests" / "again.yaml").write_text(yaml.safe_dump(doc))
    cell = Cell(load_guest(tmp_path / "guests" / "again.yaml"), "replay", "host", "emulate", 1, 64, "quick", retries=0)
    again = _run(tmp_path, cell, run="run2")
    assert again.outcome == "fail" and again.reason == first.reason, again.reason
    # events.jsonl is played too: a recorded triple fault ends the replayed cell the same way
    faulted = _run(tmp_path, _cell(tmp_path, "tf", [{"at": 0.05, "out": BOOT},
                                                    {"at": 0.3, "event": "triple-fault", "data": {"rip": 4096}}]),
                   run="run3")
    assert faulted.failure.kind == "triple-fault"
    doc["kernel"] = {"path": str(tmp_path / "run3" / Path(faulted.console_log).parent)}
    (tmp_path / "guests" / "tf2.yaml").write_text(yaml.safe_dump(doc))
    cell = Cell(load_guest(tmp_path / "guests" / "tf2.yaml"), "replay", "host", "emulate", 1, 64, "quick", retries=0)
    refaulted = _run(tmp_path, cell, run="run4")
    assert refaulted.failure.kind == "triple-fault" and [m.name for m in refaulted.milestones] == ["kernel"]


def test_one_crash_in_three_cells_of_two_runs_is_one_index_entry(tmp_path):
    steps = [{"at": 0.05, "out": BOOT}, {"at": 0.1, "out": CRASH}]
    _run(tmp_path, _cell(tmp_path, "a", steps), run="night1")
    _run(tmp_path, _cell(tmp_path, "b", steps), run="night1")
    _run(tmp_path, _cell(tmp_path, "c", steps), run="night2")
    _run(tmp_path, _cell(tmp_path, "w", [{"at": 0.05, "out": BOOT + WARN + "login: "}], settle=0.2), run="night2")
    entries = crash_index([load_run(tmp_path / "night1"), load_run(tmp_path / "night2")])
    crash = [e for e in entries if e.severity == "crash"]
    assert len(crash) == 1 and len(crash[0].cells) == 3 and crash[0].runs == ["night1", "night2"]
    assert crash[0].first_seen.run_id == "night1" and crash[0].last_seen.run_id == "night2"
    assert [e.title for e in entries if e.severity == "warning"] == ["WARNING in serial8250_tx"]
    out = subprocess.run([sys.executable, "-m", "harness", "crashes", str(tmp_path / "night1"),
                          str(tmp_path / "night2"), "--json"], capture_output=True, text=True, check=True)
    listed = json.loads(out.stdout)
    assert [(e["title"], len(e["cells"])) for e in listed] == [(crash[0].title, 3)]
    paths = write_reports(tmp_path / "night1")
    html, summary = paths["html"].read_text(), paths["summary"].read_text()
    assert 'id="crashes"' in html and crash[0].title in html and "Crash: <b>" in html
    assert "## Crashes and warnings (1)" in summary and md(crash[0].title) in summary
    results = json.loads(paths["results"].read_text())
    assert [(e["title"], len(e["cells"])) for e in results["crashes"]] == [(crash[0].title, 2)]
    bad = subprocess.run([sys.executable, "-m", "harness", "crashes", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_accepted_warnings_are_known_on_the_next_run(tmp_path):
    steps = [{"at": 0.05, "out": BOOT + WARN + "debian login: "}]
    cell = _cell(tmp_path, "w", steps, settle=0.3, warnings="fail-new")
    first = _run(tmp_path, cell, run="night1")
    assert first.outcome == "fail" and first.warning_diff.new == ["WARNING in serial8250_tx"]
    entries = crash_index([load_run(tmp_path / "night1")])
    assert [(e.title, e.severity) for e in entries] == [("WARNING in serial8250_tx", "warning")]
    assert entries[0].new_in == [first.cell_id] and len(entries[0].sightings) == 1
    done = subprocess.run([sys.executable, "-m", "harness", "crashes", str(tmp_path / "night1"), "--accept-warnings"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    baseline = yaml.safe_load((tmp_path / "baselines" / "w.yaml").read_text())
    assert baseline["warnings"] == ["WARNING in serial8250_tx"]
    second = _run(tmp_path, cell, run="night2")
    assert second.outcome == "pass" and second.warning_diff.known == ["WARNING in serial8250_tx"]
    write_baseline(tmp_path / "baselines" / "w.yaml", "w", [{"kind": "tsc-msr", "key": "0x10"}], "night2")
    again = yaml.safe_load((tmp_path / "baselines" / "w.yaml").read_text())   # `gaps accept` keeps warnings
    assert again["warnings"] == ["WARNING in serial8250_tx"] and again["gaps"] == [{"kind": "tsc-msr", "key": "0x10"}]


def test_boot_summary_prints_guest_text_as_text(capsys):
    from harness.cli.boot_cmd import _summary
    from harness.console.crashes import ConsoleReport
    from harness.model.result import CellResult, MilestoneHit
    r = CellResult("c", "g", "builtin", {}, "fail", reason="BUG: Dentry still in use [unmount of tmpfs] [/x]",
                   milestones=[MilestoneHit("kernel", 1.0, 1.0, 0, "line [/b] x")],
                   crash=ConsoleReport("BUG: Dentry still in use [unmount of tmpfs]", "crash", "bug", "block"),
                   gaps=[{"kind": "host-emulation-failure", "key": "xrstor [rsp]", "count": 1, "first_rip": 16}])
    _summary(r, Path("/tmp/none"), False)
    err = capsys.readouterr().err
    assert "[/x]" in err and "crash: BUG: Dentry still in use [unmount of tmpfs]" in err and "xrstor [rsp]" in err


def test_reports_in_command_output_after_the_prompt_are_not_boot_warnings(tmp_path):
    steps = [{"at": 0.05, "out": BOOT + WARN + "harness login: "}, {"at": 0.1, "input": "root\n"},
             {"at": 0.12, "out": "root\r\n~ # "}, {"at": 0.13, "input": "dmesg; echo __HARNESS_CMD1__=$?\n"},
             {"at": 0.14, "out": "dmesg; echo __HARNESS_CMD1__=$?\r\n" + WARN.replace("\n", "\r\n")
                                 + "[    9.0] WARNING: CPU: 0 PID: 9 at fs/ext4/ioctl.c:10 ext4_ioctl+0x1/0x2\r\n"
                                 + "__HARNESS_CMD1__=0\r\n~ # "}]
    r = _run(tmp_path, _cell(tmp_path, "shell", steps, settle=0.3,
                             auto_login={"user": "root", "prompt": "# $", "timeout": 5}, commands=["dmesg"]))
    assert r.outcome == "pass", r.reason
    assert r.commands and "ext4_ioctl" in r.commands[0]["output"]
    assert [w.title for w in r.warnings] == ["WARNING in serial8250_tx"]     # the boot's, once; not dmesg's
