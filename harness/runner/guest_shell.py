"""After the prompt: log in on the guest's console and run commands, each with its output and exit status.

A guest file may say how to log in and what to run once every milestone is reached:

    auto_login: {user: root, password: "", prompt: '~ # '}     # prompt: a regex for the shell prompt
    commands:
      - uname -a
      - {run: 'grep -c ^processor /proc/cpuinfo', expect: ['^1$'], timeout: 10}
      - {run: dmesg, absent: ['WARNING:', 'BUG:']}

Each command is typed as `CMD; echo __HARNESS_CMDn__=$?`: the marker line gives the exit status
and ends the output (the echoed command line shows `$?`, never digits, so it cannot end it
early; the marker is numbered, not random, so a recorded console replays).
`expect` patterns must match the output, `absent` patterns must not, the status must be
`status` (default 0). A command that fails a check fails the cell (failure kind `command`),
and every command is a JUnit testcase of its own (as LAVA test cases and TuxRun's `-- cmd`).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import pexpect

from harness.errors import ConfigError
from harness.model.guest import CommandResult
from harness.runner import yamlfile as y

MAX_OUTPUT = 64 * 1024
PASSWORD_PROMPT = rb"[Pp]assword: ?$"
LOGIN_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 30.0


@dataclass
class AutoLogin:
    user: str = ""               # "" : the console already is a shell, just wake the prompt
    password: str = ""
    prompt: str = r"[#$] $"      # regex of the shell prompt
    timeout: float = LOGIN_TIMEOUT_S


@dataclass
class GuestCommand:
    run: str
    expect: list[str] = field(default_factory=list)      # regexes the output must match (re.M)
    absent: list[str] = field(default_factory=list)      # regexes the output must not match
    status: int = 0
    timeout: float = COMMAND_TIMEOUT_S


# -- guest-file keys -------------------------------------------------------------------------------
def parse_auto_login(data: y.YMap, what: str) -> AutoLogin | None:
    if "auto_login" not in data:
        return None
    m = y.require_map(data["auto_login"], data, "auto_login", f"{what}.auto_login")
    w = f"{what}.auto_login"
    y.check_keys(m, ("user", "password", "prompt", "timeout"), w, required=("prompt",))
    login = AutoLogin(y.get_typed(m, "user", str, "", w), y.get_typed(m, "password", str, "", w),
                      y.get_typed(m, "prompt", str, "", w), float(y.get_typed(m, "timeout", (int, float), 30, w)))
    _regex(m, "prompt", login.prompt, w)
    return login


def parse_commands(data: y.YMap, what: str) -> list[GuestCommand]:
    items = data.get("commands", [])
    if not isinstance(items, list):
        raise y.fail(data, "commands", f"{what}.commands must be a list", "a list of commands or {run: ...} maps")
    out = []
    for i, item in enumerate(items):
        w = f"{what}.commands[{i}]"
        if isinstance(item, str):
            out.append(GuestCommand(item))
            continue
        m = y.require_map(item, items, i, w)
        y.check_keys(m, ("run", "expect", "absent", "status", "timeout"), w, required=("run",))
        cmd = GuestCommand(y.get_typed(m, "run", str, "", w), y.get_str_list(m, "expect", [], w),
                           y.get_str_list(m, "absent", [], w), y.get_typed(m, "status", int, 0, w),
                           float(y.get_typed(m, "timeout", (int, float), COMMAND_TIMEOUT_S, w)))
        for key in ("expect", "absent"):
            for rx in getattr(cmd, key):
                _regex(m, key, rx, w)
        out.append(cmd)
    if out and "auto_login" not in data:
        raise y.fail(data, "commands", f"{what} has commands but no auto_login",
                     "add auto_login: {user: ..., password: ..., prompt: REGEX} so the harness can reach a shell")
    return out


def _regex(where: y.YMap, key: str, pattern: str, what: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise y.fail(where, key, f"{what}.{key}: bad regular expression {pattern!r}: {e}",
                     "fix the regex (Python re syntax)") from None


# -- at run time -------------------------------------------------------------------------------------
class GuestShell:
    """Drives the console the watcher has been reading (its pexpect child) and the session's input."""

    def __init__(self, child: Any, send: Any, login: AutoLogin, timeout_scale: float = 1.0) -> None:
        self.child = child
        self.send = send
        self.login_spec = login
        self.scale = timeout_scale
        self.prompt = re.compile(login.prompt.encode(), re.M)
        self.ran = 0

    def login(self) -> str | None:
        """Reach the shell prompt; a problem as one line, or None."""
        spec = self.login_spec
        deadline = time.monotonic() + spec.timeout * self.scale
        self.send((spec.user + "\n").encode() if spec.user else b"\n")
        asked_password = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"no shell prompt /{spec.prompt}/ within {spec.timeout * self.scale:g} s of logging in"
            try:
                i = self.child.expect([self.prompt, re.compile(PASSWORD_PROMPT, re.M)], timeout=left)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return "the console closed while logging in"
            if i == 0:
                return None
            if asked_password:
                return "the guest asked for the password again: wrong auto_login password"
            asked_password = True
            self.send((spec.password + "\n").encode())

    def run(self, command: GuestCommand) -> CommandResult:
        self.ran += 1
        marker = f"__HARNESS_CMD{self.ran}__"
        done = re.compile(rf"{marker}=(\d+)".encode())
        start = time.monotonic()
        self.send(f"{command.run}; echo {marker}=$?\n".encode())
        try:
            self.child.expect(done, timeout=command.timeout * self.scale)
        except (pexpect.TIMEOUT, pexpect.EOF) as e:
            seen = _text(self.child.before if isinstance(self.child.before, bytes) else b"")
            why = "did not finish" if isinstance(e, pexpect.TIMEOUT) else "lost the console"
            return CommandResult(command.run, _output(seen, marker), None, round(time.monotonic() - start, 3),
                                 [f"{why} within {command.timeout * self.scale:g} s"])
        status = int(self.child.match.group(1))
        output = _output(_text(self.child.before), marker)
        result = CommandResult(command.run, output, status, round(time.monotonic() - start, 3))
        result.problems = check(command, output, status)
        try:   # the prompt after the marker, so the next command starts on a quiet line
            self.child.expect(self.prompt, timeout=5 * self.scale)
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass
        return result


def check(command: GuestCommand, output: str, status: int | None) -> list[str]:
    problems = []
    if status != command.status:
        problems.append(f"exit status {status}, expected {command.status}")
    for rx in command.expect:
        if not re.search(rx, output, re.M):
            problems.append(f"output lacks /{rx}/")
    for rx in command.absent:
        hit = re.search(rx, output, re.M)
        if hit:
            problems.append(f"output has /{rx}/: {hit.group(0)[:120]}")
    return problems


def _text(data: bytes) -> str:
    return data.decode(errors="replace").replace("\r", "")


def _output(before: str, marker: str) -> str:
    """What the command printed: drop the echoed command line (it holds the marker's name)."""
    lines = before.split("\n")
    for i, line in enumerate(lines):
        if f"{marker}=$?" in line:
            lines = lines[i + 1:]
            break
    return "\n".join(lines).strip("\n")[:MAX_OUTPUT]


def after_prompt(child: Any, send: Any, login: AutoLogin | None, commands: list[GuestCommand],
                 timeout_scale: float = 1.0) -> list[CommandResult]:
    """Log in and run `commands`; a failed login is the first (and only) result."""
    shell = GuestShell(child, send, login or AutoLogin(), timeout_scale)
    start = time.monotonic()
    problem = shell.login()
    if problem:
        return [CommandResult("(login)", _text(child.before if isinstance(child.before, bytes) else b"")[-2000:],
                              None, round(time.monotonic() - start, 3), [problem])]
    return [shell.run(c) for c in commands]


def apply_commands(result: Any, commands: list[CommandResult]) -> None:
    """Record the commands in a CellResult; the first failed one fails the cell (kind `command`)."""
    from harness.model.result import FAIL, PASS, Failure
    result.commands = [c.to_json() for c in commands]
    bad = next((c for c in commands if not c.ok), None)
    if bad is not None and result.outcome == PASS:
        result.outcome = FAIL
        result.reason = f"command {bad.command!r}: {'; '.join(bad.problems)}"[:500]
        result.failure = Failure("command", result.reason)


def commands_from_words(words: list[str]) -> list[GuestCommand]:
    """`harness boot ... -- uname -a`: the words after `--` are one command."""
    if not words:
        return []
    if any("\n" in w for w in words):
        raise ConfigError("a command after -- cannot contain a newline", "give one shell command line")
    return [GuestCommand(" ".join(words))]
