"""The nested lab, measured: cold start, warm per-cell overhead, builtin vs qemu-kvm there, native vs lab.

    python bench/lab/run.py [--rounds 2] [--linux/--no-linux] [--json OUT]

Everything is measured in this one run, as ratios against a reference measured alongside:
1. lab cold start: QEMU start -> usable /dev/kvm (init's check after kvm_amd loaded) and -> the
   agent ready for cells (imports done); reference: the same lab kernel + initramfs under plain
   QEMU TCG is what it is, so the ratio given is against the 6 s goal and, as a load gauge, against
   QEMU TCG booting Debian's PVH kernel to `login:` natively in this run;
2. per-cell overhead in a warm lab beyond the guest's own boot: cell wall time minus (last milestone
   - first guest entry) minus the watcher's settle window, for fixture-pvh, lab vs the same cell
   native (goal <= 1 s), in two parts: to the guest's first instruction, and the rest (setup, stop);
3. Linux to `login:` on builtin-in-lab vs qemu-kvm-in-lab, the same guest, same warm lab, rounds
   alternating (goal <= 1.0x); builtin twice: as the guest file says (`coalesce_serial: polled`,
   THR writes batched while the kernel's console polls) and with every COM1 write an exit;
4. the same fixture cell native vs lab: time to its last milestone.
One lab at a time; every lab is closed at the end. The machine is shared: numbers move with its
load (the load average is printed beside them), rerun with the same command.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from harness.assets.lab import lab_params  # noqa: E402
from harness.hosts import pool  # noqa: E402
from harness.hosts.lab import Lab  # noqa: E402
from harness.runner.execute import RunOptions, run_cell  # noqa: E402
from harness.runner.guestfile import load_guest  # noqa: E402
from harness.runner.matrix import Cell  # noqa: E402


def cell(guest_name: str, backend: str, host: str, builtin: dict | None = None) -> Cell:
    guest = load_guest(REPO / "guests" / f"{guest_name}.yaml")
    if builtin:
        guest = dataclasses.replace(guest, builtin={**guest.builtin, **builtin})
    return Cell(guest, backend, "default", "emulate", guest.vcpus, guest.memory, "bench", timeout_scale=8.0,
                retries=0, host=host)


def boot(guest_name: str, backend: str, host: str, scratch: Path, builtin: dict | None = None) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=scratch))
    measured = cell(guest_name, backend, host, builtin)
    result = run_cell(measured, RunOptions(run_dir=run_dir, offline=False))
    if result.outcome != "pass":
        raise BootFailed(f"{result.cell_id}: {result.outcome}: {result.reason}")
    last = result.milestones[-1].t
    vm_start = float(result.host.get("vm_start_s") or 0.0)
    # the watcher's settle window after the last milestone is observation, not overhead
    overhead = result.duration_s - (last - vm_start) - settle_s(measured)
    return {"cell": result.cell_id, "wall_s": result.duration_s, "last_milestone_s": last,
            "io_exits": result.exit_counts.get("io", 0),
            "guest_boot_s": last - vm_start, "overhead_s": overhead,
            # its two parts: the backend's start to the guest's first instruction (the VMM child
            # forked, the VM built, the kernel loaded), and the rest (the cell's setup before the
            # backend starts, the stop: the child's summary, its exit, the result)
            "start_s": vm_start, "rest_s": overhead - vm_start}


def settle_s(measured: Cell) -> float:
    """How long the watcher keeps watching after the last milestone (scaled like every timeout)."""
    return measured.guest.settle * measured.timeout_scale


class BootFailed(Exception):
    """A measured boot that did not pass: no figure from it (the Linux rounds go on without it)."""


def linux_round(scratch: Path, figures: dict[str, list], failures: list[str]) -> None:
    """One round of Linux PVH to login: in the warm lab: builtin, builtin unbatched, qemu-kvm."""
    for name, backend, builtin in (("builtin", "builtin", None), ("unbatched", "builtin", {"coalesce_serial": False}),
                                   ("qemu_kvm", "qemu-kvm", None)):
        try:
            figures[name].append(boot("linux-amd64-pvh", backend, "lab", scratch, builtin))
        except BootFailed as exc:
            failures.append(str(exc))
            print(f"round failed, left out: {exc}", file=sys.stderr)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")   # nan: every round of it failed


def measure_lab_and_fixture(rounds: int, scratch: Path, out: dict) -> None:
    """Items 1, 2 and 4."""
    # 1. cold start (each round a fresh lab), with a native QEMU TCG Linux boot as load gauge
    colds, kvms, stages = [], [], []
    for _ in range(rounds):
        lab = Lab(lab_params("x86_64")).start()
        colds.append(lab.cold_start_s)
        kvms.append(lab.kvm_ready_s)
        facts = lab.describe()
        stages.append(facts.get("init_stages") or [])
        lab.close()
    gauge = boot("linux-amd64-pvh", "qemu-tcg", "native", scratch)["last_milestone_s"]
    out["cold_start"] = {"kvm_ready_s": median(kvms), "agent_ready_s": median(colds), "rounds": kvms,
                         "vs_goal_6s": median(kvms) / 6.0, "qemu_tcg_linux_login_s": gauge,
                         "vs_qemu_tcg_linux_login": median(kvms) / gauge, "lab": facts, "init_stages": stages}
    # 2 + 4. the same fixture cell, native and in a warm lab, alternating
    native, lab_runs = [], []
    boot("fixture-pvh", "builtin", "lab", scratch)            # warms the lab (its cold start is item 1)
    for _ in range(rounds):
        native.append(boot("fixture-pvh", "builtin", "native", scratch))
        lab_runs.append(boot("fixture-pvh", "builtin", "lab", scratch))
    out["warm_cell_overhead"] = {
        "lab_overhead_s": median([r["overhead_s"] for r in lab_runs]),
        "lab_start_s": median([r["start_s"] for r in lab_runs]), "lab_rest_s": median([r["rest_s"] for r in lab_runs]),
        "native_start_s": median([r["start_s"] for r in native]), "native_rest_s": median([r["rest_s"] for r in native]),
        "native_overhead_s": median([r["overhead_s"] for r in native]),
        "ratio_lab_native": median([r["overhead_s"] for r in lab_runs]) / median([r["overhead_s"] for r in native]),
        "goal_s": 1.0}
    out["fixture_native_vs_lab"] = {
        "native_last_milestone_s": median([r["last_milestone_s"] for r in native]),
        "lab_last_milestone_s": median([r["last_milestone_s"] for r in lab_runs]),
        "ratio_lab_native": median([r["last_milestone_s"] for r in lab_runs])
        / median([r["last_milestone_s"] for r in native])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--linux", action=argparse.BooleanOptionalAction, default=True,
                    help="include the Linux builtin-vs-qemu-kvm comparison (minutes under TCG)")
    ap.add_argument("--linux-only", action="store_true", help="only item 3 (the Linux comparison)")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args()
    out: dict = {"load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        scratch = Path(tmp)
        if not args.linux_only:
            measure_lab_and_fixture(args.rounds, scratch, out)
        # 3. Linux to login: builtin vs qemu-kvm in the same warm lab
        if args.linux:
            figures: dict[str, list] = {"builtin": [], "unbatched": [], "qemu_kvm": []}
            failures: list[str] = []
            for _ in range(args.rounds):
                linux_round(scratch, figures, failures)
            login = {name: median([r["last_milestone_s"] for r in runs]) for name, runs in figures.items()}
            out["linux_login_in_lab"] = {
                "builtin_s": login["builtin"], "builtin_unbatched_s": login["unbatched"], "qemu_kvm_s": login["qemu_kvm"],
                "ratio_builtin_qemu_kvm": login["builtin"] / login["qemu_kvm"],
                "ratio_unbatched_qemu_kvm": login["unbatched"] / login["qemu_kvm"],
                "ratio_builtin_unbatched": login["builtin"] / login["unbatched"], "goal": 1.0,
                "io_exits": {name: median([r["io_exits"] for r in figures[name]]) for name in ("builtin", "unbatched")},
                "rounds": {name: [r["last_milestone_s"] for r in runs] for name, runs in figures.items()},
                "failed": failures}
        pool.close_all()
    out["load_avg_end"] = os.getloadavg()
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


def report(out: dict) -> None:
    print(f"load average at start {out['load_avg_start'][0]:.1f}, at end {out['load_avg_end'][0]:.1f} (2 cores)")
    if "cold_start" in out:
        report_lab_and_fixture(out)
    if "linux_login_in_lab" in out:
        report_linux(out["linux_login_in_lab"])


def report_lab_and_fixture(out: dict) -> None:
    c = out["cold_start"]
    print(f"lab cold start -> usable /dev/kvm : {c['kvm_ready_s']:.2f} s  ({c['vs_goal_6s']:.2f}x the 6 s goal; "
          f"{c['vs_qemu_tcg_linux_login']:.2f}x QEMU TCG Linux to login here, {c['qemu_tcg_linux_login_s']:.2f} s)")
    lab = c["lab"]
    if lab.get("kernel_uptime_at_kvm_s") is not None and c["kvm_ready_s"] == c["kvm_ready_s"]:
        print(f"  of which before the lab kernel ran: {c['kvm_ready_s'] - lab['kernel_uptime_at_kvm_s']:.2f} s "
              f"(QEMU, SeaBIOS, loading), kernel + init to /dev/kvm: {lab['kernel_uptime_at_kvm_s']:.2f} s")
    for kvm_s, stages in zip(c["rounds"], c.get("init_stages", [])):
        print(f"  round at {kvm_s:.2f} s: {stage_line(stages)}")
    print(f"lab cold start -> agent ready     : {c['agent_ready_s']:.2f} s  (imports under TCG: "
          f"{lab.get('agent_import_s')} s)")
    w = out["warm_cell_overhead"]
    print(f"warm-lab per-cell overhead        : {w['lab_overhead_s']:.2f} s  (native {w['native_overhead_s']:.2f} s, "
          f"{w['ratio_lab_native']:.2f}x; goal <= 1 s)")
    print(f"  to the guest's first instruction: {w['lab_start_s']:.2f} s (native {w['native_start_s']:.2f} s), "
          f"setup and stop: {w['lab_rest_s']:.2f} s (native {w['native_rest_s']:.2f} s)")
    f = out["fixture_native_vs_lab"]
    print(f"fixture-pvh to login, native/lab  : {f['native_last_milestone_s']:.2f} s / {f['lab_last_milestone_s']:.2f} s"
          f"  ({f['ratio_lab_native']:.1f}x)")


def stage_line(stages: list) -> str:
    """The lab kernel's boot to init's first line, then each init step's own seconds (lab uptime)."""
    if not stages:
        return "no init stages reported"
    parts, last = [f"kernel to init {stages[0][0]:.2f} s"], stages[0][0]
    for up, name in stages[1:]:
        parts.append(f"{name} {up - last:.2f}")
        last = up
    return ", ".join(parts)


def report_linux(x: dict) -> None:
    print(f"Linux PVH to login in the lab     : builtin {x['builtin_s']:.1f} s, qemu-kvm {x['qemu_kvm_s']:.1f} s"
          f"  ({x['ratio_builtin_qemu_kvm']:.2f}x; goal <= 1.0x)")
    print(f"  builtin, every COM1 write exits : {x['builtin_unbatched_s']:.1f} s  ({x['ratio_unbatched_qemu_kvm']:.2f}x "
          f"qemu-kvm; the guest file's batching: {x['ratio_builtin_unbatched']:.2f}x of it, io exits "
          f"{x['io_exits']['builtin']:.0f} vs {x['io_exits']['unbatched']:.0f})")
    for failure in x["failed"]:
        print(f"  left out (did not pass): {failure}")


if __name__ == "__main__":
    sys.exit(main())
