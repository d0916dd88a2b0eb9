"""Time a guest spends stopped in a debugger is neither a hang nor a late milestone: the watcher stops
its clocks between DEBUG_STOP and DEBUG_RESUME (replayed events; no hypervisor). About 4 s."""
from __future__ import annotations

import textwrap
from pathlib import Path

from harness.runner.execute import RunOptions, run_cell
from harness.runner.guestfile import load_guest
from harness.runner.matrix import Cell


def cell_with(tmp_path: Path, steps: str) -> Cell:
    transcript = tmp_path / "t.yaml"
    transcript.write_text(textwrap.dedent(steps))
    guest = tmp_path / "guests" / "paused.yaml"
    guest.parent.mkdir()
    guest.write_text(textwrap.dedent(f"""\
        family: fixture
        arch: x86_64
        boot: pvh
        kernel: {{path: {transcript}}}
        backends: [replay]
        milestones:
          - {{name: entry, pattern: 'entry', timeout: 1.5}}
          - {{name: login, pattern: 'login: ', timeout: 1.5}}
        hang_timeout: 1
        """))
    return Cell(load_guest(guest), "replay", "default", "emulate", 1, 64, "quick", retries=0)


def test_a_debugger_stop_longer_than_every_timeout_is_not_a_hang(tmp_path: Path):
    cell = cell_with(tmp_path, """\
        - {at: 0.1, out: "entry\\n"}
        - {at: 0.2, event: debug-stop, data: {vcpu: 0, why: swbreak, signal: 5}}
        - {at: 3.2, event: debug-resume}
        - {at: 3.4, out: "login: "}
        """)
    result = run_cell(cell, RunOptions(run_dir=tmp_path / "run"))
    assert result.outcome == "pass", result.reason


def test_without_the_stop_the_same_silence_is_a_hang(tmp_path: Path):
    cell = cell_with(tmp_path, """\
        - {at: 0.1, out: "entry\\n"}
        - {at: 3.4, out: "login: "}
        """)
    result = run_cell(cell, RunOptions(run_dir=tmp_path / "run"))
    assert result.outcome == "timeout" and result.failure.kind == "hang", result.reason
