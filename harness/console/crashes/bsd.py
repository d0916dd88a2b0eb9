"""NetBSD, OpenBSD and FreeBSD crash titles (facts from syzkaller's pkg/report tables).

BSD consoles are not interleaved the way Linux's are: a report is the text from its header line
to the end of the console, and a title is a regex over it (the frame is named by the regex, e.g.
the function after `Stopped in` or after the trap frames of `KDB: stack backtrace:`).
"""
from __future__ import annotations

from harness.console.crashes.rules import CRASH, WARNING, ReportKind, TitleRule, rx


def R(match: str, title: str, capture: str | None = None, corrupted: bool = False,
      severity: str | None = None) -> TitleRule:
    return TitleRule(rx(match), title, rx(capture) if capture else None, None, (), corrupted, severity)


def K(header: str, name: str, *rules: TitleRule, suppress: tuple[str, ...] = (), severity: str = CRASH,
      line_form: str | None = None) -> ReportKind:
    return ReportKind(header, tuple(rules), severity, tuple(rx(s) for s in suppress), name,
                      rx(line_form) if line_form else None)


# Reports every family shares: the generic `panic:` line (after the family's own panic rules).
COMMON = (
    K("SYZFAIL:", "syzfail", R("SYZFAIL:(.*)", "SYZFAIL:{1}")),
    K("SYZFATAL:", "syzfatal", R("SYZFATAL:(.*)()", "SYZFATAL:{1}")),
    K("panic:", "panic", R("panic:(.*)", "panic:{1}"),
      suppress=("_panic:", "xlog_status:", r"ddb\.onpanic:", "evtlog_status:")),
)

NETBSD = (
    K("fault in supervisor mode", "fatal-fault",
      R("fatal (page|protection|integer divide) fault in supervisor mode", "{1} fault in {2}",
        capture=r"fatal (page|protection|integer divide) fault in supervisor mode(?:.*\n)+?.*Stopped in"
                r".*netbsd:([^\\+]+)")),
    K("panic: ", "panic",
      R("panic: kernel diagnostic assertion", "assert failed: {1}",
        capture=r'panic: kernel diagnostic assertion "(.*?)"'),
      R("panic: lock error", "lock error in {1}",
        capture=r"panic: lock error:(?:.*\n)+?.*?Begin traceback.*?\n(?:.*(?:panic|printf|lockdebug|abort|mutex)"
                r".*\n)*.*?\](.*?)\("),
      R("ASan: Unauthorized Access", "ASan: Unauthorized Access in {1}",
        capture=r"ASan: Unauthorized Access (?:.*\n)+(?:kasan|__asan).*\n(.*)\("),
      R("MSan: Uninitialized", "MSan: Uninitialized Memory in {1}",
        capture=r"MSan: Uninitialized (?:.*\n)+(?:kmsan|__msan).*\n(.*)\("),
      R("UBSan: Undefined Behavior", "UBSan: Undefined Behavior in {1}",
        capture=r"UBSan: Undefined Behavior (?:.*\n)+(?:Handle|__ubsan).*\n(.*)\("),
      suppress=(r"ddb\.onpanic:",)),
    K("UBSan:", "ubsan", R("UBSan:", "UBSan: Undefined behavior"), severity=WARNING),
    K("lock order reversal", "lock-order-reversal",
      R(r"lock order reversal(?:.*\n)+?.*1st {{ADDR}} ([^ ]+).*\n.*2nd {{ADDR}} ([^ ]+)", "lock order reversal: {1} {2}"),
      severity=WARNING),
) + COMMON

_OPENBSD_SKIP_FRAMES = (r"(?:(?:panic|kerntrap|usertrap|alltraps\w*|savectx|db_enter|__asan_(?:load|store)\w*|"
                        r"kasan_mem\w+|memcpy|memmove|memset|memcmp|bcmp|bcopy|bzero|kcopy|strcmp|strncmp|strlcpy|"
                        r"strlcat|strlen|strnlen|strncpy|copyin\w*|copyout\w*)\([^\n]*\) at [^\n]*\n)*")
_OPENBSD_FRAME = r"(?:.*\n)+?" + _OPENBSD_SKIP_FRAMES + r"([A-Za-z0-9_]+)\([^\n]*\) at [A-Za-z_]"

OPENBSD = (
    K("cleaned vnode", "panic", R("cleaned vnode: ", "panic: cleaned vnode isn't")),
    K("panic:", "panic",
      R(r"(?:\nddb\{\d+\}> show panic(?s:.*?)[*]cpu\d+: )?Caught invalid memory access(?s:.*?)\n(?:[^\n]* at "
        r"(?:__asan_(?:load|store)(?:[0-9]+|N)+_noabort|kasan_mem(?:cpy|move|set|cmp)|memcpy|memmove|memset|memcmp|"
        r"bcmp|bcopy|bzero|kcopy|strcmp|strncmp|strlcpy|strlcat|strlen|strnlen|strncpy|copyin|copyinstr|copyout|"
        r"copyoutstr)\+0x[0-9a-f]+[^\n]*\n)+([A-Za-z0-9_]+)", "KASAN: invalid memory access in {1}"),
      R(r"\nddb\{\d+\}> show panic(?s:.*?)[*]cpu\d+: ([^\n]+)(?s:.*?)\nddb\{\d+\}> trace", "panic: {1}"),
      R("panic: kernel diagnostic assertion (.+) failed: file \".*/([^\"]+)", "assert {1} failed in {2}"),
      R("panic: Data modified on freelist: .* previous type ([^ ]+)", "malloc: free list modified: {1}"),
      R("panic: pool_cache_item_magic_check: ([^ ]+) cpu free list modified", "pool: cpu free list modified: {1}"),
      R("panic: pool_do_put: ([^:]+): double pool_put", "pool: double put: {1}"),
      R("panic: pool_do_get: ([^:]+) free list modified", "pool: free list modified: {1}"),
      R("panic: pool_p_free: ([^:]+) free list modified", "pool: free list modified: {1}"),
      R(r"panic: timeout_add: to_ticks \(.+\) < 0", "panic: timeout_add: to_ticks < 0"),
      R("panic: attempt to execute user address {{ADDR}} in supervisor mode", "panic: attempt to execute user address"),
      R("panic: unhandled af", "panic: unhandled af"),
      R("panic: (kqueue|knote).* ([a-z]+ .*)", "kqueue: {2}"),
      R("panic: receive ([0-9][a-z]*):", "soreceive {1}")),
    K("lock order reversal:", "witness",
      R(r"lock order reversal:\n(?:.*\n)*lock order data .* missing", "witness: reversal: lock order data missing"),
      R(r"lock order reversal:\n+.*1st {{ADDR}} ([^\ ]+).*\n.*2nd {{ADDR}} ([^\ ]+)", "witness: reversal: {1} {2}"),
      severity=WARNING),
    K("witness:", "witness",
      R("witness: thread {{ADDR}} exiting with the following locks held:", "witness: thread exiting with locks held"),
      R(r"witness: userret: returning with the following locks held:(.*\n)+?.*sys_([a-z0-9_]+)\+",
        "witness: userret: {2}"),
      R("(witness: .*)", "{1}"),
      severity=WARNING),
    K("uvm_fault(", "uvm-fault",
      R(r"uvm_fault\(" + _OPENBSD_FRAME, "uvm_fault: {1}",
        capture=r"uvm_fault\(" + _OPENBSD_FRAME + r"(?:.*\n)+?.*end trace frame"),
      R(r"uvm_fault\((?:.*\n)+?.*Stopped at[ ]+{{ADDR}}", "uvm_fault",
        capture=r"uvm_fault\((?:.*\n)+?.*end trace frame"),
      R(r"uvm_fault\((?:.*\n)+?.*Stopped at[ ]+([^\+]+)", "uvm_fault: {1}",
        capture=r"uvm_fault(?:.*\n)+?.*Stopped at[ ]+([^\+]+)(?:.*\n)+?.*end trace frame"),
      R(r"uvm_fault\(", "uvm_fault", corrupted=True)),
    K("kernel:", "trap",
      R("kernel: page fault trap" + _OPENBSD_FRAME, "uvm_fault: {1}"),
      R("kernel: protection fault trap" + _OPENBSD_FRAME, "protection_fault: {1}"),
      R(r"kernel: page fault trap, code=0.*\nStopped at[ ]+([^\+]+)", "uvm_fault: {1}"),
      R(r"kernel: protection fault trap, code=0.*\nStopped at[ ]+([^\+]+)", "protection_fault: {1}"),
      suppress=("reorder_kernel",), line_form=r"kernel: \w+ fault trap"),
) + COMMON

_KDB = (r"KDB: stack backtrace:\n(?:[a-zA-Z0-9_]+\(\) at [a-zA-Z0-9_]+\+0x.*\n)*")
FREEBSD = (
    K("Fatal trap", "fatal-trap",
      R(r"Fatal trap (.+?)\n(?:.*\n)+?KDB: stack backtrace:\n(?:#[0-9]+ {{ADDR}} at (?:kdb_backtrace|vpanic|panic|"
        r"trap_fatal|trap_pfault|trap|calltrap|m_copydata|__rw_wlock_hard)\+{{ADDR}}\n)*#[0-9]+ {{ADDR}} at "
        r"{{FUNC}}{{ADDR}}", "Fatal trap {1} in {2}"),
      R(r"(Fatal trap [0-9]+:.*) while in (?:user|kernel) mode\n(?:.*\n)+?" + _KDB +
        r"--- trap 0x[0-9a-fA-F]+.* ---\n([a-zA-Z0-9_]+)\(\) at [a-zA-Z0-9_]+\+0x.*\n", "{1} in {2}")),
    K("panic:", "panic",
      R(r"panic: ffs_write: type {{ADDR}} [0-9]+ \([0-9]+,[0-9]+\)", "panic: ffs_write: type ADDR X (Y,Z)"),
      R(r"panic: ([a-zA-Z]+[a-zA-Z0-9_]*\(\)) of destroyed (mutex|rmlock|rwlock|sx) @ /.*/(sys/.*:[0-9]+)",
        "panic: {1} of destroyed {2} at {3}"),
      R(r"panic: No chunks on the queues for sid [0-9]+\.\n", "panic: sctp: no chunks on the queues"),
      R(r"panic: size_on_all_streams = [0-9]+ smaller than control length [0-9]+\n",
        "panic: size_on_all_streams smaller than control length"),
      R(r"panic: sbflush_internal: ccc [0-9]+ mb [0-9]+ mbcnt [0-9]+\n", "panic: sbflush_internal: residual data"),
      R(r"(panic: sx lock still held)\n(?:.*\n)+?" + _KDB + r"sx_destroy\(\) at [a-zA-Z0-9_+/ ]+\n"
        r"([a-zA-Z0-9_]+)\(\) at [a-zA-Z0-9_+/ ]+\+0x.*\n", "{1} in {2}"),
      R(r"panic: pfi_dynaddr_setup: dyn is 0x[0-9a-f]+\n", "panic: pfi_dynaddr_setup: non-NULL dyn"),
      R(r"(panic: ASan: Invalid access, [0-9]+-byte (?:read|write)) at {{ADDR}},.*\n(?:.*\n)+?" + _KDB +
        r"__asan_.*\(\) at [a-zA-Z0-9_+/ ]+\n([a-zA-Z0-9_]+)\(\) at [a-zA-Z0-9_+/ ]+\+0x.*\n", "{1} in {2}")),
    K("lock order reversal:", "lock-order-reversal",
      R(r"lock order reversal:\n.*1st {{ADDR}} ([^ ]+).*\n.*2nd {{ADDR}} ([^ ]+)", "lock order reversal: {1} {2}"),
      severity=WARNING),
) + COMMON
