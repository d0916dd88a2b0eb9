"""Every outcome class of the watcher against recorded or scripted console streams."""
from __future__ import annotations

import time

from harness.model import events as ev
from harness.model.guest import Dialog

from console_scripted import TRANSCRIPTS, chunks

LINUX_MILESTONES = [("kernel", r"Linux version \d", 5), ("userspace", r"Run /init as init process", 5),
                    ("login", r"login: ", 5)]


def transcript(name: str) -> bytes:
    return (TRANSCRIPTS / name).read_bytes()


def test_login_survives_interleaved_log_line_and_escapes(watch):
    outcome, _, stream = watch(chunks(transcript("linux-login-interleaved.txt"), 5), LINUX_MILESTONES)
    assert outcome.outcome == "pass", outcome.reason
    assert [m.name for m in outcome.milestones] == ["kernel", "userspace", "login"]
    times = [m.t for m in outcome.milestones]
    assert times == sorted(times) and times[0] >= 0
    # console offsets point into the raw log, which keeps every byte
    raw = (stream.log_path).read_bytes()
    assert outcome.milestones[-1].console_offset == len(raw)
    assert b"guest log[" in raw


def test_milestone_times_are_host_arrival_times(watch):
    steps = [(0.0, b"Linux version 6.1\n"), (0.3, b"Run /init as init process\n"), (0.3, b"login: ")]
    outcome, _, _ = watch(steps, LINUX_MILESTONES)
    assert outcome.outcome == "pass"
    t = [m.t for m in outcome.milestones]
    assert 0.25 < t[1] - t[0] < 0.6 and 0.25 < t[2] - t[1] < 0.6
    assert abs(outcome.milestones[2].since_previous - (t[2] - t[1])) < 1e-3


def _failure(watch, name: str, family: str, milestones=None):
    outcome, _, _ = watch(chunks(transcript(name), 11), milestones or [("banner", r"\w", 5), ("login", "login:", 5)],
                          family=family)
    return outcome


def test_linux_panic(watch):
    o = _failure(watch, "linux-panic.txt", "linux", LINUX_MILESTONES)
    assert o.outcome == "fail" and o.failure.kind == "panic"
    assert "Unable to mount root fs" in o.failure.message
    assert [m.name for m in o.milestones] == ["kernel"]


def test_linux_oops_and_bug(watch):
    assert _failure(watch, "linux-oops.txt", "linux", LINUX_MILESTONES).failure.kind == "oops"
    o = _failure(watch, "linux-bug.txt", "linux", LINUX_MILESTONES)
    assert o.failure.kind == "bug" and "NULL pointer" in o.failure.message


def test_netbsd_fatal_page_fault(watch):
    o = _failure(watch, "netbsd-fatal-page-fault.txt", "netbsd")
    assert o.outcome == "fail" and o.failure.kind == "fatal-fault"


def test_openbsd_trap_line_wins_over_the_ddb_prompt_after_it(watch):
    o = _failure(watch, "openbsd-ddb.txt", "openbsd")
    assert o.outcome == "fail" and o.failure.kind == "trap"
    assert o.reason.startswith("trap: kernel: protection fault trap")


def test_openbsd_ddb_prompt_alone(watch):
    steps = [(0, b"OpenBSD 7.5 (GENERIC) #1\nStopped at      db_enter+0x10:  popq    %rbp\nddb> ")]
    o, _, _ = watch(steps, [("banner", "OpenBSD", 5), ("login", "login:", 5)], family="openbsd")
    assert o.outcome == "fail" and o.failure.kind == "ddb"


def test_freebsd_fatal_trap_before_panic(watch):
    o = _failure(watch, "freebsd-fatal-trap.txt", "freebsd")
    assert o.outcome == "fail" and o.failure.kind == "fatal-trap"
    assert "page fault while in kernel mode" in o.failure.message


def test_triple_fault_event(watch):
    steps = [(0, b"fixture: entry pvh\n"), (0.1, ev.TRIPLE_FAULT, {"rip": "0x100010"})]
    o, _, _ = watch(steps, [("entry", "fixture: entry", 5), ("login", "login:", 5)], family="fixture")
    assert o.outcome == "fail" and o.failure.kind == "triple-fault"
    assert [m.name for m in o.milestones] == ["entry"]


def test_reset_event(watch):
    o, _, _ = watch([(0, b"x\n"), (0.05, ev.RESET, {"source": "i8042"})], [("login", "login:", 5)], family="fixture")
    assert o.outcome == "fail" and o.failure.kind == "reset" and "i8042" in o.reason


def test_reboot_loop_banner_twice(watch):
    boot = b"[    0.000000] Linux version 6.1.0 (gcc)\n[    0.5] Run /init as init process\n"
    steps = [(0, boot), (0.1, b"reboot: Restarting system\n"), (0.1, boot)]
    o, _, _ = watch(steps, [("kernel", r"Linux version \d", 5), ("login", "login:", 5)])
    assert o.outcome == "fail" and o.failure.kind == "reboot-loop"


def test_hang_is_a_timeout_with_near_miss(watch):
    steps = [(0, b"Linux version 6.1\nRun /init as init process\n~ # ")]
    o, _, _ = watch(steps, [("kernel", r"Linux version", 30), ("shell", r"/ # ", 30)], hang=0.5)
    assert o.outcome == "timeout" and o.failure.kind == "hang"
    assert o.near_miss.waiting_for == "shell" and o.near_miss.last_milestone == "kernel"
    assert o.near_miss.closest_line.strip() == "~ #"


def test_milestone_timeout_near_miss_names_closest_line(watch):
    steps = [(0, b"Linux version 6.1\n"), (0, b"Welcome to Buildroot\nbuildroot logn: \n"),
             *[(0.05, b"tick\n") for _ in range(20)]]
    o, _, _ = watch(steps, [("kernel", r"Linux version", 5), ("login", r"login: ", 0.6)], hang=5)
    assert o.outcome == "timeout" and o.failure is None
    assert "login" in o.reason
    assert o.near_miss.closest_line == "buildroot logn: "
    assert o.near_miss.last_lines[-1] == "tick"


def test_keepalive_extends_the_deadline(watch):
    steps = [(0, b"start\n"), *[(0.2, b"progress 10% done\n") for _ in range(6)], (0.1, b"login: ")]
    o, _, _ = watch(steps, [("start", "start", 5), ("login", "login: ", 0.5)], keepalive=[r"\d+% done"])
    assert o.outcome == "pass", o.reason
    o2, _, _ = watch(steps, [("start", "start", 5), ("login", "login: ", 0.5)])
    assert o2.outcome == "timeout"


def test_dialog_answers_prompt_once(watch):
    steps = [(0, b"NetBSD 10.0 (GENERIC) #0\nroot device: "), (0.3, b"\ndump device: \nlogin: ")]
    o, session, _ = watch(steps, [("banner", "NetBSD", 5), ("login", "login: ", 5)], family="netbsd",
                          dialogs=[Dialog("root device: ", "wd0a\\n", 1)])
    assert o.outcome == "pass"
    assert bytes(session.sent) == b"wd0a\n"


def test_host_emulation_failure_is_a_gap(watch):
    steps = [(0, b"Linux version 6.1\n"),
             (0.1, ev.HOST_EMULATION_FAILURE, {"insn": "xrstor [rsp]", "rip": 0xffffffff81001234})]
    o, _, _ = watch(steps, LINUX_MILESTONES)
    assert o.outcome == "gap" and "xrstor" in o.reason and "last milestone: kernel" in o.reason


def test_stopping_gap_event_is_a_gap(watch):
    steps = [(0, b"boot\n"), (0.05, ev.GAP, {"kind": "fail-entry", "key": "0x80000021", "fate": "stopped"})]
    o, _, _ = watch(steps, [("login", "login: ", 5)])
    assert o.outcome == "gap" and "fail-entry" in o.reason


def test_backend_death_is_an_error(watch):
    o, _, _ = watch([(0, b"Linux version 6.1\n"), (0.05, "EXIT")], LINUX_MILESTONES)
    assert o.outcome == "error" and "backend exited" in o.reason


def test_backend_error_event_is_an_error(watch):
    o, _, _ = watch([(0, ev.BACKEND_ERROR, {"message": "kernel truncated"})], LINUX_MILESTONES)
    assert o.outcome == "error" and "kernel truncated" in o.reason


def test_large_output_without_matches_stays_fast(watch):
    noise = b"".join(b"[%6d.000000] driver noise line number %d\n" % (i, i) for i in range(20000))
    start = time.monotonic()
    o, _, _ = watch([(0, noise), (0, b"login: ")], [("login", "login: ", 20)])
    assert o.outcome == "pass"
    assert time.monotonic() - start < 10


def test_power_off_event_overtaking_the_last_lines_still_passes(watch):
    """PSCI SYSTEM_OFF right after `login:`: the event may arrive before the console bytes."""
    steps = [(0, b"fixture: entry arm64\n"), (0, ev.SHUTDOWN, {"source": "kvm-system-event"}),
             (0.1, b"fixture login: \n")]
    o, _, _ = watch(steps, [("entry", "fixture: entry", 5), ("login", "login: ", 5)], family="fixture")
    assert o.outcome == "pass", o.reason


def test_power_off_while_settling_after_every_milestone_passes(watch):
    """fixture-arm64 prints `fixture login: ` and then powers off (PSCI SYSTEM_OFF) within the settle
    time: its boot is complete, not "powered off before reaching every milestone"."""
    steps = [(0, b"fixture: entry arm64\n"), (0.05, b"fixture login: \n"), (0.1, b"fixture: psci system_off\n"),
             (0.15, ev.SHUTDOWN, {"source": "kvm-system-event"})]
    o, _, _ = watch(steps, [("entry", "fixture: entry", 5), ("login", "login: ", 5)], family="fixture", settle=1.0)
    assert o.outcome == "pass", o.reason
    assert [m.name for m in o.milestones] == ["entry", "login"]


def test_a_panic_while_settling_still_fails_when_the_guest_then_powers_off(watch):
    steps = [(0, b"Linux version 6.1\n"), (0.05, b"login: \n"), (0.1, b"Kernel panic - not syncing: boom\n"),
             (0.15, ev.SHUTDOWN, {"source": "kvm-system-event"})]
    o, _, _ = watch(steps, [("kernel", "Linux version", 5), ("login", "login: ", 5)], family="linux", settle=1.0)
    assert o.outcome == "fail" and o.failure.kind != "shutdown", o.reason


def test_power_off_without_the_remaining_milestones_is_still_a_failure(watch):
    steps = [(0, b"fixture: entry arm64\n"), (0.05, ev.SHUTDOWN, {"source": "kvm-system-event"})]
    o, _, _ = watch(steps, [("entry", "fixture: entry", 5), ("login", "login: ", 5)], family="fixture")
    assert o.outcome == "fail" and o.failure.kind == "shutdown"


def test_panic_on_the_login_line_fails_within_the_settle_time(watch):
    steps = [(0, b"OpenBSD 7.5 (GENERIC) #1\n"), (0.1, b"login: panic: pool_do_put: mbufpl: double pool_put\n")]
    milestones = [("banner", "OpenBSD", 5), ("login", "login: ", 5)]
    o, _, _ = watch(steps, milestones, family="openbsd", settle=1.0)
    assert o.outcome == "fail" and o.failure.kind == "panic", o.reason
    assert o.reason == "panic: pool_do_put: mbufpl: double pool_put"      # not "panic: panic: ..."
    assert [m.name for m in o.milestones] == ["banner", "login"]


def test_a_warning_on_the_login_line_does_not_hide_the_milestone(watch):
    steps = [(0, b"OpenBSD 7.5 (GENERIC) #1\n"), (0.1, b"login: witness: lock order reversal:\n")]
    milestones = [("banner", "OpenBSD", 5), ("login", "login: ", 5)]
    o, _, _ = watch(steps, milestones, family="openbsd", settle=0.3)
    assert o.outcome == "pass", o.reason
    failing, _, _ = watch(steps, milestones, family="openbsd", settle=0.3, warnings="fail")
    assert failing.outcome == "fail" and failing.failure.kind == "witness"


def test_soft_lockup_and_hung_task_lines_with_caller_ids_fail(watch):
    for line in (b"[   40.100000][    C0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [kworker/0:1:20]\n",
                 b"[  245.300000][   T28] INFO: task kworker/u4:2:61 blocked for more than 143 seconds.\n"):
        o, _, _ = watch([(0, b"[    0.000000] Linux version 6.1.0 (gcc)\n"), (0.05, line)], LINUX_MILESTONES)
        assert o.outcome == "fail", (line, o.reason)
