"""The lab's pieces without booting it: command line, init script, host axis, per-cell stream cutting."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from harness.assets.lab import LAB_ERROR_PREFIX, LAB_PARAMS, init_script, lab_params
from harness.errors import ConfigError
from harness.hosts.lab import ClockSync, LabSession, Share, _kvm_ready_s, qemu_argv
from harness.model import events as ev
from harness.model.session import BootRequest

REPO = Path(__file__).resolve().parents[2]


def test_every_lab_arch_is_one_record_with_its_assets():
    for arch, params in LAB_PARAMS.items():
        assert params.arch == arch and params.kernel_asset and params.initramfs_asset
        assert params.qemu_binary.endswith(arch)
    with pytest.raises(ConfigError):
        lab_params("riscv64")


def test_qemu_command_line_shares_read_only_and_names_four_ports(tmp_path: Path):
    params = lab_params("x86_64")
    shares = [Share("usr", Path("/usr"), "/usr"), Share("in", tmp_path, "/lab/in", cache="none")]
    argv = qemu_argv(params, Path("/k"), Path("/i"), shares, tmp_path)
    assert argv[:7] == ["qemu-system-x86_64", "-M", "q35", "-accel", "tcg,thread=multi", "-cpu", "max"]
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    assert len(fsdevs) == 2 and all("readonly=on" in f and "security_model=none" in f for f in fsdevs)
    ports = [a for a in argv if a.startswith("virtserialport")]
    assert sorted(p.rsplit("name=", 1)[1] for p in ports) == ["harness.console", "harness.control", "harness.events",
                                                                       "harness.gdb"]
    cmdline = argv[argv.index("-append") + 1]
    assert "harness.shares=usr:/usr:loose,in:/lab/in:none" in cmdline
    assert "-no-reboot" in argv   # a lab that panics or powers off ends its QEMU


def test_init_script_loads_modules_in_order_and_every_failure_is_one_error_line():
    params = lab_params("x86_64")
    modules = [Path(f"/m/{n}.ko") for n in ("irqbypass", "kvm", "ccp", "kvm-amd", "9p")]
    script = init_script(params, modules)
    insmods = [line.split()[1] for line in script.splitlines() if line.startswith("insmod ")]
    assert insmods == [f"/modules/{m.name}" for m in modules]
    assert "grep -qw svm /proc/cpuinfo" in script         # a QEMU without SVM is named before insmod
    kvm_line = next(l for l in script.splitlines() if "kvm-amd.ko" in l)
    assert "no usable svm" in kvm_line and "-cpu max" in kvm_line
    assert LAB_ERROR_PREFIX in script and "poweroff -f" in script
    assert "ro," in script and "mount -t 9p" in script


def test_init_stages_the_script_logs_are_what_the_agent_reports(tmp_path: Path, monkeypatch):
    import subprocess

    from harness.assets.lab import INIT_STAGES
    from harness.hosts import agent
    assert agent.INIT_STAGES == INIT_STAGES
    modules = [Path(f"/m/{n}.ko") for n in ("kvm", "kvm-amd")]
    script = init_script(lab_params("x86_64"), modules)
    assert [l for l in script.splitlines() if l.startswith("stage ")] == ["stage init", "stage kvm", "stage kvm-amd",
                                                                          "stage shares"]
    log = tmp_path / "init-stages"
    define = next(l for l in script.splitlines() if l.startswith("stage()")).replace(INIT_STAGES, str(log))
    subprocess.run(["sh", "-c", f"{define}\nstage init\nstage kvm-amd"], check=True)
    monkeypatch.setattr(agent, "INIT_STAGES", str(log))
    stages = agent._init_stages()
    assert [name for _, name in stages] == ["init", "kvm-amd"] and 0 < stages[0][0] <= stages[1][0]


def test_kvm_ready_time_is_the_ready_time_minus_the_span_since_inits_kvm_check():
    assert _kvm_ready_s(10.0, {"uptime_s": 8.0, "kvm_ready_uptime_s": 5.5}) == 7.5
    assert _kvm_ready_s(10.0, {"uptime_s": 8.0}) is None


class FakeLab:
    """What a LabSession needs of its lab, recording what it sends."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.session = None
        self.killed = False

    def describe(self) -> dict:
        return {"kind": "kvm_amd nested in QEMU TCG"}

    def send(self, msg: dict) -> None:
        self.sent.append(msg)

    def unstage(self, lab_id: str) -> None:
        pass

    def kill(self) -> None:
        self.killed = True


def _request(tmp_path: Path) -> BootRequest:
    return BootRequest(cell_id="c", guest="g", family="linux", arch="x86_64", boot="pvh", kernel=None,
                       workdir=tmp_path)


def _read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def test_session_cuts_the_console_at_the_agents_count_and_rebases_event_times(tmp_path: Path):
    lab = FakeLab()
    session = LabSession(_request(tmp_path), lab, "7", ClockSync(offset_s=100.0, rtt_s=0.001))
    lab.session = session
    session.on_console(b"Linux version 6.1\n")
    event = ev.VmEvent(ev.GAP, 5.0, {"kind": "msr-read", "key": "0x10", "first_t": 5.0}).to_line() + "\n"
    start = ev.VmEvent(ev.VM_START, 1.0, {"host": {"kvm_module": "kvm_amd"}}).to_line() + "\n"
    half = len(start) // 2
    session.on_events(start[:half].encode())          # a line split across two reads
    session.on_events((start[half:] + event).encode())
    assert session.poll_exit() is None
    summary = {"exit_code": 0, "extra": {"gaps": [{"kind": "msr-read", "key": "0x10", "first_t": 5.0}]},
               "flight_recorder": [{"reason": "io", "t": 6.0}], "host": {"kvm_module": "kvm_amd"}}
    session.on_exited({"type": "exited", "id": "7", "code": 0, "console_bytes": 18 + 6,
                       "events_bytes": len(start) + len(event), "summary": summary, "stderr": ""})
    assert session.poll_exit() is None                 # 6 console bytes are still on their way
    session.on_console(b"login:")
    assert session.poll_exit() == 0
    assert _read_all(session.console_fd) == b"Linux version 6.1\nlogin:"
    result = session.stop()
    assert lab.sent == []                              # it had exited: nothing to stop
    events = ev.EventReader(tmp_path / "events.jsonl").poll()
    assert [e.type for e in events] == [ev.VM_START, ev.GAP]
    assert events[0].t == 101.0 and events[1].t == 105.0 and events[1].data["first_t"] == 105.0
    assert events[0].data["host"]["lab"]["kind"].startswith("kvm_amd nested")
    assert result.extra["gaps"][0]["first_t"] == 105.0 and result.flight_recorder[0]["t"] == 106.0
    assert result.host["host"] == "lab" and result.host["clock_rtt_s"] == 0.001
    assert json.loads((tmp_path / "summary.json").read_text())["host"]["host"] == "lab"


def test_a_lab_that_dies_mid_cell_ends_it_with_a_backend_error(tmp_path: Path):
    lab = FakeLab()
    session = LabSession(_request(tmp_path), lab, "1", ClockSync())
    session.on_console(b"partial")
    session.on_lab_died("the lab sent nothing for 30 s (wedged)")
    assert session.poll_exit() == -1
    assert _read_all(session.console_fd) == b"partial"
    (event,) = ev.EventReader(tmp_path / "events.jsonl").poll()
    assert event.type == ev.BACKEND_ERROR and "wedged" in event.data["message"]
    assert session.stop().extra["infrastructure_error"].endswith("(wedged)")


def test_a_session_whose_child_never_reports_is_stopped_then_the_lab_is_killed(tmp_path: Path, monkeypatch):
    import harness.hosts.lab as lab_mod
    monkeypatch.setattr(lab_mod, "STOP_TIMEOUT_S", 0.2)
    lab = FakeLab()
    session = LabSession(_request(tmp_path), lab, "3", ClockSync())
    t = time.monotonic()
    summary = session.stop()
    assert time.monotonic() - t < 2.0
    assert lab.sent == [{"type": "stop", "id": "3"}] and lab.killed
    assert "wedged" in summary.extra["infrastructure_error"]


def test_host_axis_in_cell_ids_and_matrix(tmp_path: Path):
    from harness.runner.guestfile import load_guests
    from harness.runner.matrix import load_matrix
    guests = load_guests(REPO / "guests")
    matrix = load_matrix(REPO / "matrix.yaml", guests)
    cells = {c.id: c for c in matrix.cells(guests, "quick")}
    lab_cells = [c for c in cells.values() if c.host == "lab"]
    assert {c.guest.name for c in lab_cells} >= {"linux-amd64-bzimage", "linux-amd64-pvh", "fixture-arm64",
                                                  "linux-arm64"}
    assert "linux-arm64-virtio" not in {c.guest.name for c in lab_cells}       # nightly
    assert all("@builtin+lab/" in c.id and c.params()["host"] == "lab" for c in lab_cells)
    # Both reach login: in the lab, and the bzImage guest's dmesg check passes: the lab's XSETBV
    # quirk is worked around (harness.hosts.quirks), so Linux's XSAVE sizes agree.
    expects = {c.guest.name: c.expect for c in lab_cells}
    assert expects["linux-amd64-pvh"] == "pass" and expects["linux-amd64-bzimage"] == "pass"
    assert "fixture-pvh@builtin/default/emulate/1c/64M" in cells      # native ids are unchanged
    matrix.host_override = "lab"
    moved = matrix.cells(guests, "quick")
    assert all(c.host == "lab" for c in moved if c.backend == "builtin")
    assert all(c.host == "native" for c in moved if c.backend != "builtin")   # QEMU TCG stays here


def test_matrix_rejects_an_unknown_host(tmp_path: Path):
    from harness.runner.guestfile import load_guests
    from harness.runner.matrix import load_matrix
    bad = tmp_path / "matrix.yaml"
    bad.write_text("version: 1\nentries:\n  - guests: [fixture-pvh]\n    hosts: [cloud]\n")
    with pytest.raises(ConfigError) as exc:
        load_matrix(bad, load_guests(REPO / "guests"))
    assert "cloud" in str(exc.value.problem) and "native" in str(exc.value.fix)


def test_report_pairs_builtin_with_qemu_only_on_the_same_host_and_names_the_hosts():
    from types import SimpleNamespace

    from harness.report.backend_diff import _pairs, compare_pair
    from harness.report.hosts import render_markdown
    from harness.report.summary import md
    from harness.model.result import CellResult, MilestoneHit

    def result(backend: str, times: list[float], host: str) -> CellResult:
        names = ["kernel", "userspace", "login"]
        lab = {"kind": "kvm_amd nested in QEMU TCG", "lab_kernel": "6.1.0-57-amd64",
               "quirks": ["xsetbv-not-seen-by-kvm"]} if host == "lab" else None
        return CellResult(cell_id=f"g@{backend}+{host}", guest="g", backend=backend, outcome="pass",
                          params={"host": host, "vcpus": 1, "memory_mib": 256}, expected_milestones=names,
                          milestones=[MilestoneHit(n, t, 0.0, 0) for n, t in zip(names, times)],
                          host={"host": host, "kvm_module": "kvm_amd" if lab else "kvm_pvm",
                                **({"lab": lab} if lab else {})})
    results = [result("builtin", [10.0, 40.0, 42.0], "lab"), result("qemu-kvm", [5.0, 20.0, 21.0], "lab"),
               result("builtin", [1.0, 2.0, 3.0], "native"), result("qemu-tcg", [1.0, 1.5, 2.0], "native")]
    pairs = _pairs([SimpleNamespace(result=r) for r in results])
    assert sorted((a.cell_id, b.cell_id) for a, b in pairs) == [("g@builtin+lab", "g@qemu-kvm+lab"),
                                                                 ("g@builtin+native", "g@qemu-tcg+native")]
    lab_pair = compare_pair(*next(p for p in pairs if p[0].cell_id == "g@builtin+lab"))
    assert [m.ratio for m in lab_pair.milestones] == [2.0, 2.0, 2.0]
    text = "\n".join(render_markdown(results, md))
    assert md("kvm_amd nested in QEMU TCG") in text and "6.1.0-57-amd64" in text and md("kvm_pvm") in text
    lab_row = next(line for line in text.splitlines() if line.startswith("| lab |"))
    assert lab_row.endswith(f"| {md('xsetbv-not-seen-by-kvm')} |")
    assert next(line for line in text.splitlines() if line.startswith("| native |")).endswith("| - |")


def test_aarch64_lab_shares_the_arm64_userland_instead_of_this_machines_usr(tmp_path: Path, monkeypatch):
    import harness.assets.recipes as recipes
    import harness.assets.userland as userland
    from harness.hosts.lab import lab_shares
    tree = tmp_path / "tree"
    (tree / "usr" / "lib" / "python3" / "dist-packages").mkdir(parents=True)
    asked = []
    monkeypatch.setattr(recipes, "build_asset", lambda name: asked.append(name) or name)
    monkeypatch.setattr(userland, "unpack_userland", lambda entry: tree)
    shares = {s.tag: s for s in lab_shares(tmp_path / "in", lab_params("aarch64"))}
    assert asked == ["lab-userland-arm64"]
    assert shares["usr"].host_path == tree / "usr" and shares["usr"].mount == "/usr"
    assert shares["site"].host_path == tree / "usr/lib/python3/dist-packages"
    assert shares["src"].host_path == REPO / "harness"
    assert "pauth-impdef=on" in lab_params("aarch64").cpu and not lab_params("x86_64").userland_asset


def test_builtin_in_a_lab_checks_the_guest_against_the_labs_arch(tmp_path: Path):
    from harness.backends.builtin import BuiltinBackend
    from harness.errors import BackendUnavailable
    request = BootRequest(cell_id="c", guest="g", family="fixture", arch="aarch64", boot="image",
                          kernel=tmp_path / "Image", workdir=tmp_path)
    BuiltinBackend().check_guest(request, "aarch64")           # the aarch64 lab
    with pytest.raises(BackendUnavailable, match="not aarch64"):
        BuiltinBackend().check_guest(request, "x86_64")         # this machine


def test_files_the_agent_brought_back_land_beside_the_console(tmp_path: Path):
    """The virtio console's log of a lab cell comes back in the agent's `exited` message."""
    from harness.hosts.backend import BUILTIN_COLLECT
    lab = FakeLab()
    session = LabSession(_request(tmp_path), lab, "8", ClockSync(offset_s=0.0, rtt_s=0.001))
    lab.session = session
    files = {BUILTIN_COLLECT[0]: "harness-hvc0\n", "../escape": "no"}
    session.on_exited({"type": "exited", "id": "8", "code": 0, "console_bytes": 0, "events_bytes": 0,
                       "summary": {"exit_code": 0}, "files": files, "stderr": ""})
    session.stop()
    assert (tmp_path / "console-hvc0.log").read_text() == "harness-hvc0\n"
    assert not (tmp_path.parent / "escape").exists()
