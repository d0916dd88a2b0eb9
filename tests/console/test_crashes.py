"""Crash titles: real consoles (floors measured by bench/crash_titles), normalisation, report blocks."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.console.crashes import CRASH, WARNING, classify_line, crash_of, find_reports, reports_in_console

BENCH = Path(__file__).resolve().parents[2] / "bench" / "crash_titles"
sys.path.insert(0, str(BENCH))
import crash_corpus as corpus  # noqa: E402

needs_corpus = pytest.mark.skipif(not corpus.DEFAULT_DIR.is_dir(),
                                  reason=f"real crash consoles not present at {corpus.DEFAULT_DIR} "
                                         "(set HARNESS_CRASH_CONSOLES)")

# Measured 2026-12-01 (bench/README.md): linux 354/356, netbsd 7/7, openbsd 21/21, freebsd 8/8.
PARSER_FLOOR = {"linux": 0.98, "netbsd": 1.0, "openbsd": 1.0, "freebsd": 1.0}


@pytest.mark.slow          # ~5 s for the 356 Linux consoles, under a second for each BSD
@needs_corpus
@pytest.mark.parametrize("family", corpus.FAMILIES)
def test_real_consoles_are_titled_as_syzkaller_titles_them(family):
    consoles = [c for c in corpus.consoles(families=(family,)) if c.title]
    assert consoles
    right = [c.name for c in consoles
             if (crash_of(reports_in_console(family, c.console)) or _none).title in c.titles]
    assert len(right) / len(consoles) >= PARSER_FLOOR[family], sorted(set(c.name for c in consoles) - set(right))


@needs_corpus
@pytest.mark.parametrize("family", corpus.FAMILIES)
def test_consoles_without_a_crash_have_no_crash_report(family):
    for c in corpus.consoles(families=(family,)):
        if not c.title:
            crashes = [r for r in reports_in_console(family, c.console) if r.severity == CRASH]
            assert not crashes, (c.name, crashes[0].title)


class _None:
    title = None


_none = _None()

OOPS = """[  {t}] BUG: unable to handle kernel NULL pointer dereference at {addr}
[  {t}] IP: [<{addr}>] tcp_v4_rcv+0x{off:x}/0x1e40
[  {t}] PGD 0 P4D 0
[  {t}] Oops: 0000 [#1] SMP
[  {t}] CPU: {cpu} PID: {pid} Comm: syz-executor{pid} Not tainted 4.15.0+ #1
[  {t}] RIP: 0010:tcp_v4_rcv+0x{off:x}/0x1e40
[  {t}] Call Trace:
[  {t}]  ip_local_deliver_finish+0x2e2/0xba0
[  {t}]  ip_local_deliver+0x1e5/0x6a0
[  {t}] Code: 48 89 df e8 a4 ff ff ff
[  {t}] ---[ end trace {addr} ]---
[  {t}] Kernel panic - not syncing: Fatal exception in interrupt
"""


def test_the_same_crash_gets_the_same_title_whatever_its_addresses_pids_and_cpus():
    a = OOPS.format(t="12.345678", addr="ffff88801a2b3c4d", off=0x1a2, cpu=0, pid=4021)
    b = OOPS.format(t="3071.000001", addr="ffffffff8155aa10", off=0x99, cpu=3, pid=17)
    ta, tb = (crash_of(find_reports("linux", x)) for x in (a, b))
    assert ta.title == tb.title == "BUG: unable to handle kernel NULL pointer dereference in tcp_v4_rcv"
    assert ta.severity == CRASH and ta.kind == "bug"


def test_the_report_block_runs_from_its_first_line_to_the_end_of_its_backtrace():
    text = "[    1.0] Linux version 6.1\n" + OOPS.format(t="2.5", addr="ffff8880aa", off=1, cpu=0, pid=1) + \
           "[    9.0] later unrelated line\n"
    report = find_reports("linux", text)[0]
    lines = report.block.splitlines()
    assert "BUG: unable to handle kernel NULL pointer dereference" in lines[0]
    assert any("ip_local_deliver+" in l for l in lines) and any("end trace" in l for l in lines)
    assert "Linux version" not in report.block


def test_caller_id_prefix_and_panic_on_warn():
    text = ("[   30.100000][ T5021] ------------[ cut here ]------------\n"
            "[   30.100001][ T5021] WARNING: CPU: 1 PID: 5021 at fs/ext4/ioctl.c:1012 ext4_fileattr_get+0x1c/0x30\n"
            "[   30.100002][ T5021] Modules linked in:\n"
            "[   30.100003][ T5021] RIP: 0010:ext4_fileattr_get+0x1c/0x30\n"
            "[   30.100004][ T5021] Call Trace:\n"
            "[   30.100005][ T5021]  vfs_fileattr_get+0x7d/0xb0\n"
            "[   30.100006][ T5021] Kernel panic - not syncing: kernel: panic_on_warn set ...\n")
    reports = find_reports("linux", text)
    assert crash_of(reports).title == "WARNING in ext4_fileattr_get"
    assert classify_line("linux", "[   30.1][ T5021] BUG: soft lockup - CPU#0 stuck for 22s! [a:1]\n")[1] == CRASH
    assert classify_line("linux", "[   40.1][    C0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!\n")[1] == CRASH


def test_userspace_warning_lines_are_not_kernel_reports():
    assert classify_line("linux", "  WARNING: Failed to connect to lvmetad. Falling back to device scanning.\n") is None
    assert classify_line("linux", "[    5.1] WARNING: CPU: 0 PID: 1 at kernel/foo.c:10 foo+0x1/0x2\n") == ("warning",
                                                                                                       WARNING)


@pytest.mark.parametrize("family,line,kind", [
    ("netbsd", "[ 157.5698093] panic: kernel diagnostic assertion \"x\" failed\n", "panic"),
    ("openbsd", "login: panic: pool_do_put: mbufpl: double pool_put: 0xffff\n", "panic"),
    ("openbsd", "kernel: page fault trap, code=0\n", "trap"),
    ("freebsd", "lock order reversal:\n", "lock-order-reversal"),
    ("openbsd", "witness: lock order reversal:\n", "witness"),
])
def test_bsd_report_lines(family, line, kind):
    assert classify_line(family, line)[0] == kind


def test_lines_that_only_look_like_reports():
    assert classify_line("openbsd", "kernel: relinking done\n") is None          # not a trap line
    assert classify_line("linux", "[    3.2] ODEBUG: Out of memory. ODEBUG disabled\n") is None
    assert classify_line("linux", "traps: a.out[99] general protection fault ip:4005d6 sp:7ffd error:0 in a.out\n") \
        is None


def test_xen_panic_title_names_the_message_after_the_panic_header():
    text = ("(XEN) ****************************************\n(XEN) Panic on CPU 0:\n"
            "(XEN) dom0 kernel not specified. Check bootloader configuration.\n")
    assert [r.title for r in find_reports("xen", text)] == [
        "Xen panic: dom0 kernel not specified. Check bootloader configuration."]


def test_a_flood_after_a_report_stays_fast():
    import time
    flood = "".join(f"[{i:8d}.000000] noise line {i} with no report in it\n" for i in range(100000))
    text = OOPS.format(t="1.0", addr="ffff8880aa", off=1, cpu=0, pid=1) + flood
    start = time.monotonic()
    reports = find_reports("linux", text)
    assert reports[0].title.startswith("BUG: unable to handle kernel NULL pointer dereference")
    assert time.monotonic() - start < 10
    bsd = "panic: pool_do_put: mbufpl: double pool_put\n" + "x" * 50 + "\n" * 100000
    assert find_reports("openbsd", bsd)[0].title == "pool: double put: mbufpl"


def test_reason_keeps_the_numbers_when_the_title_is_only_the_normalised_first_line():
    from harness.console.crashes import headline
    (panic,) = find_reports("fixture", "panic: msr-gate: required MSR 0x4b564dfe faulted (#GP)\n")
    assert panic.title == "panic: msr-gate: required MSR ADDR faulted (#GP)"
    assert headline(panic) == "panic: msr-gate: required MSR 0x4b564dfe faulted (#GP)"
    oops = crash_of(find_reports("linux", OOPS.format(t="1.0", addr="ffff8880aa", off=1, cpu=0, pid=1)))
    assert headline(oops) == oops.title          # the title names the function the first line lacks
