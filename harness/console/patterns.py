"""Built-in failure patterns per OS family, and the banners that reveal a reboot loop.

Sources: syzkaller pkg/report tables, LAVA kernel-message patterns, QEMU functional tests
(see ../shared/notes/anchors.md). Each entry is (failure kind, regex).
"""
from __future__ import annotations

LINUX = [
    ("panic", r"Kernel panic - not syncing[^\n]*"),
    ("oops", r"Oops: [^\n]*|general protection fault[^\n]*"),
    ("bug", r"(?m)^(?:\[[ \d.]+\] )?BUG: [^\n]*|kernel BUG at [^\n]*"),
]
NETBSD = [
    ("panic", r"(?m)^panic: [^\n]*"),
    ("fatal-page-fault", r"fatal page fault in supervisor mode[^\n]*"),
    ("ddb", r"Stopped in pid [^\n]*|db\{\d+\}> "),
]
OPENBSD = [
    ("panic", r"(?m)^panic: [^\n]*"),
    ("uvm-fault", r"uvm_fault\([^\n]*"),
    ("ddb", r"ddb(?:\{\d+\})?> "),
]
FREEBSD = [
    ("panic", r"(?m)^panic: [^\n]*"),
    ("fatal-trap", r"Fatal trap \d+[^\n]*"),
    ("kdb", r"KDB: enter[^\n]*"),
    ("ddb", r"(?m)^db> "),
]
XEN = [
    ("panic", r"Panic on CPU \d+:[^\n]*(?:\n\(XEN\)[^\n]*){0,3}"),
]
FIXTURE = [
    ("panic", r"(?m)^panic: [^\n]*"),
]

FAILURES_BY_FAMILY: dict[str, list[tuple[str, str]]] = {
    "linux": LINUX, "netbsd": NETBSD, "openbsd": OPENBSD, "freebsd": FREEBSD, "xen": XEN,
    "fixture": FIXTURE, "other": LINUX + NETBSD[1:] + OPENBSD[1:] + FREEBSD[1:],
}

# A banner printed once per boot: seeing it twice in one cell means the guest rebooted.
BANNERS: dict[str, str] = {
    "linux": r"Linux version \d+\.\d+",
    "netbsd": r"NetBSD \d+\.\d+[^\n]* \(",
    "openbsd": r"OpenBSD \d+\.\d+ \(",
    "freebsd": r"FreeBSD \d+\.\d+-[A-Z]+",
    "xen": r"Xen version \d+\.\d+",
    "fixture": r"fixture: entry ",
}


def failure_patterns(family: str) -> list[tuple[str, str]]:
    return list(FAILURES_BY_FAMILY.get(family, FAILURES_BY_FAMILY["other"]))


def banner_pattern(family: str) -> str | None:
    return BANNERS.get(family)
