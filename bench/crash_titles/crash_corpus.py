"""The real crash consoles of ../shared/data/crash-consoles: header facts and raw console text.

Each file: `KEY: value` header lines (TITLE, ALT, TYPE, CORRUPTED, SUPPRESSED, ...), a blank line,
then the console bytes exactly as captured.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("HARNESS_CRASH_CONSOLES", "/work/shared/data/crash-consoles"))
FAMILIES = ("linux", "netbsd", "openbsd", "freebsd")


@dataclass
class Console:
    family: str
    name: str
    path: Path
    console: bytes
    title: str | None = None                 # None: the console holds no crash
    alt: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def titles(self) -> list[str]:
        return ([self.title] if self.title else []) + self.alt


def load(path: Path, family: str) -> Console:
    data = path.read_bytes()
    head, sep, console = data.partition(b"\n\n")
    if not sep:
        head, console = b"", data
    facts: dict[str, str] = {}
    alt: list[str] = []
    for raw in head.decode(errors="replace").splitlines():
        key, _, value = raw.partition(": ")
        key = key.rstrip(":")
        if key == "ALT":
            alt.append(value.strip())
        elif key:
            facts[key] = value.strip()
    return Console(family, path.name, path, console, facts.get("TITLE") or None, alt, facts)


def consoles(root: Path = DEFAULT_DIR, families: tuple[str, ...] = FAMILIES) -> list[Console]:
    out = []
    for family in families:
        directory = root / family
        for path in sorted(directory.iterdir(), key=lambda p: (len(p.name), p.name)) if directory.is_dir() else []:
            if path.is_file():
                out.append(load(path, family))
    return out
