"""Gap baselines: which gaps a guest is known to hit, and what changed against them.

A baseline is a list of {kind, key} entries (optionally `access`: read | write). It comes from
two places, merged: the guest file's `expected_gaps`, and `baselines/<guest>.yaml` written by
`harness gaps accept RUN`. A gap matching no entry is *new*; an entry matching no gap is
*fixed* (the guest no longer needs it, or the hypervisor now provides it); the rest is *known*.

Keys compare case-insensitively, numbers by value ("0x10" == "0x010"), and an entry key may be
a shell glob ("0x2*") for families of MSRs.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from harness.errors import ConfigError
from harness.gaps.ledger import as_record
from harness.model.files import write_atomic
from harness.model.gap import KINDS, GapRecord

REPO_ROOT = Path(__file__).resolve().parents[2]
BASELINE_VERSION = 1
_HEX = re.compile(r"^(0x)?[0-9a-f]+$")


@dataclass
class GapDiff:
    new: list[dict[str, Any]] = field(default_factory=list)     # gaps with no baseline entry
    fixed: list[dict[str, Any]] = field(default_factory=list)   # baseline entries no gap matched
    known: list[dict[str, Any]] = field(default_factory=list)   # gaps the baseline expects

    def to_dict(self) -> dict[str, Any]:
        return {"new": list(self.new), "fixed": list(self.fixed), "known": list(self.known)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "GapDiff":
        data = data or {}
        return cls(list(data.get("new", [])), list(data.get("fixed", [])), list(data.get("known", [])))


def _norm_key(key: Any) -> str:
    text = str(key).strip().lower()
    if _HEX.match(text) and text.startswith("0x"):
        return hex(int(text, 16))
    return text


def _key_matches(pattern: Any, key: Any) -> bool:
    p, k = _norm_key(pattern), _norm_key(key)
    if any(c in p for c in "*?["):
        return fnmatch.fnmatchcase(k, p) or fnmatch.fnmatchcase(str(key).strip().lower(), p)
    return p == k


def entry_matches(entry: dict[str, Any], gap: GapRecord) -> bool:
    if entry.get("kind") != gap.kind or not _key_matches(entry.get("key", ""), gap.key):
        return False
    access = entry.get("access") or ""
    return not access or access == gap.access


def compare(gaps: Sequence[dict[str, Any] | GapRecord], expected: Sequence[dict[str, Any]]) -> GapDiff:
    """Split `gaps` into new / known against `expected`, and list the expected entries not seen."""
    diff = GapDiff()
    used = [False] * len(expected)
    for g in gaps:
        rec = as_record(g)
        hits = [i for i, e in enumerate(expected) if entry_matches(e, rec)]
        for i in hits:
            used[i] = True
        (diff.known if hits else diff.new).append(rec.to_json())
    diff.fixed = [dict(e) for e, u in zip(expected, used) if not u]
    return diff


def baseline_entry(gap: GapRecord | dict[str, Any]) -> dict[str, str]:
    rec = as_record(gap)
    entry = {"kind": rec.kind, "key": rec.key}
    if rec.access:
        entry["access"] = rec.access
    return entry


def _dedup_entries(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for e in entries:
        ident = (str(e.get("kind", "")), _norm_key(e.get("key", "")), str(e.get("access") or ""))
        if ident not in seen:
            seen.add(ident)
            out.append(dict(e))
    return out


def default_root() -> Path:
    """Where guests/ and baselines/ live: the current directory when it has guests/, else this checkout."""
    cwd = Path.cwd()
    return cwd if (cwd / "guests").is_dir() else REPO_ROOT


def baseline_path(guest: str, root: Path | None = None) -> Path:
    """baselines/<guest>.yaml beside guests/ (the runner reads it from there too)."""
    return (root or default_root()) / "baselines" / f"{guest}.yaml"


def read_baseline_file(path: Path) -> list[dict[str, Any]]:
    """The entries of one baseline file (missing file = empty baseline)."""
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"baseline {path} cannot be read: {err}".splitlines()[0],
                          f"fix the YAML or re-create it with `harness gaps accept RUN --out {path}`")
    entries = (data or {}).get("gaps", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(f"baseline {path}: `gaps` is not a list", "write `gaps: [{kind: K, key: K}, ...]`")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "kind" not in e or "key" not in e:
            raise ConfigError(f"baseline {path}: gaps[{i}] needs `kind` and `key`", "write {kind: K, key: K}")
        if e["kind"] not in KINDS:
            raise ConfigError(f"baseline {path}: gaps[{i}].kind {e['kind']!r} is not a gap kind",
                              f"use one of {', '.join(KINDS)}")
        out.append({k: str(v) for k, v in e.items() if k in ("kind", "key", "access")})
    return out


def read_warning_baseline(path: Path) -> list[str]:
    """The accepted warning titles (shell globs allowed) of a baseline file's `warnings:` list."""
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"baseline {path} cannot be read: {err}".splitlines()[0], "fix the YAML")
    titles = data.get("warnings", []) if isinstance(data, dict) else []
    if not isinstance(titles, list) or not all(isinstance(t, str) for t in titles):
        raise ConfigError(f"baseline {path}: `warnings` is not a list of titles",
                          "write `warnings: [\"WARNING in foo\", ...]`")
    return list(titles)


def write_warning_baseline(path: Path, guest: str, titles: Iterable[str], source: str) -> Path:
    """Add warning titles to a baseline file's `warnings:` list, keeping its gaps and other keys."""
    doc: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text())
        doc = loaded if isinstance(loaded, dict) else {"gaps": loaded or []}
    doc.setdefault("version", BASELINE_VERSION)
    doc.setdefault("guest", guest)
    doc["warnings"] = sorted(set(read_warning_baseline(path)) | set(titles))
    doc["warnings_accepted_from"] = source
    write_atomic(path, ("# Known emulation gaps and warnings; written by `harness gaps accept` and "
                        "`harness crashes --accept-warnings`, edit freely.\n"
                        + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)).encode())
    return path


def load_baseline(guest: str, expected_gaps: Iterable[dict[str, Any]] = (), root: Path | None = None,
                  path: Path | None = None) -> list[dict[str, Any]]:
    """The known gaps of `guest`: its guest file's `expected_gaps` (given by the caller, who has
    read the guest file) plus its accepted baselines/<guest>.yaml."""
    root = root or default_root()
    entries = [dict(e) for e in expected_gaps] + read_baseline_file(path or baseline_path(guest, root))
    return _dedup_entries(entries)


def write_baseline(path: Path, guest: str, gaps: Iterable[GapRecord | dict[str, Any]], source: str) -> Path:
    """Write the accepted gaps of one guest (sorted, deduplicated) as YAML."""
    entries = sorted(_dedup_entries(baseline_entry(g) for g in gaps),
                     key=lambda e: (e["kind"], _norm_key(e["key"]), e.get("access", "")))
    doc = {
        "version": BASELINE_VERSION,
        "guest": guest,
        "accepted_from": source,
        "accepted_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gaps": entries,
    }
    kept = read_warning_baseline(path) if path.exists() else []
    if kept:
        doc["warnings"] = kept
    write_atomic(path, ("# Known emulation gaps; written by `harness gaps accept`, edit freely.\n"
                        + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)).encode())
    return path
