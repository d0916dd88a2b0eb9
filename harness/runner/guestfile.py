"""Guest files (guests/<name>.yaml) -> GuestSpec, validated with file and line in every error.

The schema is documented in docs/guest-files.md; keep the two in step.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.registry import BACKEND_NAMES
from harness.boot import ALL_METHODS as ALL_BOOT_METHODS
from harness.console.crashes import WARNING_MODES
from harness.errors import ConfigError
from harness.model.builtin_options import BUILTIN_OPTIONS, option_problem
from harness.model.guest import Dialog, FailurePattern, Milestone
from harness.runner import yamlfile as y
from harness.runner.guest_shell import AutoLogin, GuestCommand, parse_auto_login, parse_commands

FAMILIES = ("linux", "netbsd", "openbsd", "freebsd", "fixture", "xen", "other")
ARCHES = ("x86_64", "aarch64")
BOOT_METHODS = ALL_BOOT_METHODS
BACKENDS = BACKEND_NAMES
DEFAULT_BACKENDS = ("builtin", "qemu-tcg", "qemu-kvm")
SOURCE_KINDS = ("path", "fixture", "asset", "url")
SOURCE_KEYS = ("path", "fixture", "asset", "url", "sha256", "sha512", "checksum_url", "checksum_format",
               "decompress", "filename")

GUEST_KEYS = ("family", "arch", "boot", "description", "kernel", "initrd", "disk", "firmware", "cmdline",
              "memory", "vcpus", "backends", "qemu", "builtin", "milestones", "dialogs", "failures", "keepalive",
              "hang_timeout", "banner", "expected_gaps", "fetch_hint", "auto_login", "commands",
              "settle", "warnings", "expected_warnings")
DEFAULT_SETTLE_S = 1.5


@dataclass
class GuestSpec:
    name: str
    path: Path
    family: str
    arch: str
    boot: str
    milestones: list[Milestone]
    description: str = ""
    kernel: dict[str, Any] | None = None
    initrd: dict[str, Any] | None = None
    disk: dict[str, Any] | None = None
    firmware: dict[str, Any] | None = None
    cmdline: str = ""
    memory: int = 256
    vcpus: int = 1
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    qemu: dict[str, Any] = field(default_factory=dict)       # options for the qemu-* backends
    builtin: dict[str, Any] = field(default_factory=dict)    # options for the built-in backend
    dialogs: list[Dialog] = field(default_factory=list)
    failures: list[FailurePattern] = field(default_factory=list)
    keepalive: list[str] = field(default_factory=list)
    hang_timeout: float = 60.0
    banner: str | None = None
    expected_gaps: list[dict[str, str]] = field(default_factory=list)
    fetch_hint: str = ""
    auto_login: AutoLogin | None = None                       # how to reach a shell after the last milestone
    commands: list[GuestCommand] = field(default_factory=list)   # run there, each checked (runner.guest_shell)
    settle: float = DEFAULT_SETTLE_S        # seconds watched after the last milestone
    warnings: str = "record"                # record | fail-new | fail
    expected_warnings: list[str] = field(default_factory=list)   # warning titles (globs) this guest is known to print


def load_guest(path: Path) -> GuestSpec:
    data = y.load_yaml(path)
    what = f"guest {path.stem}"
    if not isinstance(data, y.YMap):
        raise ConfigError(f"{path}:1: a guest file must be a mapping of keys", "see docs/guest-files.md")
    y.check_keys(data, GUEST_KEYS, what, required=("family", "arch", "boot", "milestones"))
    spec = GuestSpec(
        name=path.stem,
        path=path,
        family=y.get_choice(data, "family", FAMILIES, None, what),
        arch=y.get_choice(data, "arch", ARCHES, None, what),
        boot=y.get_choice(data, "boot", BOOT_METHODS, None, what),
        description=y.get_typed(data, "description", str, "", what),
        cmdline=y.get_typed(data, "cmdline", str, "", what),
        memory=_positive_int(data, "memory", 256, what),
        vcpus=_positive_int(data, "vcpus", 1, what),
        hang_timeout=_positive_number(data, "hang_timeout", 60.0, what),
        banner=y.get_typed(data, "banner", str, None, what),
        keepalive=y.get_str_list(data, "keepalive", [], what),
        qemu=dict(y.get_typed(data, "qemu", dict, {}, what)),
        builtin=_builtin_options(data, what),
        fetch_hint=y.get_typed(data, "fetch_hint", str, "", what),
        milestones=_milestones(data, what),
        dialogs=_dialogs(data, what),
        failures=_failures(data, what),
        expected_gaps=_expected_gaps(data, what),
        auto_login=parse_auto_login(data, what),
        commands=parse_commands(data, what),
        settle=_settle(data, what),
        warnings=y.get_choice(data, "warnings", WARNING_MODES, "record", what),
        expected_warnings=y.get_str_list(data, "expected_warnings", [], what),
    )
    spec.backends = y.get_str_list(data, "backends", list(DEFAULT_BACKENDS), what)
    for b in spec.backends:
        if b not in BACKENDS:
            raise y.fail(data, "backends", f"unknown backend {b!r}", f"allowed: {', '.join(BACKENDS)}")
    for key in ("kernel", "initrd", "disk", "firmware"):
        setattr(spec, key, _source(data, key, what))
    for regex in [m.pattern for m in spec.milestones] + spec.keepalive + ([spec.banner] if spec.banner else []):
        _check_regex(data, regex, what)
    return spec


def load_guests(directory: Path) -> dict[str, GuestSpec]:
    if not directory.is_dir():
        raise ConfigError(f"guest directory {directory} does not exist", "run from the repository root or pass --guests")
    return {p.stem: load_guest(p) for p in sorted(directory.glob("*.yaml"))}


# -- helpers -----------------------------------------------------------------------------
def _positive_int(data: y.YMap, key: str, default: int, what: str) -> int:
    value = y.get_typed(data, key, int, default, what)
    if value <= 0:
        raise y.fail(data, key, f"{what}.{key} must be positive, got {value}", "give a positive integer")
    return value


def _positive_number(data: y.YMap, key: str, default: float, what: str) -> float:
    value = y.get_typed(data, key, (int, float), default, what)
    if value <= 0:
        raise y.fail(data, key, f"{what}.{key} must be positive, got {value}", "give a positive number of seconds")
    return float(value)


def _settle(data: y.YMap, what: str) -> float:
    value = y.get_typed(data, "settle", (int, float), DEFAULT_SETTLE_S, what)
    if value < 0:
        raise y.fail(data, "settle", f"{what}.settle must not be negative, got {value}",
                     "give seconds to keep watching after the last milestone (0: stop at once)")
    return float(value)


def _check_regex(where: Any, pattern: str, what: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{y.where(where)}: {what}: bad regular expression {pattern!r}: {e}",
                          "fix the regex (Python re syntax)") from None


def _list_of_maps(data: y.YMap, key: str, what: str) -> list[tuple[y.YList, int, y.YMap]]:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise y.fail(data, key, f"{what}.{key} must be a list", "write a YAML list of mappings")
    return [(items, i, y.require_map(item, items, i, f"{what}.{key}[{i}]")) for i, item in enumerate(items)]


def _milestones(data: y.YMap, what: str) -> list[Milestone]:
    out = []
    for _, i, m in _list_of_maps(data, "milestones", what):
        w = f"{what}.milestones[{i}]"
        y.check_keys(m, ("name", "pattern", "timeout"), w, required=("name", "pattern"))
        timeout = y.get_typed(m, "timeout", (int, float), 60, w)
        if timeout <= 0:
            raise y.fail(m, "timeout", f"{w}.timeout must be positive", "give seconds since the previous milestone")
        out.append(Milestone(str(m["name"]), y.get_typed(m, "pattern", str, "", w), float(timeout)))
        _check_regex(m, out[-1].pattern, w)
    if not out:
        raise y.fail(data, "milestones", f"{what} has no milestones", "list at least one {name, pattern, timeout}")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise y.fail(data, "milestones", f"{what} has duplicate milestone names", "give each milestone its own name")
    return out


def _dialogs(data: y.YMap, what: str) -> list[Dialog]:
    out = []
    for _, i, d in _list_of_maps(data, "dialogs", what):
        w = f"{what}.dialogs[{i}]"
        y.check_keys(d, ("pattern", "send", "max"), w, required=("pattern", "send"))
        out.append(Dialog(y.get_typed(d, "pattern", str, "", w), y.get_typed(d, "send", str, "", w),
                          y.get_typed(d, "max", int, 1, w)))
        _check_regex(d, out[-1].pattern, w)
    return out


def _failures(data: y.YMap, what: str) -> list[FailurePattern]:
    out = []
    for _, i, f in _list_of_maps(data, "failures", what):
        w = f"{what}.failures[{i}]"
        y.check_keys(f, ("name", "pattern"), w, required=("name", "pattern"))
        out.append(FailurePattern(str(f["name"]), y.get_typed(f, "pattern", str, "", w)))
        _check_regex(f, out[-1].pattern, w)
    return out


def _expected_gaps(data: y.YMap, what: str) -> list[dict[str, str]]:
    out = []
    for _, i, g in _list_of_maps(data, "expected_gaps", what):
        w = f"{what}.expected_gaps[{i}]"
        y.check_keys(g, ("kind", "key", "access", "note"), w, required=("kind", "key"))
        out.append({k: str(v) for k, v in g.items()})
    return out


def _builtin_options(data: y.YMap, what: str) -> dict[str, Any]:
    options = y.get_typed(data, "builtin", dict, {}, what)
    if options:
        y.check_keys(options, BUILTIN_OPTIONS, f"{what}.builtin")
        for key, value in options.items():
            bad = option_problem(key, value)
            if bad:
                raise y.fail(options, key, *bad)
    return dict(options)


def _source(data: y.YMap, key: str, what: str) -> dict[str, Any] | None:
    if key not in data or data[key] is None:
        return None
    src = y.require_map(data[key], data, key, f"{what}.{key}")
    y.check_keys(src, SOURCE_KEYS, f"{what}.{key}")
    kinds = [k for k in SOURCE_KINDS if k in src]
    if len(kinds) != 1:
        raise y.fail(data, key, f"{what}.{key} must name exactly one source, found {kinds or 'none'}",
                     "use one of {path: ...}, {fixture: ...}, {asset: ...}, {url: ..., sha256: ...}")
    if "url" in src and not any(k in src for k in ("sha256", "sha512", "checksum_url")):
        raise y.fail(src, "url", f"{what}.{key}: a url source needs a checksum",
                     "add sha256: HEX or checksum_url: URL of the release's checksum file")
    return dict(src)
