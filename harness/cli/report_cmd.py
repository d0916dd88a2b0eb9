"""`harness report`: write a run's reports, compare two runs, merge CI shards.

    harness report [RUN] [--baseline RUN] [--open]   RUN defaults to the newest run under reports/
    harness report diff A B [--format text|json]     exit 1 when B regressed against A
    harness report merge RUN... --out DIR
    harness report diff-backends [RUN] [--guest G] [--format text|json]   builtin vs qemu, per guest
"""
from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from pathlib import Path

from harness.errors import HarnessError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write results.json, junit.xml, summary.md and index.html for a run",
        description="Write the reports of a run (default: the newest under reports/), compare two runs "
                    "(`report diff A B`), or merge shard runs (`report merge A B --out D`).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("words", nargs="*", metavar="RUN | diff A B | merge RUN...",
                   help="a run directory (or id under reports/), or a `diff`/`merge` action")
    p.add_argument("--baseline", metavar="RUN", help="compare with this run (regressions, gap changes)")
    p.add_argument("--open", action="store_true", help="open index.html in a browser")
    p.add_argument("--format", choices=("text", "json"), default="text", help="diff output format")
    p.add_argument("--out", type=Path, help="merge: the new run directory")
    p.add_argument("--guest", help="diff-backends: only this guest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    words = list(args.words)
    if words and words[0] == "diff-backends":
        if len(words) > 2:
            raise HarnessError("`harness report diff-backends` takes one run", "harness report diff-backends [RUN]")
        return _diff_backends(resolve_run_dir(words[1] if len(words) == 2 else None), args.guest, args.format)
    if words and words[0] == "diff":
        if len(words) != 3:
            raise HarnessError("`harness report diff` needs two runs", "harness report diff RUN_A RUN_B")
        return _diff(resolve_run_dir(words[1]), resolve_run_dir(words[2]), args.format)
    if words and words[0] == "merge":
        if len(words) < 2 or args.out is None:
            raise HarnessError("`harness report merge` needs runs and --out", "harness report merge A B --out DIR")
        return _merge([resolve_run_dir(w) for w in words[1:]], args.out)
    if len(words) > 1:
        raise HarnessError(f"one run at a time, got {len(words)}", "harness report RUN [--baseline RUN]")
    run_dir = resolve_run_dir(words[0] if words else None)
    baseline = resolve_run_dir(args.baseline) if args.baseline else None
    return _report(run_dir, baseline, args.open)


def _report(run_dir: Path, baseline: Path | None, open_browser: bool) -> int:
    from harness.report import write_reports

    paths = write_reports(run_dir, baseline)
    for kind, path in paths.items():
        print(f"{kind:8} {path}")
    print((run_dir / "summary.md").read_text().split("\n\n", 2)[1].replace("**", ""))
    if open_browser:
        _open(paths["html"])
    return 0


def _open(page: Path) -> None:
    uri = page.resolve().as_uri()
    # Without a display, webbrowser would start a text-mode browser in this terminal: just say where it is.
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print(f"no display here; open {uri} in a browser")
        return
    if not webbrowser.open(uri):
        print(f"could not start a browser; open {uri}")


def _diff(a: Path, b: Path, fmt: str) -> int:
    from harness.report import diff_runs

    d = diff_runs(a, b)
    print(d.to_json() if fmt == "json" else d.to_text())
    return 1 if d.regressions else 0


def _merge(runs: list[Path], out: Path) -> int:
    from harness.report import merge_runs, write_reports

    merged = merge_runs(runs, out)
    write_reports(merged)
    print(f"merged {len(runs)} runs into {merged}")
    return 0


def _diff_backends(run_dir: Path, guest: str | None, fmt: str) -> int:
    import json

    from harness.report import load_run
    from harness.report.backend_diff import backend_diffs

    pairs = backend_diffs(load_run(run_dir), guest)
    if not pairs:
        raise HarnessError(f"{run_dir}: no guest ran on both builtin and a qemu backend"
                           + (f" (guest {guest})" if guest else ""),
                           "run a guest on both, e.g. harness run -k 'fixture-pvh and emulate'")
    if fmt == "json":
        print(json.dumps([p.to_json() for p in pairs], indent=1))
    else:
        print("\n\n".join(p.to_text() for p in pairs))
    return 0


def resolve_run_dir(name: str | None) -> Path:
    """A path, a run id under the reports base, or the newest run (name None)."""
    from harness.model.rundir import RunDir
    return RunDir.resolve(name).path
