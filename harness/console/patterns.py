"""Built-in failure patterns per OS family, and the banners that reveal a reboot loop.

Sources: syzkaller pkg/report tables, LAVA kernel-message patterns, QEMU functional tests
(see ../shared/notes/anchors.md).
"""
from __future__ import annotations

from harness.console.crashes import spotter

# Crash and warning reports are found by the per-OS report tables of harness.console.crashes:
# one `report` pattern matches any line holding a report header, and the watcher asks
# `classify_line` whether that line really starts a report and whether it is a crash or a warning.
REPORT = "report"

# Debugger prompts: the kernel stopped. They end a cell only when no report line came before.
PROMPTS: dict[str, list[tuple[str, str]]] = {
    "netbsd": [("ddb", r"Stopped in pid [^\n]*|db\{\d+\}> ")],
    "openbsd": [("ddb", r"ddb(?:\{\d+\})?> ")],
    "freebsd": [("kdb", r"KDB: enter[^\n]*"), ("ddb", r"(?m)^db> ")],
}
PROMPTS["other"] = PROMPTS["netbsd"] + PROMPTS["openbsd"] + PROMPTS["freebsd"]


def failure_patterns(family: str) -> list[tuple[str, str]]:
    return [(REPORT, spotter(family))] + list(PROMPTS.get(family, []))


# A banner printed once per boot: seeing it twice in one cell means the guest rebooted.
BANNERS: dict[str, str] = {
    "linux": r"Linux version \d+\.\d+",
    "netbsd": r"NetBSD \d+\.\d+[^\n]* \(",
    "openbsd": r"OpenBSD \d+\.\d+ \(",
    "freebsd": r"FreeBSD \d+\.\d+-[A-Z]+",
    "xen": r"Xen version \d+\.\d+",
    "fixture": r"fixture: entry ",
}


def banner_pattern(family: str) -> str | None:
    return BANNERS.get(family)
