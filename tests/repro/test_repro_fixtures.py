"""Acceptance: fixtures that fail on purpose, on the built-in hypervisor, reproduced by `harness repro`
from their cell directory alone and from a bundle (--with-assets) on an empty cache, with the same
outcome, the same decisive line and the same gaps. About 10 s per fixture on this host."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from repro_support import KVM_OK, REPO, harness, run_one

pytestmark = [pytest.mark.slow, pytest.mark.kvm,
              pytest.mark.skipif(not KVM_OK, reason="/dev/kvm absent or not accessible: built-in backend cannot run")]


def gaps(result: dict) -> set[tuple[str, str]]:
    return {(g["kind"], g["key"]) for g in result["gaps"]}


@pytest.mark.parametrize("guest, outcome, line", [
    ("fixture-panic", "fail", "panic: fixture deliberate panic"),
    ("fixture-triple-fault", "fail", "triple fault at rip 0x"),
])
def test_a_failing_fixture_reproduces_from_its_cell_dir_and_from_its_bundle_on_a_clean_cache(
        tmp_path: Path, guest: str, outcome: str, line: str):
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(f"version: 1\nentries:\n  - {{guests: [{guest}], backends: [builtin]}}\n")
    cell_dir, recorded = run_one(guest, tmp_path / "run", guests=REPO / "guests", matrix=matrix, cwd=REPO)
    assert recorded["outcome"] == outcome and line in recorded["reason"], recorded["reason"]

    again = tmp_path / "again"
    proc = harness("repro", str(cell_dir), "--times", "2", "--quiet", "--report-dir", str(again), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "reproduced 2/2" in proc.stderr
    for path in sorted((again / "cells").glob("*.json")):
        rerun = json.loads(path.read_text())
        assert (rerun["outcome"], rerun["reason"]) == (recorded["outcome"], recorded["reason"])
        assert gaps(rerun) == gaps(recorded)

    bundle = tmp_path / f"{guest}.tar.gz"
    assert harness("bundle", str(cell_dir), "-o", str(bundle), "--with-assets", cwd=tmp_path).returncode == 0
    clean = tmp_path / "empty-cache"
    clean.mkdir()
    other = tmp_path / "other"
    proc = harness("repro", str(bundle), "--quiet", "--report-dir", str(other), cwd=tmp_path,
                   env={"HARNESS_CACHE": str(clean), "HARNESS_FIXTURE_BUILD_DIR": str(tmp_path / "no-fixtures")})
    assert proc.returncode == 0, proc.stderr
    assert "reproduced 1/1" in proc.stderr
    (path,) = (other / "cells").glob("*.json")
    rerun = json.loads(path.read_text())
    assert (rerun["outcome"], rerun["reason"], gaps(rerun)) == (recorded["outcome"], recorded["reason"], gaps(recorded))
    # The bytes came from the bundle through the content-addressed cache, not from a fixture build.
    assert rerun["provenance"]["kernel"]["cache_blob"].startswith(str(clean))
    assert not (tmp_path / "no-fixtures").exists()
