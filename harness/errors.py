"""Errors a user can act on.

Every error that reaches the command line is a HarnessError: one line naming the
problem and one naming the fix. The CLI prints them without a traceback and exits
non-zero (see harness.cli.main).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, TypeVar

K = TypeVar("K")
V = TypeVar("V")


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


def lookup(table: Mapping[K, V], key: K, what: str, *, where: str = "", names: Iterable[Any] | None = None,
           error: type[HarnessError] = ConfigError) -> V:
    """`table[key]`, or one `error` naming the key and the names the table knows: the one keyed
    lookup of every registry (backends, boot loaders, CPU profiles, gap policies, recipes, labs...).

    `what` names the table's keys ("boot method"); `where` is where a reader adds one (or lists
    them); `names` overrides the listed names (sorted, or with an extra such as "auto")."""
    try:
        return table[key]
    except KeyError:
        known = ", ".join(str(n) for n in (table if names is None else names)) or "none"
        raise error(f"unknown {what} {key!r}", f"use one of: {known}" + (f" ({where})" if where else "")) from None
