"""Linux crash titles: which console lines start a report, how the report is cut out of an
interleaved console, and the title of each kind (facts from syzkaller's pkg/report tables).

Linux consoles interleave CPUs and tasks. A printk line may carry a caller id (`[T123]` task,
`[C1]` CPU) after its timestamp: the report keeps the lines of the task that printed the header
(and, after "Sending NMI from CPU", the CPU backtraces), drops the others and the frames the
unwinder is unsure of (` ? foo+0x..`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from harness.console.crashes.rules import (CRASH, TRACE, WARNING, FrameSyntax, ReportKind, Stack, TitleRule,
                                           rx)

_LINE_PREFIX = re.compile(r"^(?:\*\* [0-9]+ printk messages dropped \*\* )?(?:.* login: )?(?:\<[0-9]+\>)?"
                          r"\[ *[0-9]+\.[0-9]+\](\[ *(?:C|T)[0-9]+\])? ")
_TASK_CONTEXT = re.compile(r"\[ *T[0-9]+\]")
_CPU_CONTEXT = re.compile(r"\[ *C[0-9]+\]")
_QUESTIONABLE = re.compile(r"(\[\<[0-9a-f]+\>\])? \? ")
_REPLAYED = re.compile(r"^[^\n]*\*\* replaying previous printk message \*\*")
CONSOLE = "console"     # the context of a timestamped line without a caller id

RIP_FRAME = (r"(?:IP|NIP|pc |PC is at):? (?:(?:[0-9]+:)?(?:{{PC}} +){0,2}{{FUNC}}|(?:[0-9]+:)?0x[0-9a-f]+|"
             r"(?:[0-9]+:)?{{PC}} +\[< *\(null\)>\] +\(null\)|[0-9]+: +\(null\))")
RIP = rx(RIP_FRAME)
CALL_TRACE = rx(r"(?:Call (?:T|t)race:)|(?:Backtrace:)")

# Frames that are never the culprit: sanitizers, printing, locking, allocation, string and list
# helpers, syscall and fault entry (syzkaller's list).
SKIP = (
    "__sanitizer", "__asan", "kasan", "hwasan", "__msan", "kmsan", "kcsan_setup_watchpoint",
    "check_memory_region", "check_heap_object", "check_object", "read_word_at_a_time",
    "(read|write)_once_.*nocheck", "print_address_description", "panic", "invalid_op", "report_bug",
    "fixup_bug", "print_report", "print_usage_bug", "do_error", r"_trap$|do_trap", "show_stack", "dump_stack",
    "walk_stack", "dump_backtrace", "warn_slowpath", "warn_alloc", "warn_bogus", "__warn", "alloc_page",
    "k?v?(?:m|z|c)alloc", "krealloc", "kmem_cache", "allocate_slab", "__alloc_frozen_pages_noprof",
    "folio_(?:alloc|unlock)", "filemap_alloc_folio", "__filemap_get_folio", "find_or_create_page",
    "do_read_cache_folio", "read_cache_page", "pagecache_get_page", "grab_cache_page_write_begin", "slab_",
    "debug_object", "timer_is_static_object", "work_is_static_object", "__might_fault", "print_unlock",
    "imbalance_bug", "lockdep", "bh_enable", "bh_disable", "perf_trace", "lock_acquire", "lock_release",
    "lock_class", "mark_lock", "(reacquire|mark)_held_locks", "raw_spin_rq", "spin_lock", "spin_trylock",
    "spin_unlock", "read_lock", "read_trylock", "write_lock", "write_trylock", "read_unlock", "write_unlock",
    "^down$", "down_read", "down_write", "down_read_trylock", "down_write_trylock", "down_trylock", "up_read",
    "up_write", "^mutex_", "^__mutex_", "^rt_mutex_", "owner_on_cpu", "osq_lock", "osq_unlock",
    "atomic(64)?_(dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)", "(set|clear|change|test)_bit",
    "__wake_up", "^refcount_", "^kref_", "ref_tracker", "seqprop_assert", "memcpy", "memcmp", "memset",
    "memchr", "memmove", "memdup", "strcmp", "strncmp", "strcpy", "strlcpy", "strncpy", "strscpy", "strlen",
    "strstr", "strnstr", "strnlen", "strchr", "strdup", "strndup", "copy_to_user", "copy_from_user",
    "copy_to_iter", "copy_from_iter", "copy_page_to_iter", "copy_page_from_iter", "copy_folio_to_iter",
    "^copyin$", "^copyout$", "put_user", "get_user", "might_fault", "might_sleep", "list_add", "list_del",
    "list_replace", "list_move", "list_splice", "^rb_", "^__rb_", "_indirect_thunk_", "string", "pointer",
    "snprintf", "scnprintf", "kasprintf", "kvasprintf", "printk", "va_format", "dev_info", "dev_notice",
    "dev_warn", "dev_err", "dev_alert", "dev_crit", "dev_emerg", "program_check_exception",
    "program_check_common", "del_timer", "flush_work", "__cancel_work_timer", "cancel_work_sync",
    "try_to_grab_pending", "flush_workqueue", "drain_workqueue", "destroy_workqueue", "queue_work",
    "finish_wait", "kthread_stop", "kobject_", "add_uevent_var", "get_device_parent", "device_add",
    "device_del", "device_unregister", "device_destroy", "device_release", "devres_release_all",
    "hwrng_unregister", "i2c_del_adapter", "__unregister_client", "device_for_each_child",
    "rollback_registered", "unregister_netdev", "sysfs_remove", "device_remove_file", "tty_unregister_device",
    "dummy_urb_enqueue", "usb_kill_urb", "usb_kill_anchored_urbs", "usb_control_msg", "usb_hcd_submit_urb",
    "usb_submit_urb", "^complete$", "wait_for_completion", "^kv?free$", "kfree_skb", "readb$", "readw$",
    "readl$", "readq$", "writeb$", "writew$", "writel$", "writeq$", "logic_in", "logic_out", r"^crc\d+",
    "crc_itu_t", "__might_resched", "assertfail", "^iput$", "^iput_final$", "^ihold$", "hex_dump_to_buffer",
    "print_hex_dump", "^klist_", "(trace|lockdep)_(hard|soft)irq", "^(un)?lock_page",
    "stack_trace_consume_entry", "arch_stack_walk", "stack_trace_save", "insert_work", "__queue_delayed_work",
    "queue_delayed_work_on", "ida_free", "do_(kernel|translation)_fault", "do_mem_abort", "el1_abort",
    "el1h_64_sync(?:_handler)?", "print_tainted", "xas_(?:start|load|find)", "find_lock_entries",
    "truncate_inode_pages_range", "__phys_addr", "__fortify_report", "cleanup_srcu_struct",
    "rhashtable_lookup", "extract_(user|iter)_to_sg", "drop_nlink", "^get_taint$", "^put_device$",
    "lock_timer_base", "__timer_delete_sync", "sk_stop_timer_sync", "__mod_timer", "fast_dput", "dput",
    "mark_buffer_dirty",
)

SYNTAX = FrameSyntax(
    trace_starts=tuple(re.compile(p) for p in (
        r"Call (?:T|t)race", r"Allocated:", r"Allocated by task [0-9]+:", r"Freed:", r"Freed by task [0-9]+:",
        r"[^k] backtrace(?: \(crc [0-9a-fA-F]*\))?:", r"Backtrace:", r"Uninit was stored to memory at",
        r"status: [0-9a-f]{16} badaddr: [0-9a-f]{16} cause: [0-9a-f]{16}")),
    frame_lines=(rx(r"^ *(?:{{PC}} ){0,2}{{FUNC}}"), rx(r"^ *{{PC}} \(([a-zA-Z0-9_.]+)\) from {{PC}} \({{FUNC}}")),
    skip=SKIP,
    strip_prefixes=("SYSC_", "SyS_", "sys_", "__x64_", "__ia32_", "__arm64_", "____sys_", "___sys_", "__sys_",
                    "__se_", "__se_sys_", "__do_sys_", "compat_SYSC_", "compat_SyS_", "ksys_"),
    corrupted_lines=(rx(r"^( \[\<?(?:0x)?[0-9a-f]+\>?\])? should_fail(slab)?(\.[a-z0-9.]+)?\+0x"),),
)

# -- frame pickers for stalls and hangs ------------------------------------------------------
_STALL_ANCHORS = tuple(re.compile(p) for p in (
    "process_one_work", "do_syscall_", "do_fast_syscall_", "sysenter_dispatch", "tracesys_phase2",
    "el0_svc_handler", "invoke_syscall", "ret_fast_syscall", "netif_receive_skb", "do_softirq", "call_timer_fn",
    "_run_timers", "run_timer_softirq", "hrtimer_run", "run_ksoftirqd", "smpboot_thread_fn", "^kthread$",
    "start_secondary", "cpu_startup_entry", "ret_from_fork", "vfs_write", "vfs_read", "vfs_iter_read",
    "vfs_iter_write", "do_iter_read", "do_iter_write", "call_read_iter", "call_write_iter", "new_sync_read",
    "new_sync_write", "vfs_ioctl", "ksys_ioctl", "compat_ioctl", "compat_sys_ioctl", "blkdev_driver_ioctl",
    "blkdev_ioctl", "^call_read_iter", "^call_write_iter", "do_iter_readv_writev", "^call_mmap", "mmap_region",
    "do_mmap", "do_dentry_open", "vfs_open", "^sock_sendmsg", "^sock_recvmsg", "^sock_release",
    "^__sock_release", "^setsockopt$", "kernel_setsockopt", "sock_common_setsockopt", "^listen$",
    "kernel_listen", "sk_common_release", "^sock_mmap", "^accept$", "kernel_accept", "^sock_do_ioctl",
    "^sock_ioctl", "^compat_sock_ioctl", "^nfnetlink_rcv_msg", "^rtnetlink_rcv_msg", "^netlink_dump",
    "^(sys_)?(socketpair|connect|ioctl)", "__do_fault", "do_page_fault", "^page_fault$", "__fput",
    "task_work_run", "exit_to_usermode", "smp_call_function", "tasklet_action", "tasklet_hi_action"))


def stall_frame(frames: list[str]) -> tuple[str, int]:
    """A stall is blamed on the frame just above the entry point it runs under (syscall, work item, timer)."""
    prev, prev_i = frames[0], 0
    for i, frame in enumerate(frames):
        if any(a.search(frame) for a in _STALL_ANCHORS):
            if "smp_call_function" in frame:
                return "smp_call_function", i
            return prev, prev_i
        prev, prev_i = frame, i
    return "", -1


_HANG_ANCHORS = {"rtnl_lock": "", "synchronize_rcu": "synchronize_rcu", "synchronize_srcu": "synchronize_rcu",
                 "synchronize_net": "synchronize_rcu", "synchronize_sched": "synchronize_rcu"}
_HANG_SKIP = ("sched", "_lock", "_slowlock", "down", "rwsem", "completion", "kthread", "wait", "synchronize",
              "context_switch", "__switch_to", "cancel_delayed_work", "rcu_barrier")


def hang_frame(frames: list[str]) -> tuple[str, int]:
    """A hung task is blamed on the lock it waits for, else on the first frame that is not waiting."""
    for i, frame in enumerate(frames):
        for anchor, replacement in _HANG_ANCHORS.items():
            if anchor in frame:
                return replacement or frame, i
    for i, frame in enumerate(frames):
        if not any(s in frame for s in _HANG_SKIP):
            return frame, i
    return "", -1


# -- the table -------------------------------------------------------------------------------
def R(match: str, title: str, capture: str | None = None, stack: Stack | None = None, alt: tuple[str, ...] = (),
      corrupted: bool = False, severity: str | None = None, follow_up: bool = False) -> TitleRule:
    return TitleRule(rx(match), title, rx(capture) if capture else None, stack, alt, corrupted, severity, follow_up)


def S(*parts, skip: tuple[str, ...] = (), fallback: tuple = (), pick=None) -> Stack:
    return Stack(tuple(rx(p) if isinstance(p, str) else p for p in parts),
                 tuple(rx(p) if isinstance(p, str) else p for p in fallback), skip, pick)


def _warning_stack(*skip: str) -> Stack:
    return S(rx(f"(?:{RIP_FRAME}|--- interrupt: [0-9]+ at {{{{FUNC}}}})"), TRACE,
             fallback=(CALL_TRACE, TRACE), skip=skip)


_FAULT = S(RIP, CALL_TRACE, TRACE)
_TRACE = S(CALL_TRACE, TRACE)
_LOCKDEP_AT = r"(?:.*\n)+?.*at: (?:{{PC}} +)?{{FUNC}}"

BUG = ReportKind("BUG:", name="bug", rules=(
    R("BUG: KASAN:", "KASAN: {1} {3} in {4}",
      capture=r"BUG: KASAN: ([a-z\-]+) in {{FUNC}}(?:.*\n)+?.*(Read|Write) (?:of size|at addr) (?:[0-9a-f]+)",
      stack=S(r"BUG: KASAN: (?:[a-z\-]+) in {{FUNC}}", CALL_TRACE, TRACE,
              skip=("kernel_fault", "tag_check", "mem_abort", "^el1_", "^el1h_")),
      alt=("bad-access in {4}",), severity=WARNING),
    R("BUG: KASAN:", "KASAN: invalid-free in {2}",
      capture=r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in {{FUNC}}",
      stack=S(r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in {{FUNC}}", CALL_TRACE,
              TRACE, skip=("slab_", "kfree", "vunmap", "vfree")),
      alt=("invalid-free in {2}",), severity=WARNING),
    R(r"BUG: KASAN: ([a-z\-]+) on address(?:.*\n)+?.*(Read|Write) of size ([0-9]+)", "KASAN: {1} {2}",
      severity=WARNING),
    R("BUG: KASAN: (.*)", "KASAN: {1}", corrupted=True, severity=WARNING),
    R("BUG: KMSAN: kernel-usb-infoleak", "KMSAN: kernel-usb-infoleak in {2}",
      capture="BUG: KMSAN: kernel-usb-infoleak in {{FUNC}}",
      stack=S(TRACE, "(Local variable .* created at:|Uninit was created at:)", TRACE,
              skip=("alloc_skb", "usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg", "usb_interrupt_msg",
                    "usb_control_msg")),
      alt=("KMSAN origin in {3}",), severity=WARNING),
    R("BUG: KMSAN:", "KMSAN: {1} in {3}", capture=r"BUG: KMSAN: ([a-z\-]+) in {{FUNC}}",
      stack=S(TRACE, "(Local variable .* created at:|Uninit was created at:)", TRACE,
              skip=("alloc_skb", "netlink_ack", "netlink_rcv_skb", "_encrypt$", "^(?:crypto|cipher|drbg|rng)_")),
      alt=("bad-access in {3}",), severity=WARNING),
    R("BUG: KCSAN: data-race", "KCSAN: {1}", capture="BUG: KCSAN: (.*)", severity=WARNING),
    R("BUG: KCSAN:", "KCSAN: {1}", capture="BUG: KCSAN: (.*)", severity=WARNING),
    R(r"BUG: KFENCE: (use-after-free|out-of-bounds) (read|write) in {{FUNC}}", "KFENCE: {1} {2} in {4}",
      stack=S(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}", TRACE), alt=("bad-access in {4}",), severity=WARNING),
    R("BUG: KFENCE: invalid free in {{FUNC}}", "KFENCE: invalid free in {2}",
      stack=S(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}", TRACE), alt=("invalid-free in {2}",), severity=WARNING),
    R("BUG: KFENCE: invalid (read|write) in {{FUNC}}", "KFENCE: invalid {1} in {3}",
      stack=S(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}", TRACE), alt=("bad-access in {3}",), severity=WARNING),
    R("BUG: KFENCE: memory corruption in {{FUNC}}", "KFENCE: memory corruption in {2}",
      stack=S(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}", TRACE), severity=WARNING),
    R("BUG: (?:unable to handle kernel paging request|unable to handle page fault for address|"
      "Unable to handle kernel data access)", "BUG: unable to handle kernel paging request in {1}",
      stack=_FAULT, alt=("bad-access in {1}",)),
    R("BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference|"
      "Kernel NULL pointer dereference)", "BUG: unable to handle kernel NULL pointer dereference in {1}",
      stack=_FAULT, alt=("bad-access in {1}",)),
    R("BUG: (?:unable to handle kernel|Unable to handle kernel)", "BUG: unable to handle kernel", corrupted=True),
    R("BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|cpu recursion|bad magic|wrong owner|"
      "wrong CPU|trylock failure on UP)", "BUG: {1} {2} in {3}",
      stack=S(CALL_TRACE, TRACE, skip=("spin_", "_lock", "_unlock"))),
    R("BUG: soft lockup", "BUG: soft lockup in {1}", stack=S(RIP, CALL_TRACE, TRACE, pick=stall_frame),
      alt=("stall in {1}",)),
    R("BUG: .*still has locks held!", "BUG: still has locks held in {1}",
      capture=r"BUG: .*still has locks held!(?:.*\n)+?.*{{PC}} +{{FUNC}}", severity=WARNING),
    R("BUG: scheduling while atomic", "BUG: scheduling while atomic in {1}",
      stack=S(CALL_TRACE, TRACE, skip=("schedule",)), severity=WARNING),
    R("BUG: lock held when returning to user space", "BUG: lock held when returning to user space in {1}",
      capture=r"BUG: lock held when returning to user space(?:.*\n)+?.*leaving the kernel with locks still held"
              r"(?:.*\n)+?.*at: (?:{{PC}} +)?{{FUNC}}", severity=WARNING),
    R("BUG: bad unlock balance detected!", "BUG: bad unlock balance in {1}",
      stack=S("{{PC}} +{{FUNC}}", CALL_TRACE, TRACE), severity=WARNING),
    R("BUG: held lock freed!", "BUG: held lock freed in {1}",
      capture=r"BUG: held lock freed!(?:.*\n)+?.*{{PC}} +{{FUNC}}", severity=WARNING),
    R("BUG: Bad rss-counter state", "BUG: Bad rss-counter state", severity=WARNING),
    R("BUG: non-zero nr_ptes on freeing mm", "BUG: non-zero nr_ptes on freeing mm", severity=WARNING),
    R("BUG: non-zero nr_pmds on freeing mm", "BUG: non-zero nr_pmds on freeing mm", severity=WARNING),
    R("BUG: Dentry .* still in use", "BUG: Dentry still in use in {1}",
      capture=r"BUG: Dentry .* still in use \([0-9]+\) \[(unmount) of ([^\]]+)\]",
      alt=("BUG: Dentry still in use [{1} of {2}]",)),
    R("BUG: Bad page (state|cache)", "BUG: Bad page {1} in {2}",
      stack=S("page last allocated", TRACE, skip=("(free|put|get|update|release)_page", "free_unref", "^_*folio",
                                                   "truncate_inode_pages", "page_frag_free", "alloc", "vmap",
                                                   "page_owner")), severity=WARNING),
    R("BUG: Bad page map", "BUG: Bad page map", severity=WARNING),
    R("BUG: workqueue lockup", "BUG: workqueue lockup"),
    R("BUG: sleeping function called from invalid context at (.*)",
      "BUG: sleeping function called from invalid context in {2}", stack=_TRACE, severity=WARNING),
    R(r"BUG: using ([a-z_]+)\(\) in preemptible", "BUG: using {1}() in preemptible code in {2}",
      stack=S(CALL_TRACE, TRACE, skip=("dump_stack", "preemption", "preempt", "debug_", "processor_id",
                                       "this_cpu")), severity=WARNING),
    R("BUG: workqueue leaked lock or atomic", "BUG: workqueue leaked lock or atomic in {1}",
      capture=r"BUG: workqueue leaked lock or atomic(?:.*\n)+?.*last function: ([a-zA-Z0-9_]+)\n",
      severity=WARNING),
    R("BUG: memory leak", "memory leak in {1}",
      stack=S(r"backtrace(?: \(crc [0-9a-fA-F]*\))?:", TRACE,
              skip=("kmemleak", "mmap", "kmem", "slab", "alloc", "create_object", "idr_get", "list_lru_init",
                    "kasprintf", "kvasprintf", "pcpu_create", "strdup", "strndup", "memdup")), severity=WARNING),
    R("BUG: .*stack guard page was hit at", "BUG: stack guard page was hit in {1}",
      stack=S(RIP, CALL_TRACE, TRACE, pick=stall_frame), alt=("stack-overflow in {1}",)),
    R("BUG: Invalid wait context", "WARNING: locking bug in {1}",
      stack=S(CALL_TRACE, TRACE, skip=("lock_sock", "release_sock")), severity=WARNING),
    R(r"BUG:\s*(?:\n|$)", "BUG: corrupted", corrupted=True),
), suppress=tuple(rx(p) for p in ("ODEBUG:", "Boot_DEBUG:", "xlog_status:", "DEBUG:",
                                   "BUG: no syscalls can create resource")))

WARNING_KIND = ReportKind("WARNING:", name="warning", severity=WARNING, line_form=_LINE_PREFIX, rules=(
    R(r"WARNING: .*lib/debugobjects\.c.* (?:debug_print|debug_check|at)", "WARNING: ODEBUG bug in {1}",
      stack=_warning_stack("debug_", "rcu", "hrtimer_", "timer_", "work_", "percpu_", "vunmap", "vfree", "__free_",
                           "debug_check", "kobject_")),
    R(r"WARNING: .*mm/usercopy\.c.* (?:usercopy_warn|at)", "WARNING: bad usercopy in {1}",
      stack=_warning_stack("usercopy", "__check")),
    R(r"WARNING: .*lib/kobject\.c.* (?:kobject_|at)", "WARNING: kobject bug in {1}", stack=_warning_stack("kobject_")),
    R(r"WARNING: .*fs/proc/generic\.c.* (?:proc_register|at)", "WARNING: proc registration bug in {1}",
      stack=_warning_stack("proc_")),
    R(r"WARNING: .*lib/refcount\.c.* (?:refcount_|at)", "WARNING: refcount bug in {1}",
      stack=_warning_stack("refcount", "kobject_")),
    R(r"WARNING: .*kernel/locking/lockdep\.c.*lock_", "WARNING: locking bug in {1}",
      stack=_warning_stack("lock_sock", "release_sock")),
    R("WARNING: .*still has locks held!", "WARNING: still has locks held in {1}",
      capture=r"WARNING: .*still has locks held!(?:.*\n)+?.*at: {{FUNC}}"),
    R("WARNING: Nested lock was not taken", "WARNING: nested lock was not taken in {1}", stack=_warning_stack()),
    R("WARNING: lock held when returning to user space", "WARNING: lock held when returning to user space in {1}",
      capture=r"WARNING: lock held when returning to user space(?:.*\n)+?.*leaving the kernel with locks still "
              r"held(?:.*\n)+?.*at: (?:{{PC}} +)?{{FUNC}}"),
    R(r"WARNING: .*mm/.*\.c.* k?.?malloc", "WARNING: kmalloc bug in {1}",
      stack=_warning_stack("kmalloc", "krealloc", "slab", "kmem")),
    R(r"WARNING: .*mm/vmalloc.c.*__vmalloc_node", "WARNING: zero-size vmalloc in {1}", stack=_warning_stack()),
    R("WARNING: .* usb_submit_urb", "WARNING in {1}/usb_submit_urb",
      stack=_warning_stack("usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg", "usb_interrupt_msg",
                           "usb_control_msg")),
    R(r"WARNING: {{SRC}} at 0x\d+, CPU#\d+", "WARNING in {2}", stack=_warning_stack()),
    R("WARNING: .* at {{SRC}} {{FUNC}}", "WARNING in {3}", stack=_warning_stack()),
    R("WARNING: {{SRC}} at {{FUNC}}", "WARNING in {3}", stack=_warning_stack()),
    R(r"WARNING: \[.*\] {{SRC}} at {{FUNC}}.*", "WARNING in {3}", stack=_warning_stack()),
    R("WARNING: possible circular locking dependency detected", "possible deadlock in {1}",
      capture=r"WARNING: possible circular locking dependency detected(?:.*\n)+?.*is trying to acquire lock",
      stack=S("at: (?:{{PC}} +)?{{FUNC}}", "at: (?:{{PC}} +)?{{FUNC}}", TRACE,
              skip=("process_one_work", "flush_workqueue", "drain_workqueue", "destroy_workqueue"))),
    R("WARNING: possible irq lock inversion dependency detected", "possible deadlock in {1}",
      capture=r"WARNING: possible irq lock inversion dependency detected(?:.*\n)+?.*just changed the state of "
              r"lock" + _LOCKDEP_AT),
    R("WARNING: .*-safe -> .*-unsafe lock order detected", "possible deadlock in {1}",
      stack=S("which became (?:.*) at:", TRACE)),
    R("WARNING: possible recursive locking detected", "possible deadlock in {1}",
      capture=r"WARNING: possible recursive locking detected(?:.*\n)+?.*is trying to acquire lock" + _LOCKDEP_AT),
    R("WARNING: inconsistent lock state", "inconsistent lock state in {2}",
      capture=r"WARNING: inconsistent lock state(?:.*\n)+?.*takes" + _LOCKDEP_AT, stack=_TRACE),
    R("WARNING: suspicious RCU usage", "WARNING: suspicious RCU usage in {2}",
      capture=r"WARNING: suspicious RCU usage(?:.*\n)+?.*?{{SRC}}",
      stack=S(CALL_TRACE, TRACE, skip=("rcu", "kmem", "slab"))),
    R("WARNING: kernel stack regs at [0-9a-f]+ in [^ ]* has bad '([^']+)' value",
      "WARNING: kernel stack regs has bad '{1}' value"),
    R("WARNING: kernel stack frame pointer at [0-9a-f]+ in [^ ]* has bad value",
      "WARNING: kernel stack frame pointer has bad value"),
    R("WARNING: bad unlock balance detected!", "WARNING: bad unlock balance in {1}",
      stack=S("{{PC}} +{{FUNC}}", CALL_TRACE, TRACE)),
    R("WARNING: held lock freed!", "WARNING: held lock freed in {1}",
      capture=r"WARNING: held lock freed!(?:.*\n)+?.*at:(?: {{PC}})? +{{FUNC}}"),
    R("WARNING: kernel stack regs .* has bad 'bp' value", "WARNING: kernel stack regs has bad value"),
    R("WARNING: kernel stack frame pointer .* has bad value", "WARNING: kernel stack regs has bad value"),
    R(r"WARNING:\s*(?:\n|$)", "WARNING: corrupted", corrupted=True),
), suppress=tuple(rx(p) for p in (
    "WARNING: /etc/ssh/moduli does not exist, using fixed modulus", "WARNING: workqueue cpumask: online intersect",
    "WARNING: [Tt]he mand mount option", r"WARNING: Unsupported flag value\(s\) of 0x%x in DT_FLAGS_1",
    "WARNING: Unprivileged eBPF is enabled with eIBRS", r"WARNING: fbcon: Driver '(.*)' missed to adjust",
    "WARNING: See https.* for mitigation options.", "WARNING: kernel not compiled with CPU_SRSO",
    r"EXT4-[Ff][Ss](?: \(.*\))?:", "(?i)warning: .* uses (deprecated v2 capabilities|wireless extensions)",
    r"XFS \(\w+\): WARNING")))

def _old_lockdep(what: str, anchor: str, title: str = "possible deadlock in {1}") -> TitleRule:
    """Lockdep reports of old kernels (`INFO:` headers): blamed on the function after `anchor`'s `at:`."""
    return R(f"INFO: {what}", title, capture=rf"INFO: {what} \](?:.*\n)+?.*{anchor}(?:.*\n)+?.*at: {{{{PC}}}} +{{{{FUNC}}}}")


_RCU_STALL = S("apic_timer_interrupt", RIP, TRACE,
               fallback=("(?:apic_timer_interrupt|Exception stack|el1h_64_irq)", TRACE),
               skip=("apic_timer_interrupt", "rcu"), pick=stall_frame)

INFO = ReportKind("INFO:", name="info", severity=WARNING, line_form=_LINE_PREFIX, rules=(
    _old_lockdep("possible circular locking dependency detected", "is trying to acquire lock"),
    _old_lockdep("possible irq lock inversion dependency detected", "just changed the state of lock"),
    _old_lockdep("SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected", "is trying to acquire"),
    _old_lockdep("possible recursive locking detected", "is trying to acquire lock"),
    _old_lockdep("inconsistent lock state", "takes", "inconsistent lock state in {1}"),
    R("INFO: rcu_(?:preempt|sched|bh|tasks) (?:self-)?detected(?: expedited)? stall",
      "INFO: rcu detected stall in {1}", stack=_RCU_STALL, alt=("stall in {1}",), severity=CRASH),
    R("INFO: trying to register non-static key", "INFO: trying to register non-static key in {1}",
      stack=S(CALL_TRACE, TRACE, skip=("stack", "lock", "IRQ"))),
    R("INFO: suspicious RCU usage", "INFO: suspicious RCU usage in {2}",
      capture=r"INFO: suspicious RCU usage(?:.*\n)+?.*?{{SRC}}",
      stack=S(CALL_TRACE, TRACE, skip=("rcu", "kmem", "slab"))),
    R(r"INFO: task {{TASK}} blocked (?:in I/O wait )?for more than [0-9]+ seconds", "INFO: task hung in {1}",
      stack=S(CALL_TRACE, TRACE, pick=hang_frame), alt=("hang in {1}",), severity=CRASH),
    R("INFO: task {{TASK}} can't die for more than .* seconds", "INFO: task can't die in {1}",
      stack=S(CALL_TRACE, TRACE, skip=("schedule",)), alt=("hang in {1}",), severity=CRASH),
    R("INFO: (Freed|Allocated) in (.*)", "INFO: {1} in {2}", corrupted=True),
    R(r"INFO:\s*(?:\n|$)", "INFO: corrupted", corrupted=True),
), suppress=tuple(rx(p) for p in (
    "INFO: lockdep is turned off", "INFO: Stall ended before state dump start", "INFO: NMI handler",
    "INFO: recovery required on readonly filesystem", "(handler|interrupt).*took too long",
    "INFO: sys_.* is not present in /proc/kallsyms", "INFO: no syscalls can create resource", "rmt_storage:INFO:",
    "_INFO:")))


def _simple(header: str, name: str, *rules: TitleRule, suppress: tuple[str, ...] = (),
            severity: str = CRASH) -> ReportKind:
    return ReportKind(header, tuple(rules), severity, tuple(rx(s) for s in suppress), name)


KINDS: tuple[ReportKind, ...] = (
    BUG, WARNING_KIND, INFO,
    _simple("Unable to handle kernel", "fault",
            R("Unable to handle kernel (paging request|NULL pointer dereference|access to user memory)",
              "BUG: unable to handle kernel {1} in {2}", stack=_FAULT, alt=("bad-access in {2}",))),
    _simple("general protection fault", "gpf",
            R("general protection fault.*:", "general protection fault in {1}", stack=_FAULT,
              alt=("bad-access in {1}",)),
            suppress=(r"general protection fault .* error:\d+ in ",)),
    _simple("stack segment: ", "stack-segment", R("stack segment: ", "stack segment fault in {1}", stack=_FAULT)),
    _simple("Kernel panic", "panic",
            R("Kernel panic - not syncing: stack-protector:", "kernel panic: stack is corrupted in {1}",
              capture="Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: {{FUNC}}"),
            R("Kernel panic - not syncing: stack-protector:", "kernel panic: stack is corrupted in {1}",
              capture="Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: [a-f0-9]+",
              stack=S(CALL_TRACE, TRACE, skip=("stack_chk",))),
            R("Kernel panic - not syncing: corrupted stack end", "kernel panic: corrupted stack end in {1}",
              capture="Kernel panic - not syncing: corrupted stack end detected inside scheduler",
              stack=S(CALL_TRACE, TRACE, skip=("schedule", "retint_kernel"), pick=stall_frame),
              alt=("stack-overflow in {1}",)),
            R("Kernel panic - not syncing: kernel stack overflow", "kernel stack overflow in {1}",
              stack=S(CALL_TRACE, TRACE, skip=("bad_stack",), pick=stall_frame), alt=("stack-overflow in {1}",)),
            R("Kernel panic - not syncing: Attempted to kill init!", "kernel panic: Attempted to kill init!"),
            R("Kernel panic - not syncing: Couldn't open N_TTY ldisc for [^ ]+ --- error -[0-9]+",
              "kernel panic: Couldn't open N_TTY ldisc"),
            R("Kernel panic - not syncing: Fatal exception", "kernel panic: Fatal exception", corrupted=True,
              follow_up=True),
            R("Kernel panic - not syncing: panic_on_warn set", "kernel panic: panic_on_warn set", corrupted=True,
              follow_up=True),
            R("Kernel panic - not syncing: hung_task: blocked tasks", "kernel panic: hung_task: blocked tasks",
              corrupted=True, follow_up=True),
            R("Kernel panic - not syncing: (.*)", "kernel panic: {1}")),
    _simple("PANIC: double fault", "double-fault", R("PANIC: double fault", "PANIC: double fault in {1}",
                                                     stack=S(RIP))),
    _simple("rust_kernel: panicked", "rust-panic",
            R("rust_kernel: panicked", "{1} in {2}", capture="rust_kernel: panicked at [^\n]*?\n(.+?)\n",
              stack=S(CALL_TRACE, TRACE, skip=(re.escape("__rustc::rust_begin_unwind"),)))),
    _simple("kernel BUG", "kernel-bug",
            R("kernel BUG at mm/usercopy.c", "BUG: bad usercopy in {1}",
              stack=S(CALL_TRACE, TRACE, skip=("usercopy", "__check"))),
            R("kernel BUG at lib/list_debug.c", "BUG: corrupted list in {1}", stack=_TRACE,
              alt=("bad-access in {1}",)),
            R("kernel BUG at (.*)", "kernel BUG in {2}", stack=S(RIP, CALL_TRACE, TRACE, skip=("^skb_",)))),
    _simple("Kernel BUG", "kernel-bug", R("Kernel BUG (.*)", "kernel BUG {1}")),
    _simple("BUG kmalloc-", "slab", R("BUG kmalloc-.*: Object already free", "BUG: Object already free")),
    _simple("divide error:", "divide-error", R("divide error: ", "divide error in {1}", stack=S(RIP))),
    _simple("divide_error:", "divide-error", R("divide_error: ", "divide error in {1}", stack=S(RIP))),
    _simple("invalid opcode:", "invalid-opcode", R("invalid opcode: ", "invalid opcode in {1}", stack=S(RIP))),
    _simple("int3:", "int3", R("int3: ", "int3 in {1}", stack=_FAULT)),
    _simple("UBSAN:", "ubsan",
            R("UBSAN:", "UBSAN: undefined-behaviour in {1}", capture="UBSAN: Undefined behaviour in",
              stack=S(CALL_TRACE, TRACE, skip=("ubsan", "overflow"))),
            R("UBSAN: array-index-out-of-bounds in", "UBSAN: array-index-out-of-bounds in {1}",
              stack=S(CALL_TRACE, TRACE, skip=("ubsan", "overflow")), alt=("bad-access in {1}",)),
            R("UBSAN:", "UBSAN: {1} in {2}", capture="UBSAN: (.*?) in",
              stack=S(CALL_TRACE, TRACE, skip=("ubsan", "overflow"))),
            severity=WARNING),
    _simple("unregister_netdevice: waiting for", "netdev",
            R("unregister_netdevice: waiting for (?:.*) to become free",
              "unregister_netdevice: waiting for DEV to become free"), severity=WARNING),
    _simple("VFS: Close: file count is 0", "vfs",
            R("VFS: Close: file count is 0", "VFS: Close: file count is zero (use-after-free)"), severity=WARNING),
    _simple("VFS: Busy inodes after unmount", "vfs",
            R("VFS: Busy inodes after unmount", "VFS: Busy inodes after unmount (use-after-free)"),
            severity=WARNING),
    _simple("Internal error:", "internal-error",
            R("Internal error:", "Internal error in {1}", stack=_FAULT, alt=("bad-access in {1}",))),
    _simple("Unhandled fault:", "unhandled-fault",
            R("Unhandled fault:", "Unhandled fault in {1}", stack=_FAULT, alt=("bad-access in {1}",))),
    _simple("Alignment trap:", "alignment-trap", R("Alignment trap:", "Alignment trap in {1}", stack=_FAULT)),
    _simple("trusty: panic", "trusty",
            R("trusty: panic.* ASSERT FAILED", "trusty: ASSERT FAILED: {1}",
              capture=r"trusty: panic \(.*?\):(?: DEBUG)? ASSERT FAILED at \(.*?\): (.+)"),
            R("trusty: panic.* ASSERT FAILED.*: *(.*)", "trusty: ASSERT FAILED: {1}", corrupted=True),
            R("trusty: panic", "trusty: panic: {1}", capture=r"trusty: panic \(.*?\): (.+)")),
)

# An oops line on its own (no BUG: line before it, e.g. a console that lost it): last resort.
OOPS = ReportKind("Oops: ", (R("Oops: ", "Oops in {1}", stack=_FAULT),), CRASH, (), "oops")
KINDS = KINDS + (OOPS,)

# Lines that start a report but are usually the tail of an earlier one (not a second report).
TAIL_LINES = ("Oops: ", "Kernel panic - not syncing", "---[ end Kernel panic")
_NOT_A_SECOND_REPORT = tuple(rx(p) for p in ("Oops: ", "invalid opcode: 0000", "Kernel panic - not syncing",
                                             "unregister_netdevice: waiting for", "PANIC: double fault",
                                             "Internal error:"))
_INFO_WITH_STACK = ("vmalloc: allocation failure:", "FAULT_INJECTION: forcing a failure",
                    "FAULT_FLAG_ALLOW_RETRY missing")


# -- cutting one report out of an interleaved console ------------------------------------------
@dataclass
class Cut:
    text: str          # the report: its lines, prefixes stripped, other tasks' lines dropped
    title_end: int     # titles are looked for in text[:title_end] (before a second report starts)


def context_of(line: str) -> str:
    m = _LINE_PREFIX.search(line)
    if m is None:
        return ""
    return m.group(1) or CONSOLE


def strip_prefix(line: str, context: str) -> tuple[str, bool]:
    """(line without its timestamp/caller prefix, whether it is a frame the unwinder is unsure of)."""
    if not context:
        return line, False
    line = line[line.find("] ") + 2:]
    if "<EOI>" not in line:
        if _QUESTIONABLE.search(line):
            return line[line.find(" ? ") + 2:], True
        if line.endswith(" (unreliable)"):
            return line[:-13], True
    return line, False


def replayed_after(lines: list[str], i: int) -> bool:
    return i + 1 < len(lines) and _REPLAYED.search(lines[i + 1]) is not None


def cut_report(lines: list[str], start: int, kinds: tuple[ReportKind, ...]) -> Cut:
    """The report whose header is on lines[start]: the lines of the same task or CPU up to the end
    of the console; titles are searched only before a second report begins."""
    context = context_of(lines[start])
    out: list[str] = []
    title_end = length = 0
    second = False
    cpu_traceback = skip_text = False
    text_lines = 0
    min_lines = 16 if "BUG: KMSAN:" in lines[start] else 22
    for i in range(start, len(lines)):
        line = lines[i]
        ctx = context_of(line)
        stripped, questionable = strip_prefix(line, ctx)
        first = i == start
        if not first and not second:
            starts = [k for k in kinds if k.starts(line)]
            if starts and not replayed_after(lines, i) and not any(p.search(line) for p in _NOT_A_SECOND_REPORT):
                second = True
            elif any(p in line for p in _INFO_WITH_STACK):
                second = True
        if not first and (questionable or (ctx != context and not (cpu_traceback and _CPU_CONTEXT.search(ctx)))):
            continue
        text_lines += 1
        skip_line = skip_text
        if "Disabling lock debugging due to kernel taint" in line:
            skip_line = True
        elif "Sending NMI from CPU" in line:
            cpu_traceback = True
        elif ("Kernel panic - not syncing" in line or "WARNING: possible circular locking dependency detected" in line) \
                and text_lines > min_lines:
            skip_text = skip_line = True
        if not first and skip_line:
            continue
        out.append(stripped)
        length += len(stripped) + 1
        if not second or (context and context != CONSOLE):
            title_end = length
    text = "\n".join(out) + "\n"
    return Cut(text, min(title_end, len(text)))


def is_task_context(context: str) -> bool:
    return _TASK_CONTEXT.search(context) is not None
