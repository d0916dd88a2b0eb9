"""`harness run` and `harness list`: the matrix, expanded and booted through pytest.

`harness run` starts pytest with the harness plugin in a child process (so `-n` uses
pytest-xdist exactly as a user would) and draws a live table from the run directory: every
cell writes progress/<cell>.json and cells/<cell>.json, whichever worker runs it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from harness.errors import ConfigError
from harness.hosts.select import HOSTS
from harness.model.result import PASS
from harness.model.rundir import RunDir
from harness.model.tiers import QUICK, TIERS
from harness.model.verdict import cell_ok, known_issue_note
from harness.runner.guestfile import load_guests
from harness.runner.matrix import Cell, load_matrix, parse_shard, select_shard

PYTEST_USAGE_ERROR = 4   # pytest.ExitCode.USAGE_ERROR
OUTCOME_STYLE = {"pass": "green", "fail": "red", "gap": "magenta", "timeout": "yellow", "error": "bold red",
                 "running": "cyan", "pending": "dim"}


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="boot the matrix (pytest items, parallel with -j)")
    _matrix_args(run)
    run.add_argument("-k", dest="keyword", default=None, help="only cells whose id matches this pytest -k expression")
    run.add_argument("-j", "--jobs", default="1", help="parallel cells (an integer or 'auto')")
    run.add_argument("--report-dir", default=None, help="run directory (default: reports/<timestamp>)")
    run.add_argument("--resume", action="store_true", help="re-run only cells that did not pass in --report-dir "
                     "(default: the newest run under reports/)")
    run.add_argument("--repeat", type=int, default=1, help="boot each cell N times (median and spread)")
    run.add_argument("--retry-failures", type=int, default=0, metavar="N",
                     help="boot a cell that failed up to N more times: a later pass marks it flaky, "
                          "failing every try confirms a regression")
    run.add_argument("--online", action="store_true", help="allow downloads of missing assets during the run")
    run.add_argument("--dry-run", action="store_true", help="print the cells that would run, boot nothing")
    run.add_argument("--no-live", action="store_true", help="plain progress lines instead of the live table")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="show the expanded matrix")
    _matrix_args(lst)
    lst.set_defaults(func=cmd_list)


def _matrix_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--matrix", default="matrix.yaml", help="matrix file (default: matrix.yaml)")
    p.add_argument("--guests", default=None, help="guest directory (default: guests/ beside the matrix)")
    p.add_argument("--tier", default=QUICK, choices=tuple(TIERS), help="quick, or nightly (= all)")
    p.add_argument("--shard", default=None, help="K/N: only shard K of N (stable hash of the cell id)")
    p.add_argument("--host", default=None, choices=HOSTS,
                   help="run every built-in cell on this host (native, lab, auto), replacing the matrix's hosts")


def expand(args: argparse.Namespace) -> list[Cell]:
    matrix_path = Path(args.matrix)
    guests = load_guests(Path(args.guests) if args.guests else matrix_path.parent / "guests")
    matrix = load_matrix(matrix_path, guests)
    matrix.host_override = args.host
    if args.shard:
        parse_shard(args.shard)
    return select_shard(matrix.cells(guests, args.tier), args.shard)


def cmd_list(args: argparse.Namespace) -> int:
    cells = expand(args)
    table = Table(title=f"{args.matrix}: {len(cells)} cells (tier {args.tier}{', shard ' + args.shard if args.shard else ''})")
    table.add_column("cell", no_wrap=True)
    for col in ("family", "boot", "backend", "host", "cpu profile", "gap policy", "vCPUs", "MiB", "tier", "expect"):
        table.add_column(col)
    for c in cells:
        table.add_row(c.id, c.guest.family, c.guest.boot, c.backend, c.host, c.cpu_profile, c.gap_policy, str(c.vcpus),
                      str(c.memory), c.tier, c.expect)
    console = Console()
    if not console.is_terminal:   # piped: never cut cell ids to an 80-column guess
        console = Console(width=220)
    console.print(table)
    return 0


def pytest_argv(args: argparse.Namespace, run_dir: Path, collect_only: bool = False) -> list[str]:
    # Only the plugins a run needs: whatever else is installed (hypothesis's plugin alone costs ~2 s
    # of start-up per worker) stays out, so runs are fast and the same on every machine.
    argv = [sys.executable, "-m", "pytest", "-p", "xdist.plugin", "-p", "harness.runner.plugin",
            "-p", "harness.report.plugin", str(args.matrix),
            "--harness-run-dir", str(run_dir), "--harness-tier", args.tier, "-o", "testpaths=",
            "--rootdir", str(Path(args.matrix).resolve().parent), "-p", "no:cacheprovider"]
    if args.guests:
        argv += ["--harness-guests", args.guests]
    if args.shard:
        argv += ["--harness-shard", args.shard]
    if getattr(args, "host", None):
        argv += ["--harness-host", args.host]
    if args.keyword:
        argv += ["-k", args.keyword]
    if collect_only:
        return argv + ["--collect-only", "-q"]
    jobs = str(args.jobs)
    if jobs not in ("1", "0"):
        argv += ["-n", jobs, "--dist", "worksteal"]
    if args.resume:
        argv.append("--harness-resume")
    if args.repeat > 1:
        argv += ["--harness-repeat", str(args.repeat)]
    if args.retry_failures > 0:
        argv += ["--harness-retry-failures", str(args.retry_failures)]
    if args.online:
        argv.append("--harness-online")
    argv += ["--junitxml", str(run_dir / "pytest-junit.xml"), "-q", "-rN"]
    return argv


def cmd_run(args: argparse.Namespace) -> int:
    cells = expand(args)  # validates the matrix with one-line errors before anything starts
    if not cells and args.shard and not args.dry_run:
        return _empty_shard(args)
    if not cells:
        raise ConfigError(f"{args.matrix}: no cells in tier {args.tier}" + (f" shard {args.shard}" if args.shard else ""),
                          "check the matrix entries, --tier and --shard")
    cells = select_keyword(args, cells)
    if args.dry_run:
        return _dry_run(cells)
    run_dir = _run_dir(args)
    argv = pytest_argv(args, run_dir)
    log_path = run_dir / "pytest.log"
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    console = Console()
    if not console.is_terminal:   # CI logs: one line per cell, not wrapped at a guessed 80 columns
        console = Console(width=200)
    console.print(f"[bold]harness run[/]: {len(cells)} cells, {args.jobs} job(s) -> {run_dir}")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        live = not args.no_live and console.is_terminal
        _follow(proc, run_dir, cells, console, live)
    RunDir(run_dir).link_latest()
    results = {r.cell_id: r for r in RunDir(run_dir).results()}
    _print_summary(console, run_dir, results, proc.returncode)
    everything_passed = proc.returncode == 0 and results and all(cell_ok(r) for r in results.values())
    if proc.returncode not in (0, 1):
        console.print(f"[red]pytest exited with {proc.returncode}; see {log_path}[/]")
    return 0 if everything_passed else 1


def select_keyword(args: argparse.Namespace, cells: list[Cell]) -> list[Cell]:
    """The cells a `-k` expression selects, with pytest's exact semantics (pytest itself is asked)."""
    if not args.keyword:
        return cells
    with tempfile.TemporaryDirectory(prefix="harness-select-") as scratch:
        out = subprocess.run(pytest_argv(args, Path(scratch), collect_only=True), capture_output=True, text=True,
                             env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    if out.returncode == PYTEST_USAGE_ERROR:   # pytest lists every item before it rejects a bad -k
        said = [l for l in (out.stderr + out.stdout).splitlines() if "expression" in l or l.startswith("ERROR")]
        raise ConfigError(f"-k {args.keyword!r} is not a valid expression: "
                          f"{(said[-1] if said else out.stderr.strip()).removeprefix('ERROR: ')}",
                          "use pytest -k syntax: words joined by and/or/not, e.g. -k 'fixture-pvh and gp'")
    ids = {l.split("::", 1)[1] for l in out.stdout.splitlines() if "::" in l}
    selected = [c for c in cells if c.id in ids]
    if not selected:
        raise ConfigError(f"-k {args.keyword!r} selects no cell", "check the expression against `harness list`")
    return selected


def _empty_shard(args: argparse.Namespace) -> int:
    """A shard the stable hash gave no cell: an empty, finished run (a CI merge job still finds it)."""
    import datetime as dt

    from harness.report import write_reports
    from harness.runner.plugin import host_summary
    from harness.model.files import write_json_atomic
    run_dir = _run_dir(args)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(run_dir / "run.json", {"schema_version": 1, "run_id": run_dir.name, "matrix": str(args.matrix),
                                             "tier": args.tier, "shard": args.shard, "repeat": args.repeat,
                                             "cells_selected": 0, "started_at": now, "finished_at": now,
                                             "host": host_summary(), "argv": sys.argv})
    write_reports(run_dir)
    print(f"harness run: shard {args.shard} holds no cell of {args.matrix} (tier {args.tier}); empty run in {run_dir}")
    return 0


def _dry_run(cells: list[Cell]) -> int:
    for c in cells:
        print(c.id)
    print(f"{len(cells)} cells (dry run: nothing booted)")
    return 0


def _run_dir(args: argparse.Namespace) -> Path:
    if args.report_dir:
        path = Path(args.report_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    if args.resume:
        latest = RunDir.newest()
        if latest is None:
            raise ConfigError("--resume: no previous run under reports/", "give --report-dir RUN")
        return latest.path
    return RunDir.create().path


def _follow(proc: subprocess.Popen, run_dir: Path, cells: list[Cell], console: Console, live: bool) -> None:
    """Show progress until pytest exits: a rich live table on a terminal, one line per cell otherwise."""
    start = time.monotonic()
    if live:
        with Live(_table(run_dir, cells, start), console=console, refresh_per_second=4) as view:
            while proc.poll() is None:
                time.sleep(0.25)
                view.update(_table(run_dir, cells, start))
            view.update(_table(run_dir, cells, start))
        return
    printed: set[str] = set()
    while True:
        done = proc.poll() is not None
        for r in RunDir(run_dir).results():
            if r.cell_id not in printed:
                printed.add(r.cell_id)
                console.print(f"[{OUTCOME_STYLE.get(r.outcome, '')}]{r.outcome:>7}[/] {r.cell_id} "
                              f"({r.duration_s:.1f} s) {'' if r.outcome == PASS else r.reason}", highlight=False)
        if done:
            return
        time.sleep(0.5)


def _table(run_dir: Path, cells: list[Cell], start: float) -> Table:
    progress = RunDir(run_dir).progress()
    results = {r.cell_id: r for r in RunDir(run_dir).results()}
    counts: dict[str, int] = {}
    table = Table(title=f"{run_dir}  elapsed {time.monotonic() - start:.0f} s", expand=False)
    for col in ("cell", "backend", "state", "milestone", "elapsed", "gaps"):
        table.add_column(col)
    for c in cells:
        r = results.get(c.id)
        p = progress.get(c.id, {})
        if r:
            state, milestone = r.outcome, (r.milestones[-1].name if r.milestones else "-")
            elapsed, gaps = f"{r.duration_s:.1f}", str(len(r.gaps))
        elif p:
            state, milestone = "running", p.get("milestone") or "-"
            elapsed, gaps = f"{p.get('elapsed', 0):.1f}", str(p.get("gaps", 0))
        else:
            state, milestone, elapsed, gaps = "pending", "", "", ""
        counts[state] = counts.get(state, 0) + 1
        style = OUTCOME_STYLE.get(state, "")
        table.add_row(c.guest.name + " " + c.id.split("/", 1)[1], c.backend, f"[{style}]{state}[/]", milestone,
                      elapsed, gaps)
    table.caption = "  ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    return table


def _print_summary(console: Console, run_dir: Path, results: dict, returncode: int) -> None:
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    console.print("summary: " + ", ".join(f"[{OUTCOME_STYLE.get(k, '')}]{v} {k}[/]" for k, v in sorted(counts.items()))
                  + f" ({len(results)} cells)")
    for r in sorted(results.values(), key=lambda r: r.cell_id):
        if r.outcome != PASS:
            note = known_issue_note(r) or ("expected" if cell_ok(r) else "UNEXPECTED")
            culprit = f" [culprit: {r.culprit['party']}]" if isinstance(r.culprit, dict) else ""
            console.print(f"  [{OUTCOME_STYLE.get(r.outcome, '')}]{r.outcome}[/] ({escape(note)}) {escape(r.cell_id)}: "
                          f"{escape(r.reason)}{escape(culprit)}", highlight=False)
    for name in ("index.html", "results.json", "junit.xml", "summary.md"):
        if (run_dir / name).exists():
            console.print(f"  {name}: {run_dir / name}")
