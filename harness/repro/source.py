"""Where a repro starts: a cell's work directory, its result file, or a bundle.

    reports/R/cells/<slug>/        the cell directory (console.log, events.jsonl, guests/<name>.yaml)
    reports/R/cells/<slug>.json    its result
    FILE.tar.gz                    a bundle (harness bundle): result, cell directory, manifest, assets
Every form ends as a ReproSource: the recorded result, the guest file as it was, and the Cell it
describes. A bundle is untrusted input: it is unpacked with tarfile's `data` filter (no absolute
paths, no links out, no devices) and every asset in it is checked against its manifest sha256.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.model.rundir import RunDir
from harness.runner.guestfile import GuestSpec, load_guest
from harness.runner.matrix import Cell
from harness.runner.repro_record import GUEST_DIR

RESULT_NAME, MANIFEST_NAME, CELL_DIR_NAME, ASSET_DIR = "result.json", "manifest.json", "cell", "assets"


@dataclass
class ReproSource:
    origin: str                        # what the user named
    result: dict[str, Any]             # the recorded CellResult
    workdir: Path                      # the recorded cell's directory (or its copy in a bundle)
    manifest: dict[str, Any] = field(default_factory=dict)     # bundles only

    @property
    def record(self) -> dict[str, Any]:
        return self.result["repro"]

    @property
    def guest_file(self) -> Path:
        return self.workdir / GUEST_DIR / f"{self.result['guest']}.yaml"

    def guest(self) -> GuestSpec:
        if not self.guest_file.is_file():
            raise ConfigError(f"{self.origin}: the guest file the cell ran ({self.guest_file}) is missing",
                              "repro from the whole cell directory or a bundle (harness bundle CELL -o FILE)")
        return load_guest(self.guest_file)

    def cell(self) -> Cell:
        c = self.record["cell"]
        return Cell(self.guest(), c["backend"], c["cpu_profile"], c["gap_policy"], int(c["vcpus"]), int(c["memory"]),
                    c["tier"], timeout_scale=float(c["timeout_scale"]), retries=int(c["retries"]),
                    fail_on_new_gaps=bool(c["fail_on_new_gaps"]), expect=c["expect"],
                    cmdline_append=c["cmdline_append"], hang_timeout=c["hang_timeout"],
                    host=c.get("host", "native"))


def load_source(arg: str | Path, unpack_dir: Path) -> ReproSource:
    """`arg` as a ReproSource; a bundle is unpacked under `unpack_dir`."""
    path = Path(arg)
    if path.is_dir():
        return _from_cell_dir(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist",
                          "give a cell directory (reports/R/cells/SLUG), its result file (SLUG.json) or a bundle")
    if tarfile.is_tarfile(path):
        return _from_bundle(path, unpack_dir)
    result = _read_result(path)
    return _checked(ReproSource(str(path), result, _workdir_of_result(path, result)))


def _read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a cell result ({exc})", "give a cells/SLUG.json file of a run") from None
    if not isinstance(data, dict) or "cell_id" not in data:
        raise ConfigError(f"{path} is not a cell result (no cell_id)", "give a cells/SLUG.json file of a run")
    return data


def _workdir_of_result(path: Path, result: dict[str, Any]) -> Path:
    """The work dir in the result's run that its console_log names."""
    return RunDir.containing(path).path / Path(result.get("console_log") or "").parent


def _from_cell_dir(workdir: Path) -> ReproSource:
    run = RunDir.containing(workdir)
    own = f"{workdir.resolve().relative_to(run.path)}/"
    for candidate in run.result_files():
        try:
            result = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and str(result.get("console_log", "")).startswith(own):
            return _checked(ReproSource(str(workdir), result, workdir.resolve()))
    raise ConfigError(f"{workdir}: no result file in {run.cells_dir} belongs to this cell directory",
                      "give a cell directory of a finished cell (reports/R/cells/SLUG)")


def _from_bundle(path: Path, unpack_dir: Path) -> ReproSource:
    try:
        with tarfile.open(path) as tar:
            tar.extractall(unpack_dir, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable bundle ({exc})", "make one with harness bundle CELL -o FILE") from None
    try:
        manifest = json.loads((unpack_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{path}: a tar file without {MANIFEST_NAME}", "make one with harness bundle CELL -o FILE") \
            from None
    result = _read_result(unpack_dir / RESULT_NAME)
    return _checked(ReproSource(str(path), result, unpack_dir / CELL_DIR_NAME, manifest))


def _checked(source: ReproSource) -> ReproSource:
    if not source.result.get("repro"):
        raise ConfigError(f"{source.origin}: cell {source.result.get('cell_id')} was recorded by a harness that did "
                          "not keep what a repro needs", "run the cell again with this harness, then repro that")
    return source
