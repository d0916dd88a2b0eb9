"""`harness assets list|build|verify`, `harness fetch GUEST`, `harness import GUEST FILE`."""
from __future__ import annotations

import argparse
import sys

from harness.model.tiers import QUICK, TIERS


def register(sub: argparse._SubParsersAction) -> None:
    assets = sub.add_parser("assets", help="build, list and verify cached guest assets")
    asub = assets.add_subparsers(dest="assets_command", metavar="ACTION", required=True)

    p = asub.add_parser("list", help="every recipe, and whether (and as what) it is cached")
    p.set_defaults(func=cmd_list)

    p = asub.add_parser("build", help="build assets from Debian packages (default: every quick-tier recipe)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--rebuild", action="store_true", help="build again even when cached")
    p.add_argument("--tier", choices=tuple(TIERS), default=QUICK,
                   help="without names: quick builds the quick recipes, nightly all of them")
    p.set_defaults(func=cmd_build)

    p = asub.add_parser("verify", help="re-hash every cached asset; corrupt ones are removed")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("fetch", help="download a guest's images (url sources) and check their checksums")
    p.add_argument("guest")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("import", help="take a file you downloaded for a guest into the cache")
    p.add_argument("guest")
    p.add_argument("file")
    p.add_argument("--role", choices=("kernel", "initrd", "disk", "firmware"), default=None,
                   help="which of the guest's sources the file is (default: matched by file name)")
    p.add_argument("--checksum-file", default=None, metavar="FILE",
                   help="the release's checksum file (SHA256, SHA512, CHECKSUM.SHA256), when the machine is offline")
    p.set_defaults(func=cmd_import)


def cmd_list(args: argparse.Namespace) -> int:
    from harness.assets.cache import AssetCache
    from harness.assets.recipes import RECIPES
    cache = AssetCache()
    print(f"cache: {cache.root}")
    for name in sorted(RECIPES):
        r = RECIPES[name]
        entry = cache.lookup(name)
        state = f"{entry.sha256[:16]}  {entry.size:>11,d} B" if entry else "not built"
        print(f"  {name:36s} {r.arch:8s} {r.kind:7s} {r.tier:8s} {state}")
        if entry and entry.provenance.get("version"):
            print(f"  {'':36s} {entry.provenance.get('package')} {entry.provenance.get('version')}")
    others = [n for n in cache.names() if n not in RECIPES and not n.startswith("deb.")]
    for name in others:
        entry = cache.lookup(name)
        if entry:
            print(f"  {name:36s} {'':8s} {'fetched':7s} {'':8s} {entry.sha256[:16]}  {entry.size:>11,d} B")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from harness.assets.recipes import NIGHTLY, RECIPES, build_asset, get_recipe
    names = args.names or [n for n, r in sorted(RECIPES.items()) if args.tier == NIGHTLY or r.tier != NIGHTLY]
    for name in names:
        get_recipe(name)  # unknown names fail before anything is built
    for name in names:
        print(f"building {name} ...", flush=True)
        entry = build_asset(name, rebuild=args.rebuild)
        version = entry.provenance.get("version") or entry.provenance.get("kernel", {}).get("version", "")
        print(f"  {name}: sha256 {entry.sha256}  {entry.size:,d} B  {version}".rstrip())
        print(f"  {entry.path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.assets.cache import AssetCache
    cache = AssetCache()
    bad = 0
    for name in cache.names():
        ok = cache.verify(name) is not None
        bad += not ok
        print(f"  {'ok     ' if ok else 'CORRUPT'} {name}" + ("" if ok else "  (removed; build or fetch again)"))
    removed = cache.sweep_tmp()
    if removed:
        print(f"  removed {removed} stale temp dir(s)")
    return 1 if bad else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from harness.assets.sources import fetch
    entries = fetch(args.guest, progress=lambda line: print(f"fetching {line}", flush=True))
    for e in entries:
        print(f"  {e.name}: sha256 {e.sha256}  {e.size:,d} B")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from harness.assets.sources import import_file
    if args.role:
        entry = import_file(args.guest, args.role, args.file, checksum_file=args.checksum_file)
    else:
        entry = import_file(args.guest, args.file, checksum_file=args.checksum_file)
    print(f"  {entry.name}: sha256 {entry.sha256}  {entry.size:,d} B")
    checksum = str(entry.provenance.get("checksum", ""))
    if checksum.startswith("unchecked"):
        print(f"warning: {checksum}", file=sys.stderr)
    return 0


__all__ = ["register"]
