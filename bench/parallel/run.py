"""Parallel matrix speed-up: the same 8 quick cells with -j 1 and -j 2, in one run, as a ratio.

    python bench/parallel/run.py [--cells 8] [--rounds 2] [--tier quick]

Target (issue 2): on 2 cores, -j 2 takes at most 0.6x the wall time of -j 1. Rounds alternate
(-j1, -j2, -j1, -j2 ...) so drift in machine load hits both sides alike; the ratio of the medians is
reported. Cells: `--selection spread` (default) takes N of the tier's cells expected to pass, evenly
spaced over the matrix order, so the mix of short fixture boots and multi-second Linux boots is the
tier's own; `--selection builtin` takes the first N built-in fixture cells (sub-second boots, where
pytest-xdist's fixed start-up cost weighs most).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from harness.runner.guestfile import load_guests  # noqa: E402
from harness.runner.matrix import load_matrix  # noqa: E402


def pick_cells(tier: str, count: int, selection: str = "spread") -> list[dict]:
    guests = load_guests(ROOT / "guests")
    cells = [c for c in load_matrix(ROOT / "matrix.yaml", guests).cells(guests, tier) if c.expect == "pass"]
    if selection == "builtin":
        cells = [c for c in cells if c.backend == "builtin"][:count]
    elif len(cells) > count:
        step = len(cells) / count
        cells = [cells[int(i * step)] for i in range(count)]
    if len(cells) < count:
        sys.exit(f"only {len(cells)} passing cells ({selection}) in tier {tier}; need {count}")
    print("cells:", ", ".join(c.id for c in cells), flush=True)
    return [{"guest": c.guest.name, "backend": c.backend, "cpu_profile": c.cpu_profile, "gap_policy": c.gap_policy,
             "vcpus": c.vcpus, "memory": c.memory} for c in cells]


def timed_run(matrix: Path, jobs: int, out: Path) -> float:
    argv = [sys.executable, "-m", "harness", "run", "--matrix", str(matrix), "--guests", str(ROOT / "guests"),
            "-j", str(jobs), "--no-live", "--report-dir", str(out)]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"run with -j {jobs} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tier", default="quick")
    ap.add_argument("--selection", default="spread", choices=("spread", "builtin"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        matrix = Path(tmp) / "matrix.yaml"
        matrix.write_text(yaml.safe_dump({"version": 1, "entries": [], "include": pick_cells(args.tier, args.cells, args.selection)}))
        times: dict[int, list[float]] = {1: [], 2: []}
        for r in range(args.rounds):
            for jobs in (1, 2):
                times[jobs].append(timed_run(matrix, jobs, Path(tmp) / f"run-j{jobs}-{r}"))
                print(f"round {r + 1}: -j {jobs}: {times[jobs][-1]:.2f} s", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    ratio = two / one
    print(f"{args.cells} cells ({args.selection}): median -j1 {one:.2f} s, -j2 {two:.2f} s, ratio {ratio:.2f} "
          f"(target <= 0.60: {'met' if ratio <= 0.6 else 'NOT met'})")


if __name__ == "__main__":
    main()
