"""How long the built-in VMM child takes from being started to the guest's first instruction.

    python bench/vmm_start/run.py [--runs 15] [--tree PATH]

The guest is a raw real-mode image whose *first* instruction is `out 0x80, al`: the POST port
(harness.devices.post) timestamps that write (CLOCK_MONOTONIC, shared by every process) in the
child's events.jsonl. The bench takes the time just before it spawns
`python -m harness.backends.builtin_vm SPEC.json` exactly as the runner does (BuiltinBackend.start),
waits for the POST_CODE event, then stops the child. Per run it reports

  start -> VM_START     interpreter start, imports, KVM VM + devices + loader (the child's setup)
  start -> first insn   the figure the target (<= 150 ms) is about
  reference             a bare `python -c` of the same interpreter, spawned the same way, that
                        writes the time of its first statement: the floor no Python VMM can beat
  child CPU             the child's own CPU time until VM_START (time.process_time in the
                        VM_START event): what start-up costs whatever the machine's load

Runs alternate child and reference, and the median of each is reported with the ratio, since the
machine is shared. `--tree PATH` measures another checkout of the harness (e.g. an older commit
exported with `git archive`), with the same guest and reference.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))     # the client side of the fork server is this checkout's
# out 0x80, al ; cli ; 1: hlt ; jmp 1b   (real mode, loaded at 0x10000, entered at its first byte)
GUEST = bytes.fromhex("e680" "fa" "f4" "ebfd")
POST_CODE, VM_START = "post-code", "vm-start"


def spec(work: Path) -> Path:
    """The spec file BuiltinBackend.start writes for a raw cell (same keys, read by request_from_json)."""
    kernel = work / "first-insn.bin"
    kernel.write_bytes(GUEST)
    data = {"cell_id": "bench/vmm-start", "guest": "first-insn", "family": "fixture", "arch": "x86_64",
            "boot": "raw", "kernel": str(kernel), "initrd": None, "disk": None, "cmdline": "",
            "memory_mib": 16, "vcpus": 1, "cpu_profile": "default", "gap_policy": "emulate",
            "workdir": str(work), "options": {}}
    path = work / "builtin-spec.json"
    path.write_text(json.dumps(data))
    return path


def events(path: Path) -> list[dict]:
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def one_child(tree: Path, work: Path) -> tuple[float, float, float | None]:
    """(start -> VM_START, start -> first guest instruction, the child's CPU time at VM_START)."""
    for stale in work.glob("*.json*"):
        stale.unlink()
    spec_path = spec(work)
    events_path = work / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "harness.backends.builtin_vm", str(spec_path)]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, cwd=work, start_new_session=True)   # cwd: -m puts it first on sys.path
    try:
        return wait_first_insn(events_path, t0, lambda: proc.poll() is None)
    finally:
        proc.terminate()
        proc.wait(10)
        events_path.unlink(missing_ok=True)


def wait_first_insn(events_path: Path, t0: float, alive: Callable[[], bool]) -> tuple[float, float, float | None]:
    deadline = t0 + 30
    while time.monotonic() < deadline:
        evs = events(events_path)
        first = next((e for e in evs if e.get("type") == POST_CODE), None)
        if first is not None:
            started = next((e for e in evs if e.get("type") == VM_START), {"t": first["t"], "data": {}})
            return started["t"] - t0, first["t"] - t0, started["data"].get("startup_cpu_s")
        if not alive():
            raise SystemExit("the VMM child exited before the guest's first instruction")
        time.sleep(0.002)
    raise SystemExit("no POST write from the guest within 30 s")


def one_forked(work: Path, env: dict[str, str]) -> tuple[float, float, float | None]:
    """The same, with the child forked by the VMM server (harness.backends.vmm_server), as the
    built-in backend starts it: from the request to the server to the guest's first instruction."""
    from harness.backends import vmm_server
    for stale in work.glob("*.json*"):
        stale.unlink()
    spec_path = spec(work)
    events_path = work / "events.jsonl"
    spawn = vmm_server.spawner(spec_path, env)
    if spawn is None:
        raise SystemExit("the VMM server did not start")
    with open(work / "stderr.log", "wb") as err:
        t0 = time.monotonic()
        child = spawn(err.fileno())
    try:
        return wait_first_insn(events_path, t0, lambda: child.poll() is None)
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(10)
        events_path.unlink(missing_ok=True)


def one_reference() -> tuple[float, float]:
    """(start -> first statement, CPU time by then) of a bare interpreter started the same way."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", "import time; print(time.monotonic(), time.process_time())"],
                         capture_output=True, text=True, check=True)
    wall, cpu = map(float, out.stdout.split())
    return wall - t0, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--tree", type=Path, default=REPO, help="harness checkout to measure (default: this one)")
    args = ap.parse_args()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise SystemExit("needs /dev/kvm")
    setup, first, cpu, ref, ref_cpu, forked, forked_cpu = [], [], [], [], [], [], []
    env = {**os.environ, "PYTHONPATH": str(args.tree), "PYTHONUNBUFFERED": "1"}
    fork = (args.tree / "harness" / "backends" / "vmm_server.py").exists()
    with tempfile.TemporaryDirectory(prefix="vmm-start-") as tmp:
        work = Path(tmp)
        one_child(args.tree, work)          # warm the page cache and the .pyc files once
        if fork:
            one_forked(work, env)           # and start the server once (the runner does, per process)
        for _ in range(args.runs):
            s, f, c = one_child(args.tree, work)
            setup.append(s)
            first.append(f)
            if c is not None:
                cpu.append(c)
            r, rc = one_reference()
            ref.append(r)
            ref_cpu.append(rc)
            if fork:
                _, f, c = one_forked(work, env)
                forked.append(f)
                if c is not None:
                    forked_cpu.append(c)
    med = statistics.median
    print(f"tree: {args.tree}  runs: {args.runs}  (medians; min..max)")
    print(f"  exec'd child: start -> VM_START        : {med(setup) * 1e3:7.1f} ms  ({min(setup) * 1e3:.1f}..{max(setup) * 1e3:.1f})")
    print(f"  exec'd child: start -> first guest insn: {med(first) * 1e3:7.1f} ms  ({min(first) * 1e3:.1f}..{max(first) * 1e3:.1f})")
    if forked:
        print(f"  forked child: request -> first insn    : {med(forked) * 1e3:7.1f} ms  "
              f"({min(forked) * 1e3:.1f}..{max(forked) * 1e3:.1f})   <- what the built-in backend does")
    print(f"  reference: bare python -c  : {med(ref) * 1e3:7.1f} ms  ({min(ref) * 1e3:.1f}..{max(ref) * 1e3:.1f})")
    print(f"  ratio exec'd first insn / reference: {med(first) / med(ref):.2f}x"
          + (f", forked: {med(forked) / med(ref):.2f}x" if forked else "") + "   target: first insn <= 150 ms")
    if cpu:
        print(f"  exec'd child CPU until VM_START : {med(cpu) * 1e3:7.1f} ms  (reference CPU {med(ref_cpu) * 1e3:.1f} ms)")
    if forked_cpu:
        print(f"  forked child CPU until VM_START : {med(forked_cpu) * 1e3:7.1f} ms  (a fork starts at 0: the imports were the server's, once)")
    print(f"  load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
