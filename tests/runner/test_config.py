"""Guest and matrix files: expansion, overrides, tiers, and precise errors (file, line, allowed values)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.runner.guestfile import load_guest, load_guests
from harness.runner.matrix import load_matrix, parse_shard, select_shard, shard_of

GUEST = """\
family: fixture
arch: x86_64
boot: pvh
kernel: {fixture: pvh}
cmdline: console=ttyS0
memory: 64
milestones:
  - {name: entry, pattern: 'fixture: entry', timeout: 10}
  - {name: login, pattern: 'login: ', timeout: 10}
dialogs:
  - {pattern: 'root device:', send: "wd0a\\n"}
expected_gaps:
  - {kind: tsc-msr, key: "0x10"}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for name in ("fixture-a", "fixture-b", "linux-x"):
        write(tmp_path / "guests" / f"{name}.yaml", GUEST.replace("family: fixture", "family: linux")
              if name.startswith("linux") else GUEST)
    return tmp_path


def error_of(fn, *args) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args)
    return e.value.one_line()


def test_guest_loads_with_defaults(repo: Path):
    g = load_guest(repo / "guests" / "fixture-a.yaml")
    assert g.name == "fixture-a" and g.boot == "pvh" and g.memory == 64 and g.vcpus == 1
    assert [m.name for m in g.milestones] == ["entry", "login"]
    assert g.dialogs[0].send == "wd0a\n" and g.expected_gaps == [{"kind": "tsc-msr", "key": "0x10"}]
    assert g.kernel == {"fixture": "pvh"} and "builtin" in g.backends


@pytest.mark.parametrize("mutate, expect", [
    (lambda t: t.replace("boot: pvh", "boot: uefi"), ":3: guest g.boot is 'uefi' (fix: allowed: bzimage, pvh"),
    (lambda t: t + "colour: blue\n", ":14: unknown key 'colour' in guest g (fix: allowed keys: family"),
    (lambda t: t.replace("memory: 64", "memory: lots"), ":6: guest g.memory must be an integer, got str"),
    (lambda t: t.replace("timeout: 10}", "timeout: -1}", 1), ":8: guest g.milestones[0].timeout must be positive"),
    (lambda t: t.replace("'fixture: entry'", "'fixture: (entry'"), "bad regular expression"),
    (lambda t: t.replace("kernel: {fixture: pvh}", "kernel: {url: 'https://x/y'}"), ":4: guest g.kernel: a url source needs a checksum"),
    (lambda t: t.replace("memory: 64\n", "memory: 64\nmemory: 32\n"), ":7: duplicate key 'memory'"),
    (lambda t: t.replace("milestones:", "milestones: [\n"), "invalid YAML"),
    (lambda t: t.replace("  - {name: login, pattern: 'login: ', timeout: 10}\n", "  - {name: entry, pattern: x}\n"), "duplicate milestone names"),

    (lambda t: t + "builtin: {coalesce_serial: poled}\n", ":14: builtin option coalesce_serial: 'poled' is not true or false or polled"),
    (lambda t: t + "builtin:\n  acpi: true\n  virtio_devices: [blk, nic]\n", ":16: builtin option virtio_devices: ['blk', 'nic'] is not a list of blk, console, rng"),
    (lambda t: t + "builtin: {virtio_seg_max: 0}\n", "builtin option virtio_seg_max: 0 is not an integer from 1 to 4294967295"),
    (lambda t: t + "builtin: {rescue: 'no'}\n", "builtin option rescue: 'no' is not true or false"),
])
def test_guest_errors_name_file_line_and_fix(tmp_path: Path, mutate, expect):
    path = write(tmp_path / "g.yaml", mutate(GUEST))
    message = error_of(load_guest, path)
    assert message.startswith(f"error: {path}:"), message
    assert expect in message, message
    assert "\n" not in message


def test_missing_required_key(tmp_path: Path):
    path = write(tmp_path / "g.yaml", GUEST.replace("arch: x86_64\n", ""))
    assert "lacks required key 'arch'" in error_of(load_guest, path)


MATRIX = """\
version: 1
timeout_scale: 2
retries: 2
entries:
  - guests: ['fixture-*']
    backends: [builtin]
    gap_policies: [gp, zero, emulate]
    memory: [64, 128]
  - guests: [linux-x]
    backends: [qemu-tcg]
    tier: nightly
exclude:
  - {guest: fixture-b, gap_policy: zero}
include:
  - {guest: linux-x, backend: builtin, tier: nightly, gap_policy: gp}
overrides:
  - match: {guest: 'linux-*', backend: builtin}
    set: {expect: gap, timeout_scale: 8}
"""


def test_matrix_expansion_tiers_exclude_include_overrides(repo: Path):
    guests = load_guests(repo / "guests")
    m = load_matrix(write(repo / "matrix.yaml", MATRIX), guests)
    quick = m.cells(guests, "quick")
    assert len(quick) == 2 * 3 * 2 - 2  # two fixtures x three policies x two memory sizes, minus fixture-b/zero
    assert all(c.tier == "quick" and c.timeout_scale == 2 and c.retries == 2 for c in quick)
    assert "fixture-a@builtin/default/gp/1c/64M" in [c.id for c in quick]
    nightly = {c.id: c for c in m.cells(guests, "nightly")}
    assert len(nightly) == len(quick) + 2
    special = nightly["linux-x@builtin/default/gp/1c/64M"]
    assert special.expect == "gap" and special.timeout_scale == 8
    assert nightly["linux-x@qemu-tcg/default/emulate/1c/64M"].expect == "pass"
    assert [c.id for c in quick] == sorted(c.id for c in quick)


def test_env_timeout_scale_multiplies(repo: Path, monkeypatch):
    monkeypatch.setenv("HARNESS_TIMEOUT_SCALE", "3")
    guests = load_guests(repo / "guests")
    cells = load_matrix(write(repo / "matrix.yaml", MATRIX), guests).cells(guests, "quick")
    assert {c.timeout_scale for c in cells} == {6}


@pytest.mark.parametrize("mutate, expect", [
    (lambda t: t.replace("backends: [builtin]", "backends: [bochs]"), ":6: matrix.entries[0].backends: unknown value 'bochs' (fix: allowed: builtin, qemu-tcg"),
    (lambda t: t.replace("guests: [linux-x]", "guests: [nope-*]"), ":9: matrix.entries[1]: no guest file matches 'nope-*' (fix: known guests: fixture-a"),
    (lambda t: t.replace("tier: nightly\nexclude", "tier: weekly\nexclude"), "tier is 'weekly' (fix: allowed: quick, nightly)"),
    (lambda t: t.replace("retries: 2", "retries: 2\nparallel: 4"), ":4: unknown key 'parallel' in matrix"),
    (lambda t: t.replace("expect: gap", "expect: maybe"), "expect is 'maybe'"),
    (lambda t: t.replace("memory: [64, 128]", "memory: [64, big]"), "memory: 'big' is not a positive integer"),
])
def test_matrix_errors(repo: Path, mutate, expect):
    guests = load_guests(repo / "guests")
    path = write(repo / "matrix.yaml", mutate(MATRIX))
    message = error_of(load_matrix, path, guests)
    assert message.startswith(f"error: {path}:") and expect in message, message


def test_sharding_is_a_partition_and_stable(repo: Path):
    guests = load_guests(repo / "guests")
    cells = load_matrix(write(repo / "matrix.yaml", MATRIX), guests).cells(guests, "nightly")
    for n in (1, 2, 3, 5):
        shards = [select_shard(cells, f"{k}/{n}") for k in range(1, n + 1)]
        ids = [c.id for shard in shards for c in shard]
        assert sorted(ids) == sorted(c.id for c in cells)      # union = all
        assert len(ids) == len(set(ids))                       # no overlap
    # the hash is fixed by the algorithm, not by Python's per-process hash seed
    assert shard_of("fixture-a@builtin/default/gp/1c/64M", 4) == shard_of("fixture-a@builtin/default/gp/1c/64M", 4)
    assert shard_of("x", 1000) == int.from_bytes(__import__("hashlib").sha256(b"x").digest()[:8], "big") % 1000


@pytest.mark.parametrize("bad", ["0/2", "3/2", "a/b", "1-2"])
def test_bad_shard(bad: str):
    with pytest.raises(ConfigError, match="bad shard"):
        parse_shard(bad)


def test_repository_guests_and_matrix_are_valid():
    root = Path(__file__).resolve().parents[2]
    guests = load_guests(root / "guests")
    matrix = load_matrix(root / "matrix.yaml", guests)
    assert matrix.cells(guests, "quick")
    assert len(matrix.cells(guests, "nightly")) >= len(matrix.cells(guests, "quick"))
