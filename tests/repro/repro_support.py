"""Shared helpers: run `harness` as a user would, run one cell, find its directory and result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KVM_OK = os.access("/dev/kvm", os.R_OK | os.W_OK)


def harness(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def run_one(select: str, out: Path, *, guests: Path, matrix: Path, cwd: Path) -> tuple[Path, dict]:
    """`harness run -k SELECT` of exactly one cell; returns (its cell directory, its result)."""
    proc = harness("run", "--matrix", str(matrix), "--guests", str(guests), "--no-live", "--report-dir", str(out),
                   "-k", select, cwd=cwd)
    results = sorted((out / "cells").glob("*.json"))
    assert len(results) == 1, proc.stdout + proc.stderr
    result = json.loads(results[0].read_text())
    return out / Path(result["console_log"]).parent, result


def replay_repo(root: Path) -> Path:
    """A repository with one replay guest whose console panics after a gap (no hypervisor needed)."""
    (root / "guests").mkdir(parents=True)
    transcript = root / "panic.transcript.yaml"
    transcript.write_text(textwrap.dedent("""\
        - {at: 0.05, out: "fixture: entry replay\\n"}
        - {at: 0.10, event: gap, data: {kind: tsc-msr, key: "0x10", first_rip: 4096, policy: emulate}}
        - {at: 0.20, out: "panic: replayed deliberate panic\\n"}
        """))
    (root / "guests" / "replayed.yaml").write_text(textwrap.dedent(f"""\
        # a replayed panic
        family: fixture
        arch: x86_64
        boot: pvh
        kernel: {{path: {transcript}}}
        cmdline: "console=ttyS0 quiet"
        backends: [replay]
        memory: 64
        milestones:
          - {{name: entry, pattern: 'fixture: entry', timeout: 10}}
          - {{name: login, pattern: 'login: ', timeout: 10}}
        failures:
          - {{name: panic, pattern: '(?m)^panic: replayed'}}
        hang_timeout: 5
        """))
    (root / "matrix.yaml").write_text("version: 1\nentries:\n  - {guests: [replayed], backends: [replay], "
                                      "vcpus: [2], memory: [96]}\n")
    return root
