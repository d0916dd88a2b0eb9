"""The parts of a guest file the console watcher needs (what to wait for, what to answer, what fails)
and what a command typed after the prompt gave back.

The guest-file loader (harness.runner.guestfile) builds them with line-precise validation; the
watcher (harness.console.watcher) and `harness boot` use them without knowing about YAML.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.model.record import JsonRecord


@dataclass
class Milestone(JsonRecord):
    name: str
    pattern: str
    timeout: float


@dataclass
class Dialog(JsonRecord):
    pattern: str
    send: str
    max: int = 1


@dataclass
class FailurePattern(JsonRecord):
    name: str
    pattern: str


@dataclass
class CommandResult(JsonRecord):
    """What one command typed after the prompt (harness.runner.guest_shell) printed and returned."""
    command: str
    output: str
    exit_status: int | None      # None: it never finished
    duration_s: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "ok": self.ok}
