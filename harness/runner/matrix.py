"""matrix.yaml x guests/*.yaml -> cells.

A cell is one boot: guest x backend x CPU profile x gap policy x vCPUs x memory. Expansion is
deterministic (sorted), so every pytest-xdist worker and every CI shard sees the same list.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.arch.x86_64.cpuid import PROFILES as CPU_PROFILE_TABLE
from harness.errors import ConfigError
from harness.model.gap import GAP_POLICIES
from harness.model.tiers import QUICK, TIERS, tiers_run_by
from harness.model.verdict import KnownIssue
from harness.runner import yamlfile as y
from harness.runner.guestfile import BACKENDS, GuestSpec
from harness.runner.known_issues import parse_known_issue

CPU_PROFILES = tuple(CPU_PROFILE_TABLE)
OUTCOME_EXPECTATIONS = ("pass", "fail", "gap", "timeout")
MATRIX_KEYS = ("version", "timeout_scale", "retries", "fail_on_new_gaps", "entries", "exclude", "include",
               "overrides", "hang_timeout")
ENTRY_KEYS = ("guests", "backends", "hosts", "cpu_profiles", "gap_policies", "vcpus", "memory", "tier")
CELL_AXES = ("guest", "backend", "host", "cpu_profile", "gap_policy", "vcpus", "memory", "tier")
OVERRIDE_SET_KEYS = ("timeout_scale", "expect", "retries", "fail_on_new_gaps", "cmdline_append", "hang_timeout",
                     "known_issue")


@dataclass
class Cell:
    guest: GuestSpec
    backend: str
    cpu_profile: str
    gap_policy: str
    vcpus: int
    memory: int
    tier: str
    timeout_scale: float = 1.0
    retries: int = 1
    fail_on_new_gaps: bool = False
    expect: str = "pass"            # the outcome this cell is expected to have (e.g. gap on a host with holes)
    cmdline_append: str = ""
    hang_timeout: float | None = None
    known_issue: KnownIssue | None = None     # an override's tracked reason for failing, until a date
    host: str = "native"            # where the backend's VM child runs: native | lab (harness.hosts)

    @property
    def id(self) -> str:
        # A native cell keeps its historical id; any other host is part of it, so results (and
        # gap baselines) from different hosts can never be taken for the same cell.
        where = "" if self.host == "native" else f"+{self.host}"
        return (f"{self.guest.name}@{self.backend}{where}/{self.cpu_profile}/{self.gap_policy}"
                f"/{self.vcpus}c/{self.memory}M")

    def axes(self) -> dict[str, Any]:
        return {"guest": self.guest.name, "backend": self.backend, "host": self.host, "cpu_profile": self.cpu_profile,
                "gap_policy": self.gap_policy, "vcpus": self.vcpus, "memory": self.memory, "tier": self.tier}

    def params(self) -> dict[str, Any]:
        return {"host": self.host, "cpu_profile": self.cpu_profile, "gap_policy": self.gap_policy, "vcpus": self.vcpus,
                "memory_mib": self.memory, "tier": self.tier, "timeout_scale": self.timeout_scale,
                "expect": self.expect, "family": self.guest.family, "arch": self.guest.arch,
                "boot": self.guest.boot}


@dataclass
class Matrix:
    path: Path
    timeout_scale: float = 1.0
    retries: int = 1
    fail_on_new_gaps: bool = False
    entries: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    host_override: str | None = None   # a run's --host: replaces every entry's `hosts:`

    def cells(self, guests: dict[str, GuestSpec], tier: str = "quick") -> list[Cell]:
        """Expanded, filtered and ordered cells of `tier` (nightly includes quick)."""
        wanted_tiers = tiers_run_by(tier)
        cells: dict[str, Cell] = {}
        for entry in self.entries + self.include:
            for cell in self._expand(entry, guests):
                if cell.tier in wanted_tiers and not self._excluded(cell):
                    cells.setdefault(cell.id, cell)
        for cell in cells.values():
            self._apply_overrides(cell)
        return [cells[k] for k in sorted(cells)]

    def _expand(self, entry: dict[str, Any], guests: dict[str, GuestSpec]) -> list[Cell]:
        out = []
        names = entry["guests"]
        for name in sorted(guests):
            if not any(fnmatch.fnmatchcase(name, pat) for pat in names):
                continue
            guest = guests[name]
            for backend in entry.get("backends") or ["builtin"]:
                if backend not in guest.backends:
                    continue
                hosts = [self.host_override] if self.host_override else entry.get("hosts") or ["native"]
                for host in _hosts(hosts, backend):
                    for profile in entry.get("cpu_profiles") or ["default"]:
                        for policy in entry.get("gap_policies") or ["emulate"]:
                            for vcpus in entry.get("vcpus") or [guest.vcpus]:
                                for memory in entry.get("memory") or [guest.memory]:
                                    out.append(Cell(guest, backend, profile, policy, int(vcpus), int(memory),
                                                    entry.get("tier", "quick"), self.timeout_scale, self.retries,
                                                    self.fail_on_new_gaps, host=host))
        return out

    def _excluded(self, cell: Cell) -> bool:
        return any(_matches(rule, cell) for rule in self.exclude)

    def _apply_overrides(self, cell: Cell) -> None:
        for match, settings in self.overrides:
            if _matches(match, cell):
                for key, value in settings.items():
                    setattr(cell, key, value)
        # A slow host multiplies every timeout on top of the matrix and overrides.
        cell.timeout_scale *= env_timeout_scale()


def _hosts(hosts: list[str], backend: str) -> list[str]:
    """Concrete hosts of an entry for `backend`: auto resolved here; a backend the lab cannot serve
    stays native (so `--host lab` moves every built-in cell into the lab and leaves QEMU TCG here)."""
    from harness.hosts.select import NATIVE, can_run, resolve_host
    out: list[str] = []
    for host in hosts:
        concrete = resolve_host(host, backend)
        concrete = concrete if can_run(concrete, backend) else NATIVE
        if concrete not in out:
            out.append(concrete)
    return out


def env_timeout_scale() -> float:
    value = os.environ.get("HARNESS_TIMEOUT_SCALE", "1")
    try:
        scale = float(value)
    except ValueError:
        raise ConfigError(f"HARNESS_TIMEOUT_SCALE={value!r} is not a number", "set it to e.g. 2") from None
    if scale <= 0:
        raise ConfigError(f"HARNESS_TIMEOUT_SCALE={value!r} must be positive", "set it to e.g. 2")
    return scale


def _matches(rule: dict[str, Any], cell: Cell) -> bool:
    axes = cell.axes()
    return all(fnmatch.fnmatchcase(str(axes[k]), str(v)) for k, v in rule.items())


def find_cell(cells: list[Cell], wanted: str) -> Cell:
    """The cell with id `wanted`, or the only one whose id contains it."""
    exact = [c for c in cells if c.id == wanted]
    hits = exact or [c for c in cells if wanted in c.id]
    if len(hits) != 1:
        raise ConfigError(f"{wanted!r} names {len(hits)} cells" + (f": {', '.join(c.id for c in hits[:5])}" if hits else ""),
                          "give one cell id as `harness list --tier nightly` shows it")
    return hits[0]


def shard_of(cell_id: str, count: int) -> int:
    """Stable shard index (0-based) of a cell: the same on every machine and Python version."""
    digest = hashlib.sha256(cell_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(cells: list[Cell], shard: str | None) -> list[Cell]:
    """`shard` is "K/N" (1-based K): the cells whose stable hash falls in shard K of N."""
    if not shard:
        return cells
    k, n = parse_shard(shard)
    return [c for c in cells if shard_of(c.id, n) == k - 1]


def parse_shard(shard: str) -> tuple[int, int]:
    try:
        k_s, n_s = shard.split("/")
        k, n = int(k_s), int(n_s)
    except ValueError:
        raise ConfigError(f"bad shard {shard!r}", "write --shard K/N, e.g. --shard 1/4") from None
    if not (1 <= k <= n):
        raise ConfigError(f"bad shard {shard!r}: K must be between 1 and N", "write --shard K/N with 1 <= K <= N")
    return k, n


# -- loading ---------------------------------------------------------------------------------
def load_matrix(path: Path, guests: dict[str, GuestSpec]) -> Matrix:
    data = y.load_yaml(path)
    if not isinstance(data, y.YMap):
        raise ConfigError(f"{path}:1: the matrix must be a mapping", "see docs/guest-files.md")
    what = "matrix"
    y.check_keys(data, MATRIX_KEYS, what, required=("entries",))
    if y.get_typed(data, "version", int, 1, what) != 1:
        raise y.fail(data, "version", "unsupported matrix version", "use version: 1")
    matrix = Matrix(path=path,
                    timeout_scale=float(y.get_typed(data, "timeout_scale", (int, float), 1.0, what)),
                    retries=y.get_typed(data, "retries", int, 1, what),
                    fail_on_new_gaps=y.get_typed(data, "fail_on_new_gaps", bool, False, what))
    if matrix.timeout_scale <= 0:
        raise y.fail(data, "timeout_scale", "timeout_scale must be positive", "e.g. timeout_scale: 2")
    matrix.entries = [_entry(e, lst, i, guests, "entries") for lst, i, e in _items(data, "entries")]
    matrix.include = [_include(e, lst, i, guests) for lst, i, e in _items(data, "include")]
    matrix.exclude = [_rule(e, f"matrix.exclude[{i}]") for _, i, e in _items(data, "exclude")]
    for _, i, o in _items(data, "overrides"):
        w = f"matrix.overrides[{i}]"
        y.check_keys(o, ("match", "set"), w, required=("match", "set"))
        settings = y.require_map(o["set"], o, "set", f"{w}.set")
        y.check_keys(settings, OVERRIDE_SET_KEYS, f"{w}.set")
        if "expect" in settings and settings["expect"] not in OUTCOME_EXPECTATIONS:
            raise y.fail(settings, "expect", f"{w}.set.expect is {settings['expect']!r}",
                         f"allowed: {', '.join(OUTCOME_EXPECTATIONS)}")
        values = dict(settings)
        if "known_issue" in settings:
            values["known_issue"] = parse_known_issue(settings["known_issue"], settings, f"{w}.set.known_issue")
        matrix.overrides.append((_rule(y.require_map(o["match"], o, "match", f"{w}.match"), f"{w}.match"),
                                 values))
    return matrix


def _items(data: y.YMap, key: str) -> list[tuple[Any, int, y.YMap]]:
    items = data.get(key) or []
    if not isinstance(items, list):
        raise y.fail(data, key, f"matrix.{key} must be a list", "write a YAML list of mappings")
    return [(items, i, y.require_map(e, items, i, f"matrix.{key}[{i}]")) for i, e in enumerate(items)]


def _entry(e: y.YMap, lst: Any, i: int, guests: dict[str, GuestSpec], section: str) -> dict[str, Any]:
    w = f"matrix.{section}[{i}]"
    y.check_keys(e, ENTRY_KEYS, w, required=("guests",))
    out: dict[str, Any] = {"guests": y.get_str_list(e, "guests", [], w)}
    for pat in out["guests"]:
        if not any(fnmatch.fnmatchcase(g, pat) for g in guests):
            raise y.fail(e, "guests", f"{w}: no guest file matches {pat!r}",
                         f"known guests: {', '.join(sorted(guests)) or 'none (guests/ is empty)'}")
    from harness.hosts.select import HOSTS
    for key, allowed in (("backends", BACKENDS), ("hosts", HOSTS), ("cpu_profiles", CPU_PROFILES),
                         ("gap_policies", GAP_POLICIES)):
        values = y.get_str_list(e, key, [], w)
        for v in values:
            if v not in allowed:
                raise y.fail(e, key, f"{w}.{key}: unknown value {v!r}", f"allowed: {', '.join(allowed)}")
        out[key] = values
    for key in ("vcpus", "memory"):
        values = y.get_str_list(e, key, [], w)
        for v in values:
            if not v.isdigit() or int(v) <= 0:
                raise y.fail(e, key, f"{w}.{key}: {v!r} is not a positive integer", "give positive integers")
        out[key] = [int(v) for v in values]
    out["tier"] = y.get_choice(e, "tier", tuple(TIERS), QUICK, w)
    return out


def _include(e: y.YMap, lst: Any, i: int, guests: dict[str, GuestSpec]) -> dict[str, Any]:
    w = f"matrix.include[{i}]"
    y.check_keys(e, ("guest", "backend", "host", "cpu_profile", "gap_policy", "vcpus", "memory", "tier"), w,
                 required=("guest", "backend"))
    as_entry = y.YMap({"guests": [e["guest"]], "backends": [e["backend"]]})
    as_entry.path, as_entry.line, as_entry.key_lines = e.path, e.line, e.key_lines
    for src, dst in (("host", "hosts"), ("cpu_profile", "cpu_profiles"), ("gap_policy", "gap_policies"), ("vcpus", "vcpus"),
                     ("memory", "memory"), ("tier", "tier")):
        if src in e:
            as_entry[dst] = e[src] if dst == "tier" else [e[src]]
            as_entry.key_lines[dst] = e.key_lines[src]
    return _entry(as_entry, lst, i, guests, "include")


def _rule(e: y.YMap, what: str) -> dict[str, Any]:
    y.check_keys(e, CELL_AXES, what)
    return {k: v for k, v in e.items()}
