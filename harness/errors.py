"""Errors a user can act on.

Every error that reaches the command line is a HarnessError: one line naming the
problem and one naming the fix. The CLI prints them without a traceback and exits
non-zero (see harness.cli.main).
"""
from __future__ import annotations


class HarnessError(Exception):
    """A problem the user can fix. `fix` says how, in one line."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        return f"error: {self.problem}" + (f" (fix: {self.fix})" if self.fix else "")


class ConfigError(HarnessError):
    """Bad matrix or guest YAML: the message names file, line, what is wrong, what is allowed."""


class AssetError(HarnessError):
    """A guest image is missing, corrupt, or fails its checksum."""


class KernelImageError(HarnessError):
    """A kernel image is truncated, corrupt, of the wrong architecture, or too large."""


class KvmUnavailable(HarnessError):
    """/dev/kvm is absent or not usable by this user."""


class BackendUnavailable(HarnessError):
    """A backend's program (qemu-system-*) or device is missing."""


class GuestMemoryError(HarnessError):
    """A guest-supplied or loader-computed address falls outside guest RAM."""
