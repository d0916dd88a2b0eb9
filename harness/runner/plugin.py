"""pytest plugin: matrix.yaml becomes one pytest item per cell.

    pytest -p harness.runner.plugin -p harness.report.plugin matrix.yaml -n auto --harness-tier quick

(the second plugin writes the run's reports at the end; leave it out for results files only).

Cells are collected in a deterministic order (pytest-xdist needs every worker to agree), each
item boots its cell and writes its result file at once, so `-n`, `-k`, `--junitxml` and a
killed run all behave as with ordinary tests. `harness run` wraps this with a live table.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.errors import HarnessError
from harness.model.result import PASS, CellResult
from harness.model.rundir import RUN_DIR_ENV, RunDir, repeat_id
from harness.model.tiers import QUICK, TIERS
from harness.model.verdict import EXPIRED, KNOWN, known_issue_note, known_issue_status
from harness.runner.execute import RunOptions, run_cell
from harness.runner.guestfile import load_guests
from harness.runner.matrix import Cell, load_matrix, select_shard


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "boot matrix (harness)")
    group.addoption("--harness-run-dir", default=None, help="run directory for results (default: new under reports/)")
    group.addoption("--harness-tier", default=QUICK, choices=tuple(TIERS), help="matrix tier")
    group.addoption("--harness-shard", default=None, help="K/N: run only shard K of N (stable hash of the cell id)")
    group.addoption("--harness-guests", default=None, help="guest directory (default: guests/ beside the matrix)")
    group.addoption("--harness-resume", action="store_true", help="skip cells that passed in --harness-run-dir")
    group.addoption("--harness-repeat", type=int, default=1, help="boot every cell N times (boot-time statistics)")
    group.addoption("--harness-retry-failures", type=int, default=0,
                    help="boot a cell that did not end as expected up to N more times (flake detection)")
    group.addoption("--harness-host", default=None, choices=("native", "lab", "auto"),
                    help="run every built-in cell on this host, replacing the matrix's hosts")
    group.addoption("--harness-online", action="store_true", help="allow asset downloads during the run")


def host_summary() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "kernel": platform.release(), "machine": platform.machine(),
            "python": sys.version.split()[0], "cpus": os.cpu_count()}


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    from harness.runner.guestfile import BACKENDS, FAMILIES
    from harness.hosts.select import HOSTS
    for name in (*BACKENDS, *TIERS, *FAMILIES, *HOSTS):   # cells are marked by backend, tier, OS family, host
        config.addinivalue_line("markers", f"{name.replace('-', '_')}: harness cells of this kind")
    if _is_worker(config):
        config._harness_run_dir = Path(config.workerinput["harness_run_dir"])  # type: ignore[attr-defined]
        return
    run_dir = config.getoption("harness_run_dir") or os.environ.get(RUN_DIR_ENV)
    run_dir = Path(run_dir) if run_dir else RunDir.create().path
    run_dir.mkdir(parents=True, exist_ok=True)
    config._harness_run_dir = run_dir  # type: ignore[attr-defined]
    matrices = [a for a in config.args if str(a).endswith((".yaml", ".yml"))]
    if matrices:
        _write_run_json(config, matrices[0], None)


def _record_selected(config: pytest.Config, n_items: int) -> None:
    """run.json cells_selected: the cells this run set out to boot, after -k and --shard (not the matrix size)."""
    run = RunDir(config._harness_run_dir)  # type: ignore[attr-defined]
    if run.run_json.exists():
        data = run.read_run_json()
        data["cells_selected"] = n_items // max(1, config.getoption("harness_repeat"))
        run.write_run_json(data)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Without xdist the controller collects: count the cell items that survived -k deselection."""
    if not _is_worker(session.config) and hasattr(session.config, "_harness_run_dir"):
        cells = [i for i in session.items if isinstance(i, CellItem)]
        if cells:
            _record_selected(session.config, len(cells))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """pytest-xdist: the controller does not collect; a worker's list (after -k) says how many cells run."""
    _record_selected(node.config, len(ids))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker writes into the controller's run directory."""
    node.workerinput["harness_run_dir"] = str(node.config._harness_run_dir)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """A YAML file named *matrix.yaml, or any YAML file given on the command line, is a matrix."""
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    given = {Path(a).resolve() for a in parent.config.args}
    if file_path.name.endswith("matrix.yaml") or file_path.resolve() in given:
        return MatrixFile.from_parent(parent, path=file_path)
    return None


class MatrixFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        config = self.config
        guests_dir = Path(config.getoption("harness_guests") or self.path.parent / "guests")
        try:
            guests = load_guests(guests_dir)
            matrix = load_matrix(self.path, guests)
            matrix.host_override = config.getoption("harness_host")
            cells = select_shard(matrix.cells(guests, config.getoption("harness_tier")),
                                 config.getoption("harness_shard"))
        except HarnessError as e:
            raise MatrixError(e.one_line()) from None
        if not _is_worker(config):
            _write_run_json(config, self.path, None)   # cells_selected: after -k, in pytest_collection_finish
        repeat = max(1, config.getoption("harness_repeat"))
        # Longest first (as QEMU's functional tests do): a multi-second Linux boot started last
        # would leave one worker busy while the others idle. The estimate is the guest's budget.
        cells = sorted(cells, key=lambda c: (-expected_cost(c), c.id))
        for cell in cells:
            for r in range(repeat):
                name = cell.id if repeat == 1 else f"{cell.id}#r{r}"   # pytest item names
                yield CellItem.from_parent(self, name=name, cell=cell, repeat_index=r)


def expected_cost(cell: Cell) -> float:
    """A static estimate of how long a cell boots: its milestones' time budget, scaled."""
    return sum(m.timeout for m in cell.guest.milestones) * cell.timeout_scale


class MatrixError(Exception):
    pass


def _write_run_json(config: pytest.Config, matrix_path: Path | str, cell_count: int | None) -> None:
    run = RunDir(config._harness_run_dir)  # type: ignore[attr-defined]
    previous = run.read_run_json()
    run.write_run_json({**previous,
                             "schema_version": 1,
                             "run_id": run.path.name,
                             "matrix": str(matrix_path),
                             "tier": config.getoption("harness_tier"),
                             "shard": config.getoption("harness_shard"),
                             "repeat": config.getoption("harness_repeat"),
                             "retry_failures": config.getoption("harness_retry_failures"),
                             "cells_selected": cell_count if cell_count is not None else previous.get("cells_selected"),
                             "started_at": previous.get("started_at") or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "resumed": bool(config.getoption("harness_resume")) or bool(previous),
                             "host": host_summary(),
                             "argv": sys.argv})


class CellItem(pytest.Item):
    def __init__(self, *, cell: Cell, repeat_index: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cell = cell
        self.repeat_index = repeat_index
        self.result: CellResult | None = None
        for marker in (cell.backend, cell.tier, cell.guest.family, cell.host):
            self.add_marker(marker.replace("-", "_"))

    def runtest(self) -> None:
        run_dir: Path = self.config._harness_run_dir  # type: ignore[attr-defined]
        if (self.config.getoption("harness_resume")
                and RunDir(run_dir).outcome_of(repeat_id(self.cell.id, self.repeat_index)) == PASS):
            pytest.skip("passed in the run being resumed")
        options = RunOptions(run_dir=run_dir, offline=not self.config.getoption("harness_online"),
                             repeat_index=self.repeat_index,
                             failure_retries=max(0, self.config.getoption("harness_retry_failures")))
        self.result = run_cell(self.cell, options)
        outcome = self.result.outcome
        status = known_issue_status(self.result)
        if outcome == PASS:
            return
        if status == KNOWN:
            pytest.xfail(known_issue_note(self.result))
        if outcome == self.cell.expect and status != EXPIRED:
            pytest.xfail(f"expected {outcome}: {self.result.reason}")
        raise CellFailed(self.result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CellFailed):
            return format_failure(excinfo.value.result, self.config._harness_run_dir)  # type: ignore[attr-defined]
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.cell.guest.path, 0, f"cell {self.name}"


class CellFailed(Exception):
    def __init__(self, result: CellResult) -> None:
        super().__init__(result.reason)
        self.result = result


def format_failure(result: CellResult, run_dir: Path) -> str:
    lines = [f"{result.outcome.upper()}: {result.reason}"]
    if known_issue_note(result):
        lines.append(known_issue_note(result))
    if result.milestones:
        lines.append("milestones: " + ", ".join(f"{m.name} @{m.t:.2f}s" for m in result.milestones))
    if result.failure:
        lines.append(f"failure: {result.failure.kind}: {result.failure.message}")
    if result.near_miss:
        nm = result.near_miss
        lines.append(f"near miss: waiting for {nm.waiting_for!r} /{nm.pattern}/ after {nm.last_milestone or 'start'}")
        if nm.closest_line:
            lines.append(f"  closest line ({nm.closest_ratio:.0%}): {nm.closest_line}")
        lines.extend("  | " + l for l in nm.last_lines[-10:])
    stopped = [g for g in result.gaps if g.get("fate") == "stopped"]
    for g in stopped:
        lines.append(f"gap: {g['kind']} {g['key']} at rip {g.get('first_rip')} ({g.get('detail', {}).get('insn', '')})")
    if result.console_log:
        lines.append(f"console: {run_dir / result.console_log}")
    return "\n".join(lines)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _is_worker(config) or not hasattr(config, "_harness_run_dir"):
        return
    run = RunDir(config._harness_run_dir)  # type: ignore[attr-defined]
    if not run.run_json.exists():
        return
    data = run.read_run_json()
    data["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    run.write_run_json(data)   # the reports (harness.report.plugin) follow


def pytest_report_header(config: pytest.Config) -> str | None:
    run_dir = getattr(config, "_harness_run_dir", None)
    return f"harness run directory: {run_dir}" if run_dir else None
