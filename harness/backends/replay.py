"""The `replay` backend: plays back a recorded console transcript instead of booting anything.

Uses: re-checking milestone and failure patterns against a console you already have (after a
prompt change, say), and testing the runner without a hypervisor. The guest's `kernel` source is
a transcript, either YAML steps:

    - {at: 0.10, out: "Linux version 6.1.0\\n"}       # console bytes at t seconds after start
    - {at: 0.20, event: gap, data: {kind: tsc-msr, key: "0x10"}}
    - {at: 0.30, event: triple-fault, data: {rip: 0x1000}}
    - {at: 0.40, exit: 0}                              # the "VM" process ends
    - {at: 0.50, input: "wd0a\\n"}                     # wait until this text is typed (a dialog)

or a recorded cell directory's console.log + console.timing.jsonl (+ events.jsonl). Without an
`exit` step the replay idles after the last step, like a guest halted at its prompt.
"""
from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from harness.backends.base import Backend, ProcessSession
from harness.errors import BackendUnavailable
from harness.model import events as ev
from harness.model.session import BootRequest, SessionSummary


class ReplayBackend(Backend):
    name = "replay"

    def check(self, request: BootRequest) -> None:
        kernel = Path(request.kernel) if request.kernel is not None else None
        if kernel is None or not kernel.exists():
            raise BackendUnavailable(f"replay transcript {request.kernel} does not exist",
                                     "give the guest a kernel: {path: TRANSCRIPT.yaml} or {path: RUN/cells/CELL}")
        if kernel.is_dir() and not (kernel / "console.log").is_file():
            raise BackendUnavailable(f"replay directory {kernel} holds no console.log",
                                     "give the directory of a recorded cell (reports/RUN/cells/CELL)")

    def start(self, request: BootRequest) -> "ReplaySession":
        argv = [sys.executable, "-m", "harness.backends.replay", str(request.kernel), str(request.events_path)]
        return ReplaySession(request, argv)


class ReplaySession(ProcessSession):
    def stop(self) -> SessionSummary:
        code = self.terminate(grace_s=1.0)
        return SessionSummary(exit_code=code, host={"backend": "replay"}, command=self.argv,
                              stderr_tail=self.stderr_tail())


def load_steps(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        return _steps_from_recording(path)
    steps = yaml.safe_load(path.read_text()) or []
    if not isinstance(steps, list):
        raise ValueError(f"{path}: a transcript is a YAML list of steps")
    return sorted(steps, key=lambda s: float(s.get("at", 0)))


def _steps_from_recording(cell_dir: Path) -> list[dict[str, Any]]:
    raw = (cell_dir / "console.log").read_bytes()
    steps: list[dict[str, Any]] = []
    start = 0
    session_start: float | None = None       # CLOCK_MONOTONIC of the recorded session's start
    timing = cell_dir / "console.timing.jsonl"
    for line in timing.read_text().splitlines() if timing.exists() else []:
        rec = json.loads(line)
        steps.append({"at": rec["t"], "out_bytes": raw[start:rec["raw_offset"]]})
        start = rec["raw_offset"]
        if session_start is None and "mono" in rec:
            session_start = float(rec["mono"]) - float(rec["t"])
    if start < len(raw):
        steps.append({"at": steps[-1]["at"] if steps else 0.0, "out_bytes": raw[start:]})
    steps += _event_steps(cell_dir / "events.jsonl", session_start)
    return sorted(steps, key=lambda s: float(s["at"]))     # stable: console before events at the same time


def _event_steps(path: Path, session_start: float | None) -> list[dict[str, Any]]:
    """The recorded events (gaps, triple fault, reset, ...) at their times since the recorded
    session started (or, for recordings without `mono` times, since its vm-start event).
    The replay emits its own vm-start."""
    events = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
            events.append((str(rec["type"]), float(rec["t"]), rec.get("data") or {}))
        except (ValueError, KeyError, TypeError):
            continue                      # a torn last line of a killed run
    if not events:
        return []
    t0 = session_start if session_start is not None else \
        next((t for kind, t, _ in events if kind == ev.VM_START), events[0][1])
    return [{"at": max(0.0, t - t0), "event": kind, "data": data} for kind, t, data in events if kind != ev.VM_START]


def _play(steps: list[dict[str, Any]], events_path: Path) -> int:
    writer = ev.EventWriter(events_path)
    t0 = time.monotonic()
    writer.emit(ev.VmEvent(ev.VM_START, t0, {"host": {"backend": "replay"}}))
    typed = b""
    for step in steps:
        delay = t0 + float(step.get("at", 0)) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if "out" in step or "out_bytes" in step:
            data = step.get("out_bytes") or str(step["out"]).encode()
            os.write(1, data)
        if "event" in step:
            writer.emit(ev.VmEvent(step["event"], time.monotonic(), step.get("data") or {}))
        if "input" in step:
            typed = _wait_for_input(typed, str(step["input"]).encode())
        if "exit" in step:
            return int(step["exit"])
    while True:  # idle like a halted guest until the harness stops us
        time.sleep(3600)


def _wait_for_input(typed: bytes, expected: bytes) -> bytes:
    while expected not in typed:
        ready, _, _ = select.select([0], [], [], 60)
        if not ready:
            continue
        chunk = os.read(0, 4096)
        if not chunk:
            break
        typed += chunk
    return typed[typed.find(expected) + len(expected):]


if __name__ == "__main__":
    sys.exit(_play(load_steps(Path(sys.argv[1])), Path(sys.argv[2])))
