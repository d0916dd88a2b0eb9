"""The parts of a guest file the console watcher needs: what to wait for, what to answer, what fails.

The guest-file loader (harness.runner.guestfile) builds them with line-precise validation; the
watcher (harness.console.watcher) and `harness boot` use them without knowing about YAML.
"""
from __future__ import annotations

from dataclasses import dataclass

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
