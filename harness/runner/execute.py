"""Run one cell: resolve assets -> start the backend -> watch the console -> build the result.

This is the whole data flow of a cell in one place:
  Cell --resolve--> BootRequest --backend.start--> BackendSession
       --ConsoleStream + EventReader--> ConsoleWatcher --> WatchOutcome
       --session.stop--> SessionSummary --ledger/profile--> CellResult --atomic write--> cells/<slug>.json
Only infrastructure errors (`error`) are retried, up to the cell's retry count.
"""
from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.backends.debugopts import QEMU_DEFAULT_PORT, DebugOptions
from harness.backends.registry import get_backend
from harness.console.patterns import banner_pattern, failure_patterns
from harness.console.stream import ConsoleStream
from harness.console.watcher import ConsoleWatcher, WatchConfig, WatchOutcome
from harness.errors import HarnessError
from harness.gaps.culprit import classify
from harness.model import events as ev
from harness.model.gap import GapRecord
from harness.model.guest import CommandResult
from harness.model.repro import host_kind
from harness.model.result import ERROR, FAIL, PASS, CellResult, Failure
from harness.model.rundir import RunDir, repeat_id
from harness.model.session import BootRequest, SessionSummary
from harness.model.tries import Try
from harness.runner.crash_report import add_console_reports
from harness.runner.guest_shell import after_prompt, apply_commands
from harness.runner.matrix import Cell
from harness.runner.repro_record import keep_guest_file, repro_record
from harness.runner.tries import another_try

Progress = Callable[[dict], None]


@dataclass
class RunOptions:
    run_dir: Path
    offline: bool = True
    echo: Callable[[bytes], None] | None = None     # live console (harness boot)
    repeat_index: int = 0
    progress: Progress | None = None
    keep_workdir: bool = True
    extra_events: list[Any] = field(default_factory=list)
    failure_retries: int = 0          # boot an unexpected failure again, up to this many times (flakes)
    gap_overrides: dict[str, str] = field(default_factory=dict)   # built-in: MSR index -> policy (bisection)
    commands: list[Any] | None = None  # commands to run after the prompt, instead of the guest file's
    # role -> sha256 the assets must have (harness repro): a different copy is refused, not booted
    pinned_assets: dict[str, str] = field(default_factory=dict)
    pinned_commit: str | None = None       # the harness commit that ran the recorded cell (built its fixtures)
    debug: dict[str, Any] = field(default_factory=dict)   # DebugOptions.to_options(): --gdb, --gdb-wait, ...
    notify: Callable[[str], None] | None = None          # one-line messages for the person at the terminal
    console: Any = None          # harness.console.interactive.InteractiveConsole: the terminal is the guest's


def run_cell(cell: Cell, options: RunOptions) -> CellResult:
    """Boot one cell, retrying infrastructure errors (and failures, if asked); write and return its result."""
    tries: list[Try] = []
    while True:
        result = _attempt(cell, options, len(tries) + 1)
        tries.append(Try.of(result))
        if not another_try(tries, result, cell.retries, options.failure_retries):
            break
        _keep_try(options.run_dir, cell, options.repeat_index, tries)
        _progress(options, cell, {"retrying": len(tries), "reason": result.reason})
    result.attempts, result.tries = len(tries), [t.to_json() for t in tries]
    if cell.known_issue is not None:
        result.known_issue = cell.known_issue.to_json()
    culprit = classify(result)
    result.culprit = culprit.to_json() if culprit else None
    RunDir(options.run_dir).write_result(result)
    _progress(options, cell, {"done": True, "outcome": result.outcome})
    return result


def _keep_try(run_dir: Path, cell: Cell, repeat_index: int, tries: list[Try]) -> None:
    """Move the last try's work directory aside (`<cell>-tryK`) so the next try starts clean and both stay."""
    src = RunDir(run_dir).workdir(cell.id, repeat_index)
    dst = src.with_name(f"{src.name}-try{len(tries)}")
    if dst.exists():
        shutil.rmtree(dst)
    if src.exists():
        src.rename(dst)
        tries[-1].console_log = str((dst / "console.log").relative_to(run_dir))


def _attempt(cell: Cell, options: RunOptions, attempt: int) -> CellResult:
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    wall_start = time.monotonic()
    result_id = repeat_id(cell.id, options.repeat_index)
    workdir = RunDir(options.run_dir).workdir(cell.id, options.repeat_index)
    if workdir.exists():
        shutil.rmtree(workdir)           # a retried or resumed cell starts clean
    workdir.mkdir(parents=True)
    result = CellResult(cell_id=result_id, guest=cell.guest.name, backend=cell.backend, params=cell.params(),
                        outcome=ERROR, started_at=started, repeat_index=options.repeat_index,
                        expected_milestones=[m.name for m in cell.guest.milestones],
                        console_log=str((workdir / "console.log").relative_to(options.run_dir)))
    if options.gap_overrides and cell.backend == "builtin":
        result.params["gap_overrides"] = dict(options.gap_overrides)
    guest_copy = keep_guest_file(cell.guest, workdir)
    result.repro = repro_record(cell, guest_copy, options.run_dir, _cmdline(cell))
    try:
        request, provenance = _boot_request(cell, workdir, options)
        result.provenance = provenance
        result.repro["assets"] = {role: p["sha256"] for role, p in provenance.items()}
        backend = get_backend(cell.backend, cell.host)
        backend.check(request)
        session = backend.start(request)   # a lab that cannot start is infrastructure too
    except HarnessError as e:
        result.reason = e.problem + (f" — {e.fix}" if e.fix else "")
        result.failure = Failure("infrastructure", result.reason)
        result.duration_s = round(time.monotonic() - wall_start, 3)
        return result
    try:
        if options.console is not None:
            options.console.attach(session)
        watch, summary, commands = _watch(cell, session, request, options)
    finally:
        if options.console is not None:
            options.console.close()
    result.duration_s = round(time.monotonic() - wall_start, 3)
    _fill(result, cell, watch, summary, session.start_time, request.workdir / "console.log")
    if commands:
        apply_commands(result, commands)
    return result


def _boot_request(cell: Cell, workdir: Path, options: RunOptions) -> tuple[BootRequest, dict[str, Any]]:
    from harness.assets.pinned import resolve_pinned
    from harness.assets.sources import resolve
    guest = cell.guest
    paths: dict[str, Path | None] = {}
    provenance: dict[str, Any] = {}
    for key in ("kernel", "initrd", "disk", "firmware"):
        source = getattr(guest, key)
        if source is None:
            paths[key] = None
            continue
        pinned = options.pinned_assets.get(key)
        asset = (resolve_pinned(source, role=key, guest=guest.name, sha256=pinned, offline=options.offline,
                                commit=options.pinned_commit)
                 if pinned else resolve(source, guest=guest.name, offline=options.offline))
        paths[key] = asset.path
        provenance[key] = {"path": str(asset.path), "sha256": asset.sha256, **asset.provenance}
    cmdline = _cmdline(cell)
    options_ = dict(guest.builtin if cell.backend == "builtin" else guest.qemu)
    if options.gap_overrides and cell.backend == "builtin":
        options_["gap_overrides"] = dict(options.gap_overrides)
    if paths["firmware"]:
        options_["firmware"] = str(paths["firmware"])
    options_.update(options.debug)
    request = BootRequest(cell_id=cell.id, guest=guest.name, family=guest.family, arch=guest.arch,
                          boot=guest.boot, kernel=paths["kernel"], initrd=paths["initrd"], disk=paths["disk"],
                          cmdline=cmdline, memory_mib=cell.memory, vcpus=cell.vcpus, cpu_profile=cell.cpu_profile,
                          gap_policy=cell.gap_policy, workdir=workdir, options=options_)
    return request, provenance


def _cmdline(cell: Cell) -> str:
    return " ".join(x for x in (cell.guest.cmdline, cell.cmdline_append) if x)


def _watch(cell: Cell, session: Any, request: BootRequest,
           options: RunOptions) -> tuple[WatchOutcome, SessionSummary, list[CommandResult]]:
    guest = cell.guest
    banner = guest.banner or banner_pattern(guest.family)
    stream = ConsoleStream(session.console_fd, request.workdir / "console.log", session.start_time, options.echo,
                           banner=banner)
    config = WatchConfig(milestones=guest.milestones,
                         failures=failure_patterns(guest.family) + [(f.name, f.pattern) for f in guest.failures],
                         dialogs=guest.dialogs, keepalive=guest.keepalive,
                         hang_timeout=cell.hang_timeout or guest.hang_timeout,
                         banner=banner, timeout_scale=cell.timeout_scale, family=guest.family,
                         settle=guest.settle, warnings=guest.warnings,
                         detached=options.console.detached if options.console is not None else None)
    reader = ev.EventReader(request.events_path)
    watcher = ConsoleWatcher(session, stream, reader, config,
                             progress=lambda info: _progress(options, cell, info))
    try:
        watch = watcher.run()
    except Exception as e:  # a bug in matching must not lose the cell: record it as infrastructure
        watch = WatchOutcome(ERROR, f"console watcher crashed: {type(e).__name__}: {e}", watcher.hits,
                             failure=Failure("harness-bug", repr(e)))
    if watch.outcome != PASS and DebugOptions.from_options(request.options).on_failure:
        _hold_for_debugger(session, request, watch, reader, options)
    watched_bytes = stream.raw_bytes      # the boot's console, before any command typed after the prompt
    commands = options.commands if options.commands is not None else guest.commands
    ran = after_prompt(watcher.child, session.send, guest.auto_login, commands, cell.timeout_scale) \
        if watch.outcome == PASS and commands else []
    if ran:   # command output (dmesg, say) would repeat the boot's reports: they are titled from the boot's part
        watch.console_bytes = watched_bytes
    if options.console is not None:
        options.console.hold(session)
    stream.detach()
    summary = session.stop()
    stream.close()
    watch.events.extend(reader.poll())   # what arrived while stopping (final counts, late gaps)
    return watch, summary, ran


def _hold_for_debugger(session: Any, request: BootRequest, watch: WatchOutcome, reader: ev.EventReader,
                       options: RunOptions) -> None:
    """--gdb-on-failure: keep the failed guest for a debugger until it ends (gdb kill/detach, Ctrl-C)."""
    watch.events.extend(reader.poll())
    listen = [e.data for e in watch.events if e.type == ev.DEBUG_LISTEN]
    if listen:
        where = f"{listen[-1].get('host')}:{listen[-1].get('port')}"
    else:
        host, port = DebugOptions.from_options(request.options).address(QEMU_DEFAULT_PORT)
        where = f"{host}:{port or QEMU_DEFAULT_PORT}"
    notify = options.notify or (lambda line: None)
    notify(f"{watch.outcome}: {watch.reason}")
    notify(f"guest kept for the debugger: gdb -ex 'target remote {where}'   "
           "(kill or detach in gdb, or Ctrl-C here, ends it)")
    try:
        session.hold_for_debugger()
    except KeyboardInterrupt:
        notify("ending the held guest")


def _fill(result: CellResult, cell: Cell, watch: WatchOutcome, summary: SessionSummary, start_time: float,
          console_log: Path) -> None:
    from harness.gaps.baseline import baseline_path, compare, load_baseline, read_warning_baseline
    from harness.gaps.ledger import build_ledger, gaps_from_events
    from harness.gaps.phases import phases_from_snapshots

    result.outcome, result.reason = watch.outcome, watch.reason
    result.milestones, result.failure, result.near_miss = watch.milestones, watch.failure, watch.near_miss
    events = watch.events
    # A backend that keeps its own deduplicated ledger reports final counts in its summary; the
    # per-occurrence events are the fallback (a killed backend writes no summary).
    final = summary.extra.get("gaps")
    gaps = [GapRecord.from_json(g) for g in final] if final else gaps_from_events(events)
    ledger = build_ledger(gaps, watch.milestones, start_time)
    result.gaps = [g.to_json() for g in ledger]
    # The baseline: the guest file's expected gaps plus an accepted baselines/<guest>.yaml beside guests/.
    repo_root = cell.guest.path.resolve().parent.parent
    expected = load_baseline(cell.guest.name, cell.guest.expected_gaps, repo_root)
    diff = compare(ledger, expected)
    result.gap_diff = diff.to_dict()
    snapshots = [e for e in events if e.type == ev.EXIT_COUNTS]
    result.phases = phases_from_snapshots(watch.milestones, snapshots, start_time)
    result.exit_counts = summary.exit_counts or (snapshots[-1].data.get("counts", {}) if snapshots else {})
    result.boot_timer = [{"t": round(e.t - start_time, 6), **e.data} for e in events if e.type == ev.BOOT_TIMER]
    result.post_codes = [{"t": round(e.t - start_time, 6), **e.data} for e in events if e.type == ev.POST_CODE]
    result.flight_recorder = summary.flight_recorder if result.outcome != PASS else []
    result.vcpus = summary.extra.get("vcpus", []) if result.outcome != PASS else []
    host = dict(summary.host)
    for e in events:
        if e.type == ev.VM_START:
            host = {**e.data.get("host", {}), **host}
            host.setdefault("vm_start_s", round(e.t - start_time, 6))   # backend start -> first guest entry
    result.host = host
    result.repro["host_kind"] = host_kind(host)
    result.command = summary.command
    add_console_reports(result, console_log, cell.guest.family, cell.guest.warnings,
                        cell.guest.expected_warnings + read_warning_baseline(baseline_path(cell.guest.name, repo_root)),
                        limit=watch.console_bytes)
    if result.outcome == PASS and cell.fail_on_new_gaps and diff.new:
        keys = ", ".join(f"{g['kind']} {g['key']}" if isinstance(g, dict) else f"{g.kind} {g.key}" for g in diff.new)
        result.outcome, result.reason = FAIL, f"new emulation gaps not in the baseline: {keys}"
        result.failure = Failure("new-gap", result.reason)
    broken = summary.extra.get("infrastructure_error")   # e.g. a wedged lab: whatever the console said
    if broken and result.outcome != ERROR:
        result.outcome, result.reason = ERROR, f"backend host failed: {broken}"
        result.failure = Failure("infrastructure", result.reason)
    if result.outcome == ERROR and summary.stderr_tail:
        result.reason += f"; backend stderr: {summary.stderr_tail.strip().splitlines()[-1][:300]}"


def _progress(options: RunOptions, cell: Cell, info: dict) -> None:
    """Per-cell progress file for live tables (written atomically; xdist workers share the run dir)."""
    data = {"cell": cell.id, "backend": cell.backend, "t": time.time(), **info}
    if options.progress:
        options.progress(data)
    RunDir(options.run_dir).update_progress(cell.id, data)
