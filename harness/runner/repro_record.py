"""What a cell records so that `harness repro` can run exactly that cell again.

The guest file is copied into the cell's work directory as it was when the cell ran
(`guests/<name>.yaml`, beside `baselines/<name>.yaml` when the guest had an accepted baseline:
the same relative layout the runner reads baselines from), so a later edit of guests/ or a
different checkout does not change what a repro runs. Ad-hoc guests (`harness boot`) have no
file: their GuestSpec is written out in the guest-file schema.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import shutil
import subprocess
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.runner.guestfile import GuestSpec
from harness.runner.matrix import Cell

REPO_ROOT = Path(__file__).resolve().parents[2]
GUEST_DIR, BASELINE_DIR = "guests", "baselines"
# The Cell fields that, with the guest, decide what a run does (the rest is derived from them).
CELL_FIELDS = ("backend", "host", "cpu_profile", "gap_policy", "vcpus", "memory", "tier", "timeout_scale", "retries",
               "fail_on_new_gaps", "expect", "cmdline_append", "hang_timeout")
# GuestSpec fields written out for a guest that has no file; the rest are not schema keys.
_NOT_SCHEMA = ("name", "path")


@functools.lru_cache(maxsize=1)
def harness_version() -> dict[str, Any]:
    """Package version and the git commit of this checkout (dirty when it has uncommitted edits)."""
    try:
        version = importlib.metadata.version("harness")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    out: dict[str, Any] = {"version": version, "commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return out
    if commit.returncode == 0:
        out["commit"] = commit.stdout.strip()
        out["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    return out


def guest_to_dict(guest: GuestSpec) -> dict[str, Any]:
    """A GuestSpec in the guest-file schema (docs/guest-files.md): load_guest reads it back."""
    out: dict[str, Any] = {}
    for f in fields(GuestSpec):
        if f.name in _NOT_SCHEMA:
            continue
        value = getattr(guest, f.name)
        if value is None or value == "" or value == [] or value == {}:
            continue
        if is_dataclass(value):
            value = asdict(value)
        elif isinstance(value, list):
            value = [asdict(item) if is_dataclass(item) else item for item in value]
        out[f.name] = value
    return out


def keep_guest_file(guest: GuestSpec, workdir: Path) -> Path:
    """Copy (or write out) the guest definition into the cell's work dir; returns the copy."""
    target = workdir / GUEST_DIR / f"{guest.name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    source = Path(guest.path)
    if source.suffix in (".yaml", ".yml") and source.is_file():
        shutil.copyfile(source, target)
        baseline = source.resolve().parent.parent / BASELINE_DIR / f"{guest.name}.yaml"
        if baseline.is_file():
            (workdir / BASELINE_DIR).mkdir(exist_ok=True)
            shutil.copyfile(baseline, workdir / BASELINE_DIR / baseline.name)
    else:
        target.write_text("# written by the harness from an ad-hoc guest (harness boot)\n"
                          + yaml.safe_dump(guest_to_dict(guest), sort_keys=False))
    return target


def repro_record(cell: Cell, guest_copy: Path, run_dir: Path, cmdline: str) -> dict[str, Any]:
    """The `repro` block of a CellResult; assets and host kind are added once they are known."""
    guest = cell.guest
    return {
        "guest_file": str(guest_copy.relative_to(run_dir)),
        "guest_sha256": hashlib.sha256(guest_copy.read_bytes()).hexdigest(),
        "guest_origin": str(guest.path),
        "cell": {name: getattr(cell, name) for name in CELL_FIELDS},
        "boot": guest.boot,
        "cmdline": cmdline,
        "timeouts": {"milestones": {m.name: m.timeout for m in guest.milestones},
                     "hang": cell.hang_timeout or guest.hang_timeout, "scale": cell.timeout_scale},
        "assets": {},
        "host_kind": None,
        "harness": harness_version(),
    }
