"""Every loader against random and mutated images (hypothesis): each either loads or refuses with
a one-line HarnessError; nothing else escapes and nothing hangs (a per-example deadline).

Seeds are real images from builders.py (PVH, multiboot ELF and a.out, NetBSD/OpenBSD/FreeBSD,
bzImage with a compressed vmlinux payload); mutations overwrite bytes in the headers, flip bits,
truncate, or splice random bytes. Cases per run: FUZZ_EXAMPLES per seed/method (stated in the
report), all run in CI (no `slow` marker: the whole file takes ~1 minute).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import (bsd_kernel, fake_bzimage, multiboot_aout, multiboot_elf, needs_binutils,
                      pvh_kernel)
from harness.boot import load
from harness.errors import HarnessError
from harness.memory import GuestRam

FUZZ_EXAMPLES = int(os.environ.get("HARNESS_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=5000, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CASES: dict[str, int] = {}

pytestmark = needs_binutils


class Seeds(dict):
    def __repr__(self) -> str:          # keep hypothesis' failure report readable
        return f"Seeds({sorted(self)})"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Seeds:
    tmp = tmp_path_factory.mktemp("seeds")
    pvh = pvh_kernel(tmp).read_bytes()
    return Seeds({"pvh": ("pvh", pvh), "multiboot": ("multiboot", multiboot_elf(tmp).read_bytes()),
            "multiboot-aout": ("multiboot", multiboot_aout(tmp).read_bytes()),
            "netbsd": ("netbsd", bsd_kernel(tmp, "netbsd").read_bytes()),
            "openbsd": ("openbsd", bsd_kernel(tmp, "openbsd").read_bytes()),
            "freebsd": ("freebsd", bsd_kernel(tmp, "freebsd").read_bytes()),
            "bzimage": ("bzimage", fake_bzimage()),
            "bzimage-pvh": ("pvh", fake_bzimage(payload_elf=pvh, fmt="gzip"))})


@pytest.fixture(scope="module")
def mem():
    ram = GuestRam(32 * 1024 * 1024)
    yield ram
    ram.close()


def mutate(data: bytes, edits: list[tuple[int, bytes]], truncate: int | None) -> bytes:
    out = bytearray(data)
    for pos, chunk in edits:
        pos %= max(1, min(len(out), 0x1000) if pos < 0x1000 else len(out))
        out[pos:pos + len(chunk)] = chunk
    if truncate is not None:
        out = out[:truncate % (len(out) + 1)]
    return bytes(out)


def boot(mem, method: str, data: bytes, tmp: Path, key: str) -> None:
    CASES[key] = CASES.get(key, 0) + 1
    path = tmp / "k"
    path.write_bytes(data)
    try:
        load(method, mem, path, None, "console=ttyS0")
    except HarnessError as exc:
        line = exc.one_line()
        assert "\n" not in line and line.startswith("error:"), line


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)), min_size=1, max_size=12)


@pytest.mark.parametrize("seed", ["pvh", "multiboot", "multiboot-aout", "netbsd", "openbsd", "freebsd", "bzimage",
                                  "bzimage-pvh"])
@SETTINGS
@given(edits=EDITS, truncate=st.one_of(st.none(), st.integers(0, 1 << 22)))
def test_mutated_images_load_or_refuse(seeds, mem, tmp_path_factory, seed, edits, truncate):
    method, data = seeds[seed]
    boot(mem, method, mutate(data, edits, truncate), tmp_path_factory.getbasetemp(), f"mutated-{seed}")


@pytest.mark.parametrize("method", ["auto", "bzimage", "pvh", "multiboot", "netbsd", "openbsd", "freebsd"])
@SETTINGS
@given(data=st.one_of(st.binary(min_size=1, max_size=4096),
                      st.binary(min_size=1, max_size=64).map(lambda b: b"\x7fELF\x02\x01\x01" + b),
                      st.binary(min_size=0x300, max_size=0x1200).map(lambda b: b[:0x202] + b"HdrS" + b[0x206:])))
def test_random_images_load_or_refuse(mem, tmp_path_factory, method, data):
    boot(mem, method, data, tmp_path_factory.getbasetemp(), f"random-{method}")


def test_report_case_counts():
    """Runs last in this file: prints how many cases each fuzz target ran (pytest -s shows it)."""
    total = sum(CASES.values())
    print(f"\nloader fuzz: {total} cases: " + ", ".join(f"{k}={v}" for k, v in sorted(CASES.items())))
    assert total == 0 or total >= FUZZ_EXAMPLES
