"""A UEFI (`boot: firmware`) boot asked of the built-in VMM on aarch64 (FreeBSD/aarch64's EFI loader)
is a `firmware-boot` gap record that stops the VM before it starts: the child emits it as a
stopping GAP event and writes it into its summary, exits 0, and never touches /dev/kvm."""
from __future__ import annotations

import json
import subprocess
import sys

from harness.model import events as ev
from harness.model.session import BootRequest
from harness.backends.builtin import BuiltinBackend
from harness.backends.builtin_vm import EXIT_OK, request_to_json
from harness.model.gap import FATE_STOPPED, FIRMWARE_BOOT, KINDS


def _request(tmp_path) -> BootRequest:
    disk = tmp_path / "freebsd-arm64.raw"
    disk.write_bytes(b"\0" * 4096)
    return BootRequest(cell_id="freebsd-arm64@builtin+lab/default/emulate/1c/1024M", guest="freebsd-arm64",
                       family="freebsd", arch="aarch64", boot="firmware", kernel=None, disk=disk,
                       memory_mib=1024, workdir=tmp_path / "cell")


def test_firmware_boot_on_aarch64_is_accepted_by_the_backend_for_an_arm64_host(tmp_path):
    BuiltinBackend().check_guest(_request(tmp_path), "aarch64")      # no BackendUnavailable


def test_child_records_a_stopping_firmware_boot_gap_and_exits_cleanly(tmp_path):
    req = _request(tmp_path)
    req.workdir.mkdir()
    spec = req.workdir / "spec.json"
    spec.write_text(request_to_json(req))
    proc = subprocess.run([sys.executable, "-m", "harness.backends.builtin_vm", str(spec)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "Traceback" not in proc.stderr
    events = ev.EventReader(req.events_path).poll()
    assert [e.type for e in events] == [ev.VM_START, ev.GAP, ev.VM_EXIT]
    gap = events[1].data
    assert FIRMWARE_BOOT in KINDS
    assert (gap["kind"], gap["key"], gap["fate"]) == (FIRMWARE_BOOT, "aarch64/uefi", FATE_STOPPED)
    assert gap["detail"]["disk"] == "freebsd-arm64.raw" and "pflash" in gap["detail"]["why"]
    summary = json.loads(req.summary_path.read_text())
    assert summary["exit_code"] == EXIT_OK
    assert [g["kind"] for g in summary["extra"]["gaps"]] == [FIRMWARE_BOOT]
