"""`setup.sh matrix` builds the quick-tier recipes, then runs the quick matrix offline: every asset a
quick cell needs (its guest's sources and, for host: lab, the lab's kernel, init and userland) must
be a quick recipe, or a fresh machine's default run fails on a missing asset."""
from __future__ import annotations

from pathlib import Path

from harness.assets.lab import lab_params
from harness.assets.recipes import RECIPES
from harness.model.tiers import QUICK
from harness.runner.guestfile import load_guests
from harness.runner.matrix import load_matrix

REPO = Path(__file__).resolve().parents[2]


def _assets_of(cell) -> set[str]:
    guest = cell.guest
    names = {src["asset"] for src in (guest.kernel, guest.initrd, guest.disk) if src and "asset" in src}
    if cell.host == "lab":
        params = lab_params(guest.arch)
        names |= {n for n in (params.kernel_asset, params.boot_asset, params.initramfs_asset,
                              params.userland_asset) if n}
    return names


def test_every_asset_of_a_quick_cell_is_a_quick_recipe():
    guests = load_guests(REPO / "guests")
    cells = load_matrix(REPO / "matrix.yaml", guests).cells(guests, "quick")
    needed = {name: cell.id for cell in cells for name in _assets_of(cell)}
    assert needed, "the quick matrix names no asset at all"
    unknown = sorted(name for name in needed if name not in RECIPES)
    assert unknown == [], unknown
    slow = {name: needed[name] for name in needed if RECIPES[name].tier != QUICK}
    assert slow == {}, f"quick cells need assets setup.sh matrix does not build: {slow}"
    assert {"lab-userland-arm64", "lab-kernel-amd64"} <= set(needed)   # both labs are in the quick tier
