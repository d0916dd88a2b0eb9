"""An ad-hoc guest (harness boot) written out in the guest-file schema reads back as the same guest."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from harness.runner.repro_record import keep_guest_file
from harness.runner.guest_shell import AutoLogin, GuestCommand
from harness.runner.guestfile import Dialog, FailurePattern, GuestSpec, Milestone, load_guest


def test_an_adhoc_guest_round_trips_through_its_written_guest_file(tmp_path: Path):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"x")
    spec = GuestSpec(name="bzImage", path=kernel, family="linux", arch="x86_64", boot="bzimage",
                     milestones=[Milestone("expect1", r"Linux version \d", 30.0), Milestone("expect2", "login:", 60.0)],
                     kernel={"path": str(kernel)}, cmdline="console=ttyS0 quiet", memory=512, vcpus=2,
                     failures=[FailurePattern("panic", "^Kernel panic")], dialogs=[Dialog("Continue\\?", "y\\n", 2)],
                     hang_timeout=45.0, auto_login=AutoLogin("root", "", r"# $", 20.0),
                     commands=[GuestCommand("uname -r", expect=[r"^6\."], status=0, timeout=10.0)])
    written = keep_guest_file(spec, tmp_path / "cell")
    back = load_guest(written)
    assert written.name == "bzImage.yaml" and written.read_text().startswith("# written by the harness")
    assert {k: v for k, v in asdict(back).items() if k != "path"} == {k: v for k, v in asdict(spec).items()
                                                                       if k != "path"}
