"""`harness repro` and `harness bundle` end to end on a replayed guest (no hypervisor): what a cell
records, N runs with a verdict, refusing different asset bytes, a bundle on a clean cache."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import yaml

from repro_support import harness, replay_repo, run_one


def recorded(tmp_path: Path, through_cli: bool = False) -> tuple[Path, Path, dict]:
    """One recorded cell of the replay repo: through `harness run` (as CI records it), or the same
    expansion and run_cell in this process (fast: most tests only need a recorded cell)."""
    repo = replay_repo(tmp_path / "repo")
    if through_cli:
        return (repo, *run_one("replayed", tmp_path / "run", guests=repo / "guests", matrix=repo / "matrix.yaml",
                               cwd=repo))
    from harness.runner.execute import RunOptions, run_cell
    from harness.runner.guestfile import load_guests
    from harness.runner.matrix import load_matrix
    guests = load_guests(repo / "guests")
    (cell,) = load_matrix(repo / "matrix.yaml", guests).cells(guests)
    result = run_cell(cell, RunOptions(run_dir=tmp_path / "run")).to_json()
    return repo, tmp_path / "run" / Path(result["console_log"]).parent, result


def test_a_cell_records_what_a_repro_needs(tmp_path: Path):
    repo, cell_dir, result = recorded(tmp_path, through_cli=True)
    rec = result["repro"]
    assert result["outcome"] == "fail"
    assert (rec["cell"]["backend"], rec["cell"]["vcpus"], rec["cell"]["memory"]) == ("replay", 2, 96)
    assert rec["cmdline"] == "console=ttyS0 quiet" and rec["boot"] == "pvh"
    assert rec["timeouts"] == {"milestones": {"entry": 10.0, "login": 10.0}, "hang": 5.0, "scale": 1.0}
    assert rec["assets"] == {"kernel": result["provenance"]["kernel"]["sha256"]}
    assert len(rec["harness"]["commit"]) == 40
    # The guest file as it was, comments and all, inside the cell directory.
    copy = cell_dir / "guests" / "replayed.yaml"
    assert copy.read_text() == (repo / "guests" / "replayed.yaml").read_text()
    # The run's report shows the failed cell's bundle and repro commands.
    page = (cell_dir.parent.parent / "index.html").read_text()
    rel = f"cells/{cell_dir.name}"
    assert f"harness bundle {rel} -o {cell_dir.name}.tar.gz --with-assets" in page
    assert f"harness repro {rel}" in page


def test_repro_from_the_cell_dir_reproduces_n_of_n_and_prints_boot_and_matrix(tmp_path: Path):
    repo, cell_dir, _ = recorded(tmp_path)
    # Editing the guest afterwards must not change what the repro runs: the cell kept its copy.
    (repo / "guests" / "replayed.yaml").write_text("not: a guest file\n")
    proc = harness("repro", str(cell_dir), "--times", "3", "--quiet", "--report-dir", str(tmp_path / "again"),
                   cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert "reproduced 3/3" in proc.stderr
    assert "fail: panic: panic: replayed deliberate panic" in proc.stderr
    boot = next(ln.strip() for ln in proc.stderr.splitlines() if ln.strip().startswith("harness boot "))
    for part in ("--memory 96", "--vcpus 2", "--backend replay", "--host native", "--hang-timeout 5", "--boot pvh",
                 "--failure 'panic=(?m)^panic: replayed'"):
        assert part in boot, boot
    snippet = proc.stderr.split("matrix snippet:\n", 1)[1]
    doc = yaml.safe_load(snippet)
    assert doc["include"] == [{"guest": "replayed", "backend": "replay", "host": "native", "cpu_profile": "default",
                               "gap_policy": "emulate", "vcpus": 2, "memory": 96, "tier": "quick"}]
    runs = sorted((tmp_path / "again" / "cells").glob("*.json"))
    assert len(runs) == 3
    assert all(json.loads(p.read_text())["outcome"] == "fail" for p in runs)


def test_repro_from_the_result_file_works_too(tmp_path: Path):
    repo, cell_dir, _ = recorded(tmp_path)
    proc = harness("repro", str(cell_dir.parent / (cell_dir.name + ".json")), "--quiet",
                   "--report-dir", str(tmp_path / "again"), cwd=repo)
    assert proc.returncode == 0 and "reproduced 1/1" in proc.stderr, proc.stderr


def test_different_asset_bytes_are_refused_with_the_command_that_gets_the_right_ones(tmp_path: Path):
    repo, cell_dir, result = recorded(tmp_path)
    transcript = Path(result["provenance"]["kernel"]["path"])
    transcript.write_text(transcript.read_text().replace("deliberate", "different"))
    proc = harness("repro", str(cell_dir), "--quiet", "--report-dir", str(tmp_path / "again"), cwd=repo,
                   env={"HARNESS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.splitlines()[-1]      # one error line, before any run
    assert line.startswith("error: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "again" / "cells").exists()
    assert result["repro"]["assets"]["kernel"] in line and "the recorded cell booted" in line
    assert "put the file with sha256" in line and "--with-assets" in line


def test_a_bundle_with_assets_reproduces_on_a_clean_cache_without_the_original_files(tmp_path: Path):
    repo, cell_dir, result = recorded(tmp_path, through_cli=True)   # with the run's run.json (host facts)
    bundle = tmp_path / "cell.tar.gz"
    proc = harness("bundle", str(cell_dir), "-o", str(bundle), "--with-assets", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))
    sha = result["repro"]["assets"]["kernel"]
    assert {"result.json", "manifest.json", "flight-recorder.json", "cell/console.log", "cell/events.jsonl",
            "cell/guests/replayed.yaml", f"assets/{sha}"} <= names
    assert manifest["assets"]["kernel"]["sha256"] == sha and manifest["assets"]["kernel"]["provenance"]["path"]
    assert manifest["harness"]["recorded"]["commit"] and manifest["host"]["run"]["hostname"]
    # Another machine: no original transcript, no run directory, an empty cache.
    Path(result["provenance"]["kernel"]["path"]).unlink()
    import shutil
    shutil.rmtree(cell_dir.parent.parent)
    clean = tmp_path / "clean-cache"
    clean.mkdir()
    proc = harness("repro", str(bundle), "--quiet", "--report-dir", str(tmp_path / "again"), cwd=tmp_path,
                   env={"HARNESS_CACHE": str(clean)})
    assert proc.returncode == 0, proc.stderr
    assert "reproduced 1/1" in proc.stderr and "bundle assets put into the cache: kernel" in proc.stderr
    assert (clean / "blobs" / sha[:2] / sha).is_file()


def test_a_bundle_without_assets_names_them_by_hash_only(tmp_path: Path):
    repo, cell_dir, result = recorded(tmp_path)
    bundle = tmp_path / "cell.tar.gz"
    assert harness("bundle", str(cell_dir), "-o", str(bundle), cwd=repo).returncode == 0
    with tarfile.open(bundle) as tar:
        assert not [n for n in tar.getnames() if n.startswith("assets/")]


def test_bad_inputs_are_one_line_errors(tmp_path: Path):
    (tmp_path / "x.json").write_text("{}")
    for args in (["repro", str(tmp_path / "missing")], ["repro", str(tmp_path / "x.json")],
                 ["repro", str(tmp_path), "--times", "0"]):
        proc = harness(*args, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
