"""A throwaway repository of replay guests: the runner end to end, with no hypervisor."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PASSING = """\
- {at: 0.05, out: "fixture: entry replay\\n"}
- {at: 0.10, event: gap, data: {kind: tsc-msr, key: "0x10", first_rip: 4096, policy: emulate}}
- {at: 0.20, out: "fixture: handoff ok\\n"}
- {at: %(delay)s, out: "fixture login: "}
"""
PANICKING = """\
- {at: 0.05, out: "fixture: entry replay\\n"}
- {at: 0.10, out: "panic: fixture deliberate panic\\n"}
"""


def guest_yaml(transcript: str) -> str:
    return textwrap.dedent(f"""\
        family: fixture
        arch: x86_64
        boot: pvh
        kernel: {{path: {transcript}}}
        backends: [replay]
        memory: 64
        milestones:
          - {{name: entry, pattern: 'fixture: entry', timeout: 10}}
          - {{name: handoff, pattern: 'fixture: handoff ok', timeout: 10}}
          - {{name: login, pattern: 'login: ', timeout: 10}}
        expected_gaps:
          - {{kind: tsc-msr, key: "0x10"}}
        """)


def make_repo(root: Path, passing: int = 4, panicking: int = 0, delay: float = 0.3) -> Path:
    (root / "guests").mkdir(parents=True)
    (root / "transcripts").mkdir()
    names = []
    for i in range(passing + panicking):
        name = f"g{i:02d}" if i < passing else f"bad{i:02d}"
        text = PASSING % {"delay": delay} if i < passing else PANICKING
        (root / "transcripts" / f"{name}.yaml").write_text(text)
        (root / "guests" / f"{name}.yaml").write_text(guest_yaml(str(root / "transcripts" / f"{name}.yaml")))
        names.append(name)
    (root / "matrix.yaml").write_text(textwrap.dedent("""\
        version: 1
        entries:
          - guests: ['*']
            backends: [replay]
            tier: quick
        """))
    return root


def harness(*args: str, cwd: Path, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def replay_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")
