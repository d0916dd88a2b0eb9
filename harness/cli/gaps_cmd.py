"""`harness gaps`: list the emulation gaps of runs, diff two runs, accept a run as baseline.

    harness gaps [RUN...] [--guest G] [--kind K] [--format table|json|csv]
    harness gaps diff A B [--format table|json]     exit 1 when B has gaps A had not
    harness gaps accept RUN [--guest G] [--out FILE]
    harness gaps bisect CELL [--matrix M] [--out DIR]   which single gap decides a failing builtin cell
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.model.gap import KINDS

FORMATS = ("table", "json", "csv")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gaps", help="list, diff and accept the emulation gaps of runs",
        description="List the emulation gaps recorded in runs (default: the newest run under reports/), "
                    "compare two runs (`gaps diff A B`), or accept a run's gaps as the guests' baseline "
                    "(`gaps accept RUN`, writes baselines/<guest>.yaml).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("words", nargs="*", metavar="RUN | diff A B | accept RUN",
                   help="run directories (or ids under reports/), or a `diff`/`accept` action")
    p.add_argument("--guest", help="only this guest")
    p.add_argument("--kind", choices=KINDS, metavar="KIND", help=f"only this gap kind ({', '.join(KINDS)})")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--out", type=Path, help="accept: write this file instead of baselines/<guest>.yaml; "
                   "bisect: the directory for its boots (default reports/bisect-<time>)")
    p.add_argument("--matrix", default="matrix.yaml", help="bisect: the matrix the cell is in")
    p.add_argument("--to", default="emulate,zero", help="bisect: policies to try instead of gp, in order")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    words = list(args.words)
    if words and words[0] == "diff":
        if len(words) != 3:
            raise HarnessError("`harness gaps diff` needs two runs", "harness gaps diff RUN_A RUN_B")
        return _diff(resolve_run_dir(words[1]), resolve_run_dir(words[2]), args.format)
    if words and words[0] == "accept":
        if len(words) > 2:
            raise HarnessError("`harness gaps accept` takes one run", "harness gaps accept RUN [--guest G]")
        return _accept(resolve_run_dir(words[1] if len(words) == 2 else None), args.guest, args.out)
    if words and words[0] == "bisect":
        if len(words) != 2:
            raise HarnessError("`harness gaps bisect` takes one cell id", "harness gaps bisect 'GUEST@builtin/...'")
        return _bisect(words[1], Path(args.matrix), args.out, args.to, args.format)
    runs = [resolve_run_dir(w) for w in words] or [resolve_run_dir(None)]
    return _list(runs, args.guest, args.kind, args.format)


def _list(runs: list[Path], guest: str | None, kind: str | None, fmt: str) -> int:
    from harness.gaps.runs import gap_rows

    rows = gap_rows(runs, guest=guest, kind=kind)
    if fmt == "json":
        print(json.dumps([r.to_dict() for r in rows], indent=1))
    elif fmt == "csv":
        fields = list(rows[0].to_dict()) if rows else ["run", "cell_id", "kind", "key"]
        w = csv.DictWriter(sys.stdout, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r.to_dict())
    else:
        _table(rows, many_runs=len(runs) > 1)
    return 0


def _table(rows: list, many_runs: bool) -> None:
    """One table per cell (cell ids are long; as a column they would squeeze everything else)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rich import box

    # A pipe or file gets wide lines rather than truncated cells; a terminal gets its own width.
    console = Console(width=None if sys.stdout.isatty() else 160)
    by_cell: dict[tuple[str, str], list] = {}
    for r in rows:
        by_cell.setdefault((r.run, r.cell_id), []).append(r)
    for (run, cell), cell_rows in by_cell.items():
        title = f"{run}: {cell}" if many_runs else cell
        table = Table(title=escape(title), title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
        for c in ("kind", "key", "access", "count", "first RIP", "phase", "policy", "fate", "baseline"):
            table.add_column(c, justify="right" if c == "count" else "left", no_wrap=c in ("kind", "key", "first RIP"))
        for r in cell_rows:
            status = {"new": "[red]new[/red]", "known": "[dim]known[/dim]"}.get(r.status, "")
            values = [r.kind, r.key, r.access, str(r.count),
                      f"{r.first_rip:#x}" if isinstance(r.first_rip, int) else "", r.phase or "", r.policy, r.fate]
            table.add_row(*[escape(str(v)) for v in values], status)   # keys come from guests: no markup
        console.print(table)
    console.print(f"{len(rows)} gaps in {len(by_cell)} cells")


def _diff(a: Path, b: Path, fmt: str) -> int:
    from harness.gaps.runs import diff_gap_runs

    d = diff_gap_runs(a, b)
    print(json.dumps(d.to_dict(), indent=1, default=str) if fmt == "json" else d.to_text())
    return 1 if d.new else 0


def _accept(run_dir: Path, guest: str | None, out: Path | None) -> int:
    from harness.gaps.runs import accept_run

    for path in accept_run(run_dir, guest=guest, out=out):
        print(f"wrote {path}")
    return 0


def _bisect(cell_id: str, matrix: Path, out: Path | None, to: str, fmt: str) -> int:
    from harness.model.rundir import RunDir, reports_base
    from harness.runner.bisect import TARGETS, bisect_cell, write_report
    from harness.runner.guestfile import load_guests
    from harness.runner.matrix import find_cell, load_matrix

    targets = tuple(t.strip() for t in to.split(",") if t.strip())
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise HarnessError(f"--to {to!r}: unknown policy {', '.join(bad) or '(none)'}", "use --to emulate,zero")
    guests = load_guests(matrix.parent / "guests")
    cell = find_cell(load_matrix(matrix, guests).cells(guests, "nightly"), cell_id)
    out_dir = out or RunDir.create(reports_base() / "bisect").path
    report = bisect_cell(cell, out_dir, targets, say=lambda line: print(line, file=sys.stderr, flush=True))
    path = write_report(report, out_dir)
    print(json.dumps(report.to_json(), indent=1) if fmt == "json" else report.to_text())
    print(f"boots and bisect.json: {path.parent}", file=sys.stderr)
    return 0 if report.deciding else 1


def resolve_run_dir(name: str | None) -> Path:
    """A path, a run id under the reports base, or the newest run (name None)."""
    from harness.model.rundir import RunDir
    return RunDir.resolve(name).path
