"""Crash detection and crash titles on real consoles, end to end through the replay backend.

    python bench/crash_titles/run.py [--consoles DIR] [--family linux ...] [--jobs 2] [--json OUT]

Every console of ../shared/data/crash-consoles (real Linux, NetBSD, OpenBSD and FreeBSD crash
logs with the title syzkaller's parser gives each) becomes a recorded cell directory
(console.log + console.timing.jsonl) that a replay guest plays back as its kernel; the cell runs
through `harness.runner.execute.run_cell` exactly as `harness run` runs one: backend child
process, console stream and cleaner, watcher, result. Measured per OS family:

- detected: consoles with a known title whose cell ends `fail`;
- titled:   of those, cells whose `crash.title` is the known title (or one of its ALT titles);
- quiet:    consoles without a crash whose cell does not end `fail`;
- tracebacks: cells whose watcher or runner raised (must be 0).

The replay guest waits for `login: ` (2 s), settles 1 s after it, and fails on warnings
(`warnings: fail`: the fuzzing fleet these consoles come from runs panic_on_warn; `--warnings
record` measures the default instead). The title function alone (no backend) is measured too,
as `titled (parser)`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crash_corpus as corpus  # noqa: E402

from harness.console.crashes import crash_of, find_reports  # noqa: E402
from harness.runner.crash_report import _clean  # noqa: E402
from harness.runner.execute import RunOptions, run_cell  # noqa: E402
from harness.runner.guestfile import load_guest  # noqa: E402
from harness.runner.matrix import Cell  # noqa: E402

GUEST = """family: {family}
arch: x86_64
boot: raw
kernel: {{path: {recording}}}
backends: [replay]
milestones:
  - {{name: login, pattern: 'login: ', timeout: 2}}
hang_timeout: 2
settle: 1
warnings: {warnings}
"""


@dataclass
class Tally:
    crashes: int = 0
    detected: int = 0
    titled: int = 0
    titled_parser: int = 0
    clean: int = 0
    quiet: int = 0
    tracebacks: int = 0
    misses: list[dict] = field(default_factory=list)

    def share(self, part: int, whole: int) -> str:
        return f"{100.0 * part / whole:5.1f}%" if whole else "   -  "


def replay_cell(console: corpus.Console, work: Path, warnings: str = "fail") -> dict:
    """Play one console through a replay guest; the cell's result as a dict."""
    name = f"{console.family}-{console.name}"
    recording = work / "recordings" / name
    recording.mkdir(parents=True)
    (recording / "console.log").write_bytes(console.console)
    (recording / "console.timing.jsonl").write_text(json.dumps(
        {"t": 0.05, "raw_offset": len(console.console), "clean_offset": 0, "n": len(console.console)}) + "\n")
    guest_file = work / "guests" / f"{name}.yaml"
    guest_file.parent.mkdir(exist_ok=True)
    guest_file.write_text(GUEST.format(family=console.family, recording=recording, warnings=warnings))
    cell = Cell(load_guest(guest_file), "replay", "host", "emulate", 1, 64, "bench", retries=0)
    result = run_cell(cell, RunOptions(run_dir=work / "run" / name))
    return result.to_json()


def parser_title(console: corpus.Console) -> str | None:
    crash = crash_of(find_reports(console.family, _clean(console.console)))
    return crash.title if crash else None


def measure(consoles: list[corpus.Console], jobs: int, warnings: str = "fail") -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    with tempfile.TemporaryDirectory(prefix="crash-titles-") as tmp, ThreadPoolExecutor(jobs) as pool:
        results = pool.map(lambda c: (c, _safe_replay(c, Path(tmp), warnings)), consoles)
        for console, result in results:
            _count(tallies.setdefault(console.family, Tally()), console, result)
    return tallies


def _safe_replay(console: corpus.Console, work: Path, warnings: str) -> dict:
    try:
        return replay_cell(console, work, warnings)
    except Exception as e:  # a traceback is a measured failure, not the end of the bench
        return {"outcome": "traceback", "reason": f"{type(e).__name__}: {e}"}


def _count(t: Tally, console: corpus.Console, result: dict) -> None:
    if result.get("outcome") == "traceback" or (result.get("failure") or {}).get("kind") == "harness-bug":
        t.tracebacks += 1
    if not console.title:
        t.clean += 1
        t.quiet += result.get("outcome") != "fail"
        return
    t.crashes += 1
    t.titled_parser += parser_title(console) in console.titles
    if result.get("outcome") != "fail":
        t.misses.append({"console": console.name, "why": "not detected", "outcome": result.get("outcome"),
                         "reason": result.get("reason")})
        return
    t.detected += 1
    title = (result.get("crash") or {}).get("title")
    if title in console.titles:
        t.titled += 1
    else:
        t.misses.append({"console": console.name, "why": "title", "want": console.title, "got": title})


def table(tallies: dict[str, Tally]) -> str:
    rows = ["| OS | crash consoles | detected `fail` | titled as known | titled (parser) | quiet on no-crash | tracebacks |",
            "|---|---|---|---|---|---|---|"]
    for family in corpus.FAMILIES:
        t = tallies.get(family)
        if t is None:
            continue
        rows.append(f"| {family} | {t.crashes} | {t.detected} ({t.share(t.detected, t.crashes).strip()}) | "
                    f"{t.titled} ({t.share(t.titled, t.crashes).strip()}) | "
                    f"{t.titled_parser} ({t.share(t.titled_parser, t.crashes).strip()}) | "
                    f"{t.quiet}/{t.clean} | {t.tracebacks} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--consoles", type=Path, default=corpus.DEFAULT_DIR)
    ap.add_argument("--family", action="append", choices=corpus.FAMILIES)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the tallies and misses here")
    ap.add_argument("--warnings", default="fail", choices=("fail", "record"),
                    help="the replay guest's `warnings:` (default fail: the fleet's panic_on_warn)")
    args = ap.parse_args(argv)
    consoles = corpus.consoles(args.consoles, tuple(args.family or corpus.FAMILIES))
    if not consoles:
        print(f"no consoles under {args.consoles}", file=sys.stderr)
        return 2
    start = time.monotonic()
    tallies = measure(consoles, args.jobs, args.warnings)
    print(table(tallies))
    print(f"\n{len(consoles)} consoles in {time.monotonic() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({f: t.__dict__ for f, t in tallies.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
