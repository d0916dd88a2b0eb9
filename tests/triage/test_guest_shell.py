"""After the prompt: auto_login, commands with output/exit status/checks, JUnit testcases per command."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from runner_repo import harness

from harness.errors import ConfigError
from harness.runner.guestfile import load_guest

REPO = Path(__file__).resolve().parents[2]

# A replayed guest with a login and a shell: `input` steps wait for what the harness types.
SHELL_TRANSCRIPT = r"""
- {at: 0.05, out: "fixture: entry replay\n"}
- {at: 0.10, out: "harness login: "}
- {at: 0.11, input: "root\n"}
- {at: 0.12, out: "root\r\nPassword: "}
- {at: 0.13, input: "s3cret\n"}
- {at: 0.14, out: "\r\n~ # "}
- {at: 0.15, input: "uname -a; echo __HARNESS_CMD1__=$?\n"}
- {at: 0.16, out: "uname -a; echo __HARNESS_CMD1__=$?\r\nLinux harness 6.1.0 x86_64\r\n__HARNESS_CMD1__=0\r\n~ # "}
- {at: 0.17, input: "dmesg; echo __HARNESS_CMD2__=$?\n"}
- {at: 0.18, out: "dmesg; echo __HARNESS_CMD2__=$?\r\n[ 1.0] ok\r\n[ 2.0] WARNING: CPU: 0 PID: 1 at foo\r\n__HARNESS_CMD2__=0\r\n~ # "}
- {at: 0.19, input: "false; echo __HARNESS_CMD3__=$?\n"}
- {at: 0.20, out: "false; echo __HARNESS_CMD3__=$?\r\n__HARNESS_CMD3__=1\r\n~ # "}
"""

GUEST = """\
family: linux
arch: x86_64
boot: bzimage
kernel: {path: %(transcript)s}
backends: [replay]
milestones:
  - {name: entry, pattern: 'fixture: entry', timeout: 10}
  - {name: login, pattern: 'login: ', timeout: 10}
auto_login: {user: root, password: s3cret, prompt: '# $', timeout: 10}
commands:
%(commands)s
"""


def repo_with(tmp_path: Path, commands: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "guests").mkdir(parents=True)
    (repo / "shell.yaml").write_text(SHELL_TRANSCRIPT)
    (repo / "guests" / "sh.yaml").write_text(GUEST % {"transcript": repo / "shell.yaml", "commands": commands})
    (repo / "matrix.yaml").write_text("version: 1\nentries:\n  - guests: [sh]\n    backends: [replay]\n")
    return repo


def test_commands_run_after_login_with_output_status_and_checks(tmp_path: Path):
    repo = repo_with(tmp_path, textwrap.indent(textwrap.dedent("""\
        - {run: 'uname -a', expect: ['^Linux harness 6\\.']}
        - {run: dmesg, absent: ['WARNING:']}
        - {run: 'false', status: 1}
        """), "  "))
    run = repo / "reports" / "r"
    proc = harness("run", "--report-dir", str(run), "--no-live", cwd=repo)
    assert proc.returncode == 1
    cell = json.loads(next((run / "cells").glob("*.json")).read_text())
    cmds = {c["command"]: c for c in cell["commands"]}
    assert cmds["uname -a"]["output"] == "Linux harness 6.1.0 x86_64" and cmds["uname -a"]["ok"]
    assert cmds["dmesg"]["exit_status"] == 0 and not cmds["dmesg"]["ok"]
    assert cmds["dmesg"]["problems"] == ["output has /WARNING:/: WARNING:"]
    assert cmds["false"]["exit_status"] == 1 and cmds["false"]["ok"]       # status: 1 was expected
    assert cell["outcome"] == "fail" and cell["failure"]["kind"] == "command"
    assert cell["reason"].startswith("command 'dmesg': output has /WARNING:/")
    assert cell["culprit"]["party"] == "guest"
    junit = ET.parse(run / "junit.xml").getroot()
    cases = {c.get("name"): c for c in junit.iter("testcase")}
    assert {"uname -a", "dmesg", "false"} <= set(cases) and junit.get("tests") == "4"
    assert cases["dmesg"].find("failure").get("type") == "guest"
    assert cases["uname -a"].find("failure") is None
    assert "[exit status 0]" in cases["uname -a"].find("system-out").text
    assert "After the prompt" in (run / "index.html").read_text()


@pytest.mark.slow   # ~7 s: waits out a 2 s login timeout in a harness run
def test_wrong_password_is_a_failed_login(tmp_path: Path):
    repo = repo_with(tmp_path, "  - uname -a\n")
    text = (repo / "guests" / "sh.yaml").read_text().replace("password: s3cret", "password: nope, timeout: 2")
    text = text.replace(", timeout: 10}\ncommands", "}\ncommands")
    (repo / "guests" / "sh.yaml").write_text(text)
    run = repo / "reports" / "r"
    assert harness("run", "--report-dir", str(run), "--no-live", cwd=repo).returncode == 1
    cell = json.loads(next((run / "cells").glob("*.json")).read_text())
    assert cell["commands"][0]["command"] == "(login)" and cell["outcome"] == "fail"
    assert "no shell prompt" in cell["reason"]


def test_commands_without_auto_login_are_refused_with_a_line(tmp_path: Path):
    path = tmp_path / "g.yaml"
    path.write_text("family: linux\narch: x86_64\nboot: bzimage\nmilestones:\n  - {name: l, pattern: x}\n"
                    "commands:\n  - uname -a\n")
    with pytest.raises(ConfigError) as err:
        load_guest(path)
    assert "g.yaml:6:" in err.value.problem and "no auto_login" in err.value.problem


def test_words_after_double_dash_only_for_boot(tmp_path: Path):
    proc = harness("list", "--", "uname", cwd=REPO)
    assert proc.returncode == 2 and "takes nothing after --" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_busybox_linux_on_qemu_tcg_runs_a_command_after_login(tmp_path: Path):
    """Slow: the Debian kernel + busybox initramfs boot to `login:` on QEMU TCG (~10 s here)."""
    from harness.assets.recipes import build_asset
    kernel, initrd = build_asset("debian-cloud-kernel-amd64").path, build_asset("busybox-initramfs-amd64").path
    proc = subprocess.run([sys.executable, "-m", "harness", "boot", str(kernel), "--initrd", str(initrd),
                           "--backend", "qemu-tcg", "--family", "linux", "--login", "root", "--quiet",
                           "--report-dir", str(tmp_path), "--", "uname", "-a"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cell = json.loads(next((tmp_path / "cells").glob("*.json")).read_text())
    [cmd] = cell["commands"]
    assert cmd["command"] == "uname -a" and cmd["exit_status"] == 0
    assert cmd["output"].startswith("Linux harness 6.") and "x86_64" in cmd["output"]
