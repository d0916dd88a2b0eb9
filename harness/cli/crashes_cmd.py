"""`harness crashes RUN-DIR...`: the crash index of one or more runs (deduplicated titles)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crashes", help="crash and warning titles across runs, deduplicated, with first/last seen",
                       description=__doc__)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN-DIR")
    p.add_argument("--json", action="store_true", help="print the index as JSON")
    p.add_argument("--warnings", action="store_true", help="list warnings of passing boots too (default: crashes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.report.crashes import crash_index
    from harness.report.run import load_run
    for path in args.runs:
        if not (path / "cells").is_dir():
            raise ConfigError(f"{path} is not a run directory (no cells/)", "give reports/RUN-ID directories")
    entries = crash_index(load_run(path) for path in args.runs)
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
        print(f"{e.title}\n  {e.severity}, {len(e.cells)} cell(s) in {len(e.runs)} run(s); "
              f"first seen {first.run_id} {first.at} ({first.cell}); last seen {last.run_id} {last.at}")
        for cell in e.cells:
            print(f"    {cell}")
    return 0
