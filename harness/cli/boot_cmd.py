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
from harness.errors import ConfigError
from harness.hosts.select import HOSTS, LAB_BACKENDS, can_run, resolve_host
from harness.model.gap import GAP_POLICIES
from harness.model.guest import Milestone
from harness.model.result import PASS, TIMEOUT, CellResult
from harness.model.rundir import RunDir, reports_base
from harness.runner.execute import RunOptions, run_cell
from harness.runner.guest_shell import AutoLogin, commands_from_words
from harness.runner.guestfile import BOOT_METHODS, GuestSpec
from harness.runner.matrix import CPU_PROFILES, Cell

# An --expect-less boot watches until the guest stops or --timeout: nothing can match this.
_NEVER = r"(?!x)x"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("boot", help="boot one kernel on a backend and stream its console")
    p.add_argument("kernel", help="kernel image (bzImage, PVH ELF, multiboot ELF, BSD kernel; .gz accepted)")
    p.add_argument("--initrd", default=None)
    p.add_argument("--cmdline", default="console=ttyS0")
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
    p.add_argument("--family", default="other", help="OS family for built-in failure patterns")
    p.add_argument("--report-dir", default=None, help="where to keep console log and result")
    p.add_argument("--quiet", action="store_true", help="do not stream the console")
    p.add_argument("--login", metavar="USER", default=None,
                   help="after the last --expect (default 'login:'), log in as USER and run the command after --")
    p.add_argument("--password", default="", help="password for --login")
    p.add_argument("--prompt", default=r"[#$] $", help="regex of the shell prompt after logging in")
    # `harness boot K --login root -- uname -a`: harness.cli.main hands the words after `--` over
    p.set_defaults(func=cmd_boot, guest_command=[])


def cmd_boot(args: argparse.Namespace) -> int:
    kernel = Path(args.kernel)
    if not kernel.is_file():
        raise ConfigError(f"kernel {kernel} does not exist", "give the path of a kernel image")
    if args.initrd and not Path(args.initrd).is_file():
        raise ConfigError(f"initrd {args.initrd} does not exist", "give the path of an initrd")
    boot = args.boot
    if boot == "auto" and args.backend == "builtin":
        from harness.boot import detect_method
        boot = detect_method(kernel)
    commands = commands_from_words(args.guest_command)
    if commands and args.login is None:
        raise ConfigError("a command after -- needs --login USER", "e.g. harness boot K --login root -- uname -a")
    expects = list(args.expect) or (["login:"] if args.login is not None else [])
    milestones = [Milestone(f"expect{i + 1}", rx, args.timeout) for i, rx in enumerate(expects)]
    guest = GuestSpec(name=kernel.name, path=kernel, family=args.family, arch="x86_64", boot=boot,
                      milestones=milestones or [Milestone("end", _NEVER, args.timeout)],
                      kernel={"path": str(kernel.resolve())},
                      initrd={"path": str(Path(args.initrd).resolve())} if args.initrd else None,
                      cmdline=args.cmdline, memory=args.memory, vcpus=args.vcpus,
                      hang_timeout=args.timeout,
                      auto_login=AutoLogin(args.login, args.password, args.prompt) if args.login is not None else None,
                      commands=commands)
    host = resolve_host(args.host, args.backend)
    if not can_run(host, args.backend):
        raise ConfigError(f"backend {args.backend} cannot run on host {host}",
                          f"use --backend {' or '.join(LAB_BACKENDS)} with --host lab")
    cell = Cell(guest, args.backend, args.cpu_profile, args.gap_policy, args.vcpus, args.memory, "adhoc", retries=0,
                host=host)
    run_dir = Path(args.report_dir) if args.report_dir else RunDir.create(reports_base() / "boot").path
    echo = None if args.quiet else _echo
    result = run_cell(cell, RunOptions(run_dir=run_dir, echo=echo))
    _summary(result, run_dir, bool(expects))
    if not expects:
        return 0 if result.outcome == TIMEOUT and result.failure is None else 1
    return 0 if result.outcome == PASS else 1


def _echo(chunk: bytes) -> None:
    os.write(sys.stdout.fileno(), chunk)


def _summary(result: CellResult, run_dir: Path, had_expect: bool) -> None:
    console = Console(stderr=True)
    console.print()
    console.rule(f"{result.outcome.upper()}: {result.reason}")
    if result.milestones:
        t = Table("milestone", "t (s)", "since previous (s)", "line", title="milestones")
        for m in result.milestones:
            t.add_row(m.name, f"{m.t:.3f}", f"{m.since_previous:.3f}", m.line[:80])
        console.print(t)
    if result.near_miss and had_expect:
        nm = result.near_miss
        console.print(f"near miss: waiting for /{nm.pattern}/; closest line ({nm.closest_ratio:.0%}): {nm.closest_line}")
    if result.gaps:
        t = Table("kind", "key", "count", "first rip", "phase", "policy", "fate", title="emulation gaps")
        for g in result.gaps:
            rip = g.get("first_rip")
            t.add_row(g["kind"], g["key"], str(g["count"]), hex(rip) if isinstance(rip, int) else "-",
                      str(g.get("phase") or "-"), g.get("policy") or "-", g.get("fate") or "-")
        console.print(t)
    for c in result.commands:
        console.print(escape(f"$ {c['command']}  [exit {c['exit_status']}]")
                      + (f"  [red]{escape('; '.join(c['problems']))}[/]" if c["problems"] else ""), highlight=False)
        console.print(c["output"], markup=False, highlight=False)
    if result.exit_counts:
        console.print("exits: " + ", ".join(f"{k}={v}" for k, v in sorted(result.exit_counts.items(),
                                                                        key=lambda kv: -kv[1])))
    if result.flight_recorder:
        console.print(f"flight recorder: last {len(result.flight_recorder)} exits in the result file")
    console.print(f"result: {run_dir / 'cells'}  console: {run_dir / result.console_log}")
