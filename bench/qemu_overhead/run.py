"""What the harness costs on top of QEMU: one Linux boot to `login:`, harness vs bare QEMU.

Both sides boot the same guest (guests/linux-amd64-pvh.yaml by default: Debian's cloud kernel,
PVH entry on microvm, busybox initramfs) with TCG, alternated run by run so that load on the
shared machine hits both alike:
- harness: a full runner cell (harness.runner.execute.run_cell): resolve assets, QEMU backend with
  its QMP socket, log tailing and event file, the console watcher, result JSON;
- bare: the harness's own QEMU argv minus what only the harness adds (-qmp, -d/-D), spawned by
  pexpect, waiting for `login:`.
Reported: time to `login:` (harness: the login milestone's time since VM start, plus the time
from calling run_cell to VM start; bare: spawn to match) and whole wall time per run, the medians
and the ratio (target <= 1.05x).

    python3 bench/qemu_overhead/run.py [--runs 5] [--guest linux-amd64-pvh]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def harness_run(guest_name: str, run_dir: Path) -> tuple[float, float]:
    from harness.runner.execute import RunOptions, run_cell
    from harness.runner.guestfile import load_guest
    from harness.runner.matrix import Cell
    guest = load_guest(REPO / "guests" / f"{guest_name}.yaml")
    cell = Cell(guest=guest, backend="qemu-tcg", cpu_profile="default", gap_policy="emulate", vcpus=guest.vcpus,
                memory=guest.memory, tier="quick")
    t0 = time.monotonic()
    result = run_cell(cell, RunOptions(run_dir=run_dir))
    wall = time.monotonic() - t0
    if result.outcome != "pass":
        raise SystemExit(f"harness cell did not pass: {result.outcome}: {result.reason}")
    login = result.milestones[-1]
    # From calling run_cell to VM start (resolve, overlay, QMP dir, spawn), then the boot to login.
    return (_vm_start(run_dir, cell.id) - t0) + login.t, wall


def _vm_start(run_dir: Path, cell_id: str) -> float:
    from harness.model.events import VM_START, EventReader
    from harness.model.rundir import RunDir
    evs = EventReader(RunDir(run_dir).workdir(cell_id) / "events.jsonl").poll()
    return next(e.t for e in evs if e.type == VM_START)


def bare_argv(guest_name: str, workdir: Path) -> list[str]:
    """The argv the harness would use, without the harness-only -qmp and -d/-D diagnostics."""
    from harness.assets.sources import resolve
    from harness.model.session import BootRequest
    from harness.backends.qemu import QemuBackend
    from harness.runner.guestfile import load_guest
    g = load_guest(REPO / "guests" / f"{guest_name}.yaml")
    paths = {k: resolve(getattr(g, k), guest=g.name).path if getattr(g, k) else None for k in ("kernel", "initrd")}
    req = BootRequest(cell_id="bare", guest=g.name, family=g.family, arch=g.arch, boot=g.boot, kernel=paths["kernel"],
                      initrd=paths["initrd"], cmdline=g.cmdline, memory_mib=g.memory, vcpus=g.vcpus,
                      workdir=workdir, options=dict(g.qemu))
    argv = QemuBackend("tcg").build_argv(req)
    i = argv.index("-d")
    del argv[i:i + 4]  # -d unimp,guest_errors -D <log>
    return argv


def bare_run(argv: list[str]) -> tuple[float, float]:
    import pexpect
    t0 = time.monotonic()
    child = pexpect.spawn(argv[0], argv[1:], timeout=120)
    child.expect("login:")
    to_login = time.monotonic() - t0
    child.terminate(force=True)
    return to_login, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--guest", default="linux-amd64-pvh")
    args = ap.parse_args()
    from harness.assets.sources import resolve
    from harness.runner.guestfile import load_guest
    g = load_guest(REPO / "guests" / f"{args.guest}.yaml")
    for key in ("kernel", "initrd"):
        if getattr(g, key):
            resolve(getattr(g, key), guest=g.name, offline=False)  # build once, outside the timing
    harness_login, harness_wall, bare_login, bare_wall = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="qemu-overhead-") as tmp:
        argv = bare_argv(args.guest, Path(tmp) / "bare")
        print("bare argv:", " ".join(argv))
        for i in range(args.runs):
            # Alternate which side goes first so drift in machine load does not favour one.
            order = ("harness", "bare") if i % 2 == 0 else ("bare", "harness")
            for side in order:
                if side == "harness":
                    login, wall = harness_run(args.guest, Path(tmp) / f"run{i}")
                    harness_login.append(login)
                    harness_wall.append(wall)
                else:
                    login, wall = bare_run(argv)
                    bare_login.append(login)
                    bare_wall.append(wall)
                print(f"run {i + 1} {side:8s} login {login:6.3f} s   wall {wall:6.3f} s", flush=True)
    h, b = statistics.median(harness_login), statistics.median(bare_login)
    print(f"\nmedian time to login: harness {h:.3f} s, bare qemu {b:.3f} s -> ratio {h / b:.3f}x (target <= 1.05x)")
    print(f"median wall per run:  harness {statistics.median(harness_wall):.3f} s, "
          f"bare qemu {statistics.median(bare_wall):.3f} s")
    return 0 if h / b <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
