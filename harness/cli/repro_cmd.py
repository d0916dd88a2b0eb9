"""`harness repro CELL-DIR|RESULT.json|BUNDLE` and `harness bundle CELL -o FILE`."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from harness.cli.boot_cmd import add_debug_arguments, debug_run_options
from harness.errors import ConfigError
from harness.repro.run import ReproRun, decisive

EXIT_ALL, EXIT_SOME, EXIT_NONE = 0, 1, 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("repro", help="run one recorded cell again, exactly as it ran (from its directory, "
                                     "result file or bundle)")
    p.add_argument("cell", metavar="CELL-DIR|RESULT.json|BUNDLE")
    p.add_argument("--times", type=int, default=1, metavar="N", help="run it N times; says 'reproduced k/N'")
    p.add_argument("--report-dir", default=None, help="where the new runs go (default: reports/repro/<time>)")
    p.add_argument("--quiet", action="store_true", help="do not stream the console")
    add_debug_arguments(p)
    p.set_defaults(func=cmd_repro)

    p = sub.add_parser("bundle", help="one file with a cell's result, console, events, guest file, host facts "
                                      "and asset manifest")
    p.add_argument("cell", metavar="CELL-DIR|RESULT.json")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the bundle to write (.tar.gz)")
    p.add_argument("--with-assets", action="store_true",
                   help="include the kernel/initrd/disk bytes: harness repro FILE then works offline")
    p.set_defaults(func=cmd_bundle)


def cmd_repro(args: argparse.Namespace) -> int:
    from harness.repro.bundle import import_assets
    from harness.model.repro import host_kind
    from harness.repro.run import boot_command, matrix_snippet, reproduce
    from harness.repro.source import load_source
    from harness.arch.x86_64.host import kvm_module
    from harness.model.rundir import RunDir, reports_base
    if args.times < 1:
        raise ConfigError(f"--times {args.times} is not a positive number", "give --times 1 or more")
    err = Console(stderr=True, highlight=False)
    with tempfile.TemporaryDirectory(prefix="harness-repro-") as unpack:
        source = load_source(args.cell, Path(unpack))
        if source.manifest:
            imported = import_assets(source, Path(unpack))
            if imported:
                print(f"bundle assets put into the cache: {', '.join(imported)}", file=sys.stderr)
        rec = source.record
        recorded_host = rec.get("host_kind") or host_kind(source.result.get("host", {}))
        print(f"recorded: {source.result['cell_id']} on {recorded_host or 'unknown host'}, harness "
              f"{(rec.get('harness') or {}).get('commit') or '?'}\n  {decisive(source.result)}", file=sys.stderr)
        here = kvm_module()
        if rec["cell"]["backend"] == "builtin" and recorded_host and recorded_host != here:
            err.print(f"[yellow]note: recorded on {recorded_host}, this host is {here}: the outcome may differ"
                      "[/yellow]")
        run_dir = Path(args.report_dir) if args.report_dir else RunDir.create(reports_base() / "repro").path
        echo = None if args.quiet else (lambda chunk: os.write(sys.stdout.fileno(), chunk))
        report = reproduce(source, args.times, run_dir, echo=echo, on_run=lambda run: _print_run(run, args.times),
                           **debug_run_options(args))
        print(f"{report.verdict()} (same outcome and decisive line: {decisive(source.result)})", file=sys.stderr)
        err.print(f"runs: {run_dir / 'cells'}")
        # Plain prints: these lines are for copying, rich would wrap them.
        print("equivalent boot:\n  " + boot_command(source), file=sys.stderr)
        print("matrix snippet:\n" + matrix_snippet(source), file=sys.stderr)
    if report.reproduced == len(report.runs):
        return EXIT_ALL
    return EXIT_SOME if report.reproduced else EXIT_NONE


def _print_run(run: ReproRun, times: int) -> None:
    mark = "same" if run.same else "DIFFERENT"
    lines = [f"\nrun {run.index}/{times}: {mark}: {decisive(run.result)}"]
    if run.new_gaps or run.missing_gaps:
        lines.append(f"  gaps differ: new {sorted(run.new_gaps)}, missing {sorted(run.missing_gaps)}")
    else:
        lines.append(f"  gaps: the same {len(run.result.get('gaps') or [])} as recorded")
    print("\n".join(lines), file=sys.stderr)


def cmd_bundle(args: argparse.Namespace) -> int:
    from harness.repro.bundle import make_bundle
    from harness.repro.source import load_source
    path = Path(args.cell)
    if path.is_file() and not path.suffix == ".json":
        raise ConfigError(f"{path} is not a cell directory or result file", "give reports/R/cells/SLUG or SLUG.json")
    with tempfile.TemporaryDirectory(prefix="harness-bundle-") as unpack:
        source = load_source(path, Path(unpack))
        out = Path(args.output)
        manifest = make_bundle(source, out, with_assets=args.with_assets)
    included = [r for r, a in manifest["assets"].items() if a.get("member")]
    print(f"{out}: {manifest['cell_id']} ({manifest['outcome']}), {out.stat().st_size:,d} bytes"
          + (f", assets included: {', '.join(included)}" if included else ", assets by sha256 only"))
    return 0
