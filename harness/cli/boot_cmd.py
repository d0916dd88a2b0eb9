"""`harness boot KERNEL`: one guest, console streamed live, a summary, exit 0 only if every --expect matched.

It is the same path as a matrix cell (an ad-hoc GuestSpec run through harness.runner.execute),
so what an engineer sees locally is what CI records.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.backends.registry import KERNEL_BACKENDS
from harness.console.interactive import InteractiveConsole
from harness.errors import ConfigError
from harness.hosts.select import HOSTS, LAB_BACKENDS, can_run, resolve_host
from harness.model.gap import GAP_POLICIES
from harness.model.guest import FailurePattern, Milestone
from harness.model.result import PASS, TIMEOUT, CellResult
from harness.model.rundir import RunDir, reports_base
from harness.runner.execute import RunOptions, run_cell
from harness.runner.guest_shell import AutoLogin, commands_from_words
from harness.runner.guestfile import BOOT_METHODS, GuestSpec
from harness.runner.matrix import CPU_PROFILES, Cell

DEFAULT_CONSOLE = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}
# An --expect-less boot watches until the guest stops or --timeout: nothing can match this.
_NEVER = r"(?!x)x"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("boot", help="boot one kernel on a backend and stream its console")
    p.add_argument("kernel", help="kernel image (bzImage, PVH ELF, multiboot ELF, BSD kernel; .gz accepted)")
    p.add_argument("--initrd", default=None)
    p.add_argument("--disk", default=None, help="disk image (never written: a copy-on-write overlay takes writes)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a built-in backend option (guest file `builtin:` key), YAML value; repeatable, "
                        "e.g. --option acpi=false --option 'virtio_devices=[blk, rng]'")
    p.add_argument("--cmdline", default=None,
                   help="kernel command line (default: the architecture's console, console=ttyS0 / ttyAMA0)")
    p.add_argument("--memory", type=int, default=256, help="MiB")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--boot", default="auto", choices=BOOT_METHODS, help="boot protocol (default: detect)")
    p.add_argument("--backend", default="builtin", choices=KERNEL_BACKENDS)
    p.add_argument("--host", default="native", choices=HOSTS,
                   help="where the VMM child runs: this machine's /dev/kvm, the nested lab, or auto")
    p.add_argument("--cpu-profile", default="default", choices=CPU_PROFILES)
    p.add_argument("--gap-policy", default="emulate", choices=tuple(GAP_POLICIES))
    p.add_argument("--expect", action="append", default=[], metavar="REGEX",
                   help="a console pattern to wait for, in order (repeatable)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed for each expected pattern")
    p.add_argument("--hang-timeout", type=float, default=None,
                   help="seconds of console silence that count as a hang (default: --timeout)")
    p.add_argument("--failure", action="append", default=[], metavar="NAME=REGEX",
                   help="a console pattern that fails the boot, beside the family's (repeatable)")
    p.add_argument("--family", default="other", help="OS family for built-in failure patterns")
    add_debug_arguments(p)
    p.add_argument("--report-dir", default=None, help="where to keep console log and result")
    p.add_argument("--quiet", action="store_true", help="do not stream the console")
    p.add_argument("--login", metavar="USER", default=None,
                   help="after the last --expect (default 'login:'), log in as USER and run the command after --")
    p.add_argument("--password", default="", help="password for --login")
    p.add_argument("--prompt", default=r"[#$] $", help="regex of the shell prompt after logging in")
    # `harness boot K --login root -- uname -a`: harness.cli.main hands the words after `--` over
    p.add_argument("--interactive", action="store_true",
                   help="the guest console is this terminal (raw mode); Ctrl-] detaches and stops the guest")
    p.set_defaults(func=cmd_boot, guest_command=[])


def cmd_boot(args: argparse.Namespace) -> int:
    kernel = Path(args.kernel)
    if not kernel.is_file():
        raise ConfigError(f"kernel {kernel} does not exist", "give the path of a kernel image")
    if args.initrd and not Path(args.initrd).is_file():
        raise ConfigError(f"initrd {args.initrd} does not exist", "give the path of an initrd")
    if args.disk and not Path(args.disk).is_file():
        raise ConfigError(f"disk {args.disk} does not exist", "give the path of a disk image")
    host = resolve_host(args.host, args.backend)
    if not can_run(host, args.backend):
        raise ConfigError(f"backend {args.backend} cannot run on host {host}",
                          f"use --backend {' or '.join(LAB_BACKENDS)} with --host lab")
    from harness.boot.archdetect import detect_arch
    arch = detect_arch(kernel)
    boot = _boot_method(args.boot, arch, args.backend, kernel)
    cmdline = args.cmdline if args.cmdline is not None else f"console={DEFAULT_CONSOLE[arch]}"
    commands = commands_from_words(args.guest_command)
    if commands and args.login is None:
        raise ConfigError("a command after -- needs --login USER", "e.g. harness boot K --login root -- uname -a")
    expects = list(args.expect) or (["login:"] if args.login is not None else [])
    milestones = [Milestone(f"expect{i + 1}", rx, args.timeout) for i, rx in enumerate(expects)]
    guest = GuestSpec(name=kernel.name, path=kernel, family=args.family, arch=arch, boot=boot,
                      milestones=milestones or [Milestone("end", _NEVER, args.timeout)],
                      kernel={"path": str(kernel.resolve())},
                      initrd={"path": str(Path(args.initrd).resolve())} if args.initrd else None,
                      disk={"path": str(Path(args.disk).resolve())} if args.disk else None,
                      cmdline=cmdline, memory=args.memory, vcpus=args.vcpus,
                      failures=[_failure(text) for text in args.failure],
                      hang_timeout=args.hang_timeout or args.timeout, builtin=builtin_options(args.option),
                      auto_login=AutoLogin(args.login, args.password, args.prompt) if args.login is not None else None,
                      commands=commands)
    cell = Cell(guest, args.backend, args.cpu_profile, args.gap_policy, args.vcpus, args.memory, "adhoc", retries=0,
                host=host)
    run_dir = Path(args.report_dir) if args.report_dir else RunDir.create(reports_base() / "boot").path
    echo = None if args.quiet and not args.interactive else _echo
    console = InteractiveConsole() if args.interactive else None
    try:
        result = run_cell(cell, RunOptions(run_dir=run_dir, echo=echo, console=console, **debug_run_options(args)))
    finally:
        if console is not None:
            console.close()       # the terminal is restored whatever happened
    _summary(result, run_dir, bool(expects))
    if not expects:
        return 0 if result.outcome == TIMEOUT and result.failure is None else 1
    return 0 if result.outcome == PASS else 1


def add_debug_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("debugging (builtin: its own gdb stub; qemu-*: QEMU's -gdb/-S)")
    g.add_argument("--gdb", default=None, metavar="[HOST:]PORT",
                   help="serve the GDB remote protocol on PORT (loopback unless HOST is given; 0: any free port)")
    g.add_argument("--gdb-wait", action="store_true", help="hold the first instruction until gdb attaches and continues")
    g.add_argument("--gdb-on-failure", action="store_true",
                   help="keep a failed guest (triple fault, emulation failure, panic, hang) stopped for gdb")


def debug_run_options(args: argparse.Namespace) -> dict:
    """RunOptions fields for the debug flags: what the backend gets, and where its messages go."""
    from harness.backends.debugopts import DebugOptions, parse_listen
    if args.gdb is not None:
        parse_listen(args.gdb)                 # a bad address is a one-line error now, not in the child
    debug = DebugOptions(listen=args.gdb, wait=args.gdb_wait, on_failure=args.gdb_on_failure)
    return {"debug": debug.to_options(), "notify": _notify, "progress": _announce_gdb}


def _notify(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _announce_gdb(info: dict) -> None:
    if "gdb" in info:
        _notify(f"gdb stub on {info['gdb']}: gdb -ex 'target remote {info['gdb']}' KERNEL-WITH-SYMBOLS")


def _failure(text: str) -> FailurePattern:
    name, sep, pattern = text.partition("=")
    if not sep or not name or not pattern:
        raise ConfigError(f"--failure {text!r} is not NAME=REGEX", "write e.g. --failure 'panic=^panic: '")
    return FailurePattern(name, pattern)


def builtin_options(pairs: list[str]) -> dict:
    """--option KEY=VALUE pairs -> the guest file's `builtin:` mapping (values parsed as YAML)."""
    import yaml

    from harness.model.builtin_options import BUILTIN_OPTIONS, option_problem
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in BUILTIN_OPTIONS:
            raise ConfigError(f"bad --option {pair!r}", f"use KEY=VALUE with KEY one of: {', '.join(BUILTIN_OPTIONS)}")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"bad --option {pair!r}: the value is not YAML", "quote it, e.g. --option 'acpi_omit=[fadt]'") from None
        bad = option_problem(key, options[key])
        if bad:
            raise ConfigError(f"--option {bad[0]}", bad[1])
    return options


def _boot_method(requested: str, arch: str, backend: str, kernel: Path) -> str:
    """`--boot auto`: what the kernel file says, for the architecture it is built for. QEMU boots
    every aarch64 kernel file as a Linux-style Image (-kernel)."""
    if requested != "auto":
        return requested
    if arch == "aarch64":
        if backend != "builtin":
            return "image"
        from harness.boot.arm64 import detect_aarch64_method
        from harness.boot.image import read_kernel_any_arch
        return detect_aarch64_method(read_kernel_any_arch(kernel, 512 << 20), kernel.name)
    if backend == "builtin":
        from harness.boot import detect_method
        return detect_method(kernel)
    return requested


def _echo(chunk: bytes) -> None:
    os.write(sys.stdout.fileno(), chunk)


def _summary(result: CellResult, run_dir: Path, had_expect: bool) -> None:
    console = Console(stderr=True)
    console.print()
    console.rule(f"{result.outcome.upper()}: {escape(result.reason)}")   # guest text is no markup
    if result.milestones:
        t = Table("milestone", "t (s)", "since previous (s)", "line", title="milestones")
        for m in result.milestones:
            t.add_row(escape(m.name), f"{m.t:.3f}", f"{m.since_previous:.3f}", escape(m.line[:80]))
        console.print(t)
    if result.near_miss and had_expect:
        nm = result.near_miss
        console.print(f"near miss: waiting for /{nm.pattern}/; closest line ({nm.closest_ratio:.0%}): {nm.closest_line}",
                      markup=False, highlight=False)
    if result.gaps:
        t = Table("kind", "key", "count", "first rip", "phase", "policy", "fate", title="emulation gaps")
        for g in result.gaps:
            rip = g.get("first_rip")
            t.add_row(*(escape(str(x)) for x in (g["kind"], g["key"], g["count"],
                                                 hex(rip) if isinstance(rip, int) else "-", g.get("phase") or "-",
                                                 g.get("policy") or "-", g.get("fate") or "-")))
        console.print(t)
    if result.crash is not None:
        console.print(f"crash: {result.crash.title}", markup=False, highlight=False)
    for w in result.warnings:
        new = " (new)" if w.title in result.warning_diff.new else ""
        console.print(f"warning: {w.title}{new}", markup=False, highlight=False)
    for c in result.commands:
        console.print(escape(f"$ {c['command']}  [exit {c['exit_status']}]")
                      + (f"  [red]{escape('; '.join(c['problems']))}[/]" if c["problems"] else ""), highlight=False)
        console.print(c["output"], markup=False, highlight=False)
    if result.exit_counts:
        console.print("exits: " + ", ".join(f"{k}={v}" for k, v in sorted(result.exit_counts.items(),
                                                                        key=lambda kv: -kv[1])))
    for state in result.vcpus:
        where = (state.get("registers") or {}).get("rip", "?")
        console.print(f"vCPU {state.get('vcpu')}: rip {where}  {(state.get('insn') or {}).get('text') or state.get('error', '')}")
    if result.flight_recorder:
        console.print(f"flight recorder: last {len(result.flight_recorder)} exits in the result file")
    console.print(f"result: {run_dir / 'cells'}  console: {run_dir / result.console_log}")
