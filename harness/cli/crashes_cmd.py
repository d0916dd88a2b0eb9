"""`harness crashes RUN-DIR...`: the crash index of one or more runs (titles deduplicated across
cells and runs, with first and last seen), and accepting a run's warnings as the guests' baseline."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crashes", help="crash and warning titles across runs, deduplicated, with first/last seen",
                       description=__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN-DIR", help="run directories (or run ids under reports/)")
    p.add_argument("--json", action="store_true", help="print the index as JSON")
    p.add_argument("--warnings", action="store_true", help="list warnings of passing boots too (default: crashes)")
    p.add_argument("--accept-warnings", action="store_true",
                   help="add the warning titles of these runs to baselines/<guest>.yaml (known from now on)")
    p.add_argument("--guest", help="--accept-warnings: only this guest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.report.crashes import crash_index
    from harness.model.rundir import RunDir
    from harness.report.run import load_run
    runs = [load_run(RunDir.resolve(name).path) for name in args.runs]
    if args.accept_warnings:
        return _accept(runs, args.guest)
    entries = crash_index(runs)
    if not args.warnings:
        entries = [e for e in entries if e.severity == "crash"]
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=1))
        return 0
    if not entries:
        print("no crashes" + ("" if args.warnings else " (--warnings lists warnings too)"))
        return 0
    for e in entries:
        first, last = e.first_seen, e.last_seen
        new = f"; new in {len(e.new_in)} cell(s)" if e.new_in else ""
        print(f"{e.title}\n  {e.severity}, {len(e.cells)} cell(s) in {len(e.runs)} run(s){new}; "
              f"first seen {first.run_id} {first.at} ({first.cell}); last seen {last.run_id} {last.at}")
        for cell in e.cells:
            print(f"    {cell}")
    return 0


def _accept(runs: list, guest: str | None) -> int:
    from harness.errors import HarnessError
    from harness.gaps.baseline import baseline_path, write_warning_baseline
    from harness.gaps.runs import run_root
    titles: dict[str, set[str]] = {}
    for run in runs:
        for view in run.cells:
            if guest is None or view.result.guest == guest:
                titles.setdefault(view.result.guest, set()).update(w.title for w in view.result.warnings)
    titles = {g: t for g, t in titles.items() if t}
    if not titles:
        raise HarnessError(f"no warnings{' of guest ' + guest if guest else ''} in these runs",
                           "see `harness crashes RUN --warnings`")
    for g, found in sorted(titles.items()):
        path = write_warning_baseline(baseline_path(g, run_root(runs[0].run_dir)), g, found,
                                      ", ".join(r.run_id for r in runs))
        print(f"{path}: {len(found)} warning title(s) accepted for {g}")
    return 0
