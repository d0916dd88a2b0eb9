"""Exit-cost benchmark: the same real-mode guest (N `out` instructions, then hlt) run by
  1. a C program looping on KVM_RUN (built here with gcc: the floor), and
  2. the harness's Python run loop (harness.kvm.machine, with a real harness.devices Bus),
then the per-exit cost of each, their ratio (target <= 1.15), and the serial cost in exits
per byte with KVM_CAP_COALESCED_PIO on. Usage: python bench/exit_cost/run.py [--exits N] [--repeat R]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from harness import layout  # noqa: E402
from harness.boot.raw import GUEST_LOAD  # noqa: E402


def out_loop_guest(n: int) -> bytes:
    """Real mode: mov ecx, n / mov dx, 0x10 / 1: out dx, al / dec ecx / jnz 1b / hlt."""
    return (b"\x66\xb9" + n.to_bytes(4, "little") + b"\xba\x10\x00" + b"\xee" + b"\x66\x49" + b"\x75\xfb" + b"\xf4")


def serial_guest(n: int) -> bytes:
    """Real mode: write n bytes 'x' to COM1 THR without polling LSR, then hlt."""
    port = layout.COM1_PORT.to_bytes(2, "little")
    return (b"\x66\xb9" + n.to_bytes(4, "little") + b"\xba" + port + b"\xb0\x78" + b"\xee" + b"\x66\x49"
            + b"\x75\xfb" + b"\xf4")


def build_c(workdir: Path) -> Path:
    exe = workdir / "kvm_out_loop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "kvm_out_loop.c")], check=True)
    return exe


def run_c(exe: Path, guest: Path) -> tuple[int, float]:
    out = subprocess.run([str(exe), str(guest), hex(GUEST_LOAD)], check=True, capture_output=True, text=True).stdout
    fields = dict(item.split("=") for item in out.split())
    return int(fields["exits"]), float(fields["seconds"])


class _Sink:
    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass


def run_python(code: bytes, devices: str = "sink", coalesce: bool = True) -> tuple[dict[str, int], float, int]:
    from harness.devices.bus import Bus
    from harness.devices.context import DeviceContext
    from harness.devices.uart16550 import Uart16550
    from harness.kvm.machine import Machine, MachineConfig
    from harness.boot.raw import load_raw
    from harness.memory import GuestRam
    io, mmio = Bus("io"), Bus("mmio")
    out = bytearray()
    if devices == "sink":
        io.register(0x10, 1, _Sink(), "sink")
    else:
        ctx = DeviceContext(set_irq=lambda g, lvl: None, emit=lambda e: None)
        io.register(layout.COM1_PORT, 8, Uart16550(ctx, layout.COM1_IRQ, out.extend), "com1")
    ram = GuestRam(4 * layout.MiB)
    m = Machine(ram, io, mmio, MachineConfig(irqchip=False, pit=False, coalesce_serial=coalesce))
    entry, _ = load_raw(ram, code)
    m.set_entry(entry)
    t0 = time.perf_counter()
    m.start()
    info = m.wait(600)
    elapsed = time.perf_counter() - t0
    if info is None or info.reason != "halt":
        raise SystemExit(f"python run did not halt: {info}")
    counts = m.exit_counts()
    m.close()
    ram.close()
    return counts, elapsed, len(out)


def run_bare_python(code: bytes) -> float:
    """Seconds per exit of the least Python can do: KVM_RUN via cffi + read exit_reason, nothing else.
    Shows how much of the gap to C is the interpreter itself rather than the harness's run loop."""
    import struct
    from harness.kvm import ffi as k
    from harness.boot.raw import load_raw
    from harness.kvm.vm import Vm
    from harness.memory import GuestRam
    ram = GuestRam(4 * layout.MiB)
    vm = Vm(ram, irqchip=False, pit=False)
    vcpu = vm.create_vcpu()
    entry, _ = load_raw(ram, code)
    vcpu.set_entry(entry)
    ioctl, req, zero = k.libc.ioctl, k.ffi.cast("unsigned long", k.KVM_RUN), k.ffi.cast("unsigned long", 0)
    head, buf, fd, n = struct.Struct("<I").unpack_from, vcpu.run_buffer, vcpu.fd, 0
    t0 = time.perf_counter()
    while ioctl(fd, req, zero) >= 0 and head(buf, 8)[0] == k.KVM_EXIT_IO:
        n += 1
    elapsed = time.perf_counter() - t0
    vm.close()
    return elapsed / max(n, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exits", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--serial-bytes", type=int, default=20_000)
    args = ap.parse_args()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("error: /dev/kvm is not usable here (fix: run on a host with KVM, in group kvm)", file=sys.stderr)
        return 2
    from harness.kvm.system import host_info
    host = host_info()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exe = build_c(work)
        guest = work / "guest.bin"
        guest.write_bytes(out_loop_guest(args.exits))
        c_runs, py_runs, bare_runs = [], [], []
        for _ in range(args.repeat):  # interleaved, best of R: the host is shared
            exits, secs = run_c(exe, guest)
            c_runs.append(secs / exits)
            counts, secs, _ = run_python(out_loop_guest(args.exits))
            py_runs.append(secs / counts["io"])
            bare_runs.append(run_bare_python(out_loop_guest(args.exits)))
    c_us, py_us, bare_us = min(c_runs) * 1e6, min(py_runs) * 1e6, min(bare_runs) * 1e6
    print(f"host: {host['kvm_module']} (hardware_backed={host['hardware_backed']}), {host['cpu_model']}")
    print(f"guest: real mode, {args.exits} x `out dx, al` to a port claimed by a no-op device; best of {args.repeat}")
    print(f"C loop on KVM_RUN      : {c_us:8.3f} us/exit")
    print(f"Python run loop        : {py_us:8.3f} us/exit")
    print(f"ratio Python / C       : {py_us / c_us:8.3f}x  (target <= 1.15x)")
    print(f"bare Python KVM_RUN    : {bare_us:8.3f} us/exit ({bare_us / c_us:.3f}x C): the interpreter's own floor")
    for coalesce in (True, False):
        counts, secs, nbytes = run_python(serial_guest(args.serial_bytes), devices="uart", coalesce=coalesce)
        io_exits = counts.get("io", 0)
        label = "coalesced PIO on " if coalesce else "coalesced PIO off"
        print(f"serial, {label}: {nbytes} bytes, {io_exits} io exits = {io_exits / max(nbytes, 1):.4f} exits/byte, "
              f"{secs / max(nbytes, 1) * 1e6:.2f} us/byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
