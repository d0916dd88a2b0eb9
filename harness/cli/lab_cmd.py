"""`harness lab build|status|shell`: the nested lab, for a person.

    harness lab build            build the lab's kernel and initramfs (Debian packages -> cache)
    harness lab status [--boot]  what the lab is made of and whether it can run here; --boot starts
                                 one and reports its KVM (kind, CPU model, kernel, cold start)
    harness lab shell            start a lab and attach a busybox shell on it (Ctrl-D leaves)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="the nested lab: a real KVM inside QEMU TCG (build, status, shell)")
    lsub = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    for name, func, text in (("build", cmd_build, "build the lab's kernel and initramfs"),
                             ("status", cmd_status, "what the lab is made of; --boot starts one and reports its KVM"),
                             ("shell", cmd_shell, "start a lab and attach a busybox shell")):
        p = lsub.add_parser(name, help=text)
        p.add_argument("--arch", default=platform.machine(), help="the lab's arch (default: this machine's)")
        if name == "build":
            p.add_argument("--rebuild", action="store_true")
        if name == "status":
            p.add_argument("--boot", action="store_true", help="start a lab and report what it runs")
            p.add_argument("--json", action="store_true", help="print the facts as JSON")
        p.set_defaults(func=func)


def cmd_build(args: argparse.Namespace) -> int:
    from harness.assets.lab import lab_params
    from harness.assets.recipes import build_asset
    params = lab_params(args.arch)
    for name in dict.fromkeys((params.kernel_asset, params.boot_kernel_asset, params.initramfs_asset)):
        entry = build_asset(name, rebuild=args.rebuild)
        print(f"{name}: {entry.sha256[:16]} {entry.size:,} B {entry.provenance.get('package') or ''} "
              f"{entry.provenance.get('version') or ''}".rstrip())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from harness.assets.cache import AssetCache
    from harness.assets.lab import lab_params
    from harness.hosts.lab import Lab, check_lab_python, check_qemu
    params = lab_params(args.arch)
    cache = AssetCache()
    facts: dict = {"arch": params.arch, "qemu": check_qemu(params), "machine": params.machine, "cpu": params.cpu,
                   "accel": params.accel, "kernel_package": params.kernel_meta, "modules": list(params.modules)}
    for name in dict.fromkeys((params.kernel_asset, params.boot_kernel_asset, params.initramfs_asset)):
        entry = cache.lookup(name)
        facts[name] = (f"{entry.sha256[:16]} ({entry.provenance.get('kernel_release') or entry.provenance.get('recipe')})"
                       if entry else f"not built: harness lab build --arch {args.arch}")
    check_lab_python()
    if args.boot:
        lab = Lab(params).start()
        try:
            facts["lab"] = lab.describe()
        finally:
            lab.close()
    if args.json:
        print(json.dumps(facts, indent=1))
    else:
        for key, value in facts.items():
            print(f"{key:22} {value}")
    return 0


def cmd_shell(args: argparse.Namespace) -> int:
    from harness.assets.lab import lab_params
    from harness.hosts.lab import Lab
    lab = Lab(lab_params(args.arch))
    print(f"starting the lab ({lab.params.qemu_binary} -M {lab.params.machine} -cpu {lab.params.cpu}) ...",
          file=sys.stderr)
    lab.start()
    try:
        print(f"lab up in {lab.cold_start_s:.1f} s: {lab.describe()['kind']}, kernel {lab.facts.get('kernel_release')}; "
              "the host's /usr, the harness and its site-packages are mounted read-only. Ctrl-D leaves.",
              file=sys.stderr)
        done = threading.Event()
        lab.on_console = lambda chunk: os.write(1, chunk)
        lab.send({"type": "shell"})
        threading.Thread(target=_forward_stdin, args=(lab, done), daemon=True).start()
        while not done.is_set() and lab.dead is None:
            try:
                msg = lab.control.get(timeout=0.2)
            except Exception:
                continue
            if msg.get("type") == "shell-exited":
                break
    finally:
        lab.close()
    return 0


def _forward_stdin(lab, done: threading.Event) -> None:
    while True:
        data = os.read(0, 4096)
        if not data:
            lab.socks["console"].sendall(b"exit\n")
            time.sleep(1.0)
            done.set()
            return
        lab.socks["console"].sendall(data)
