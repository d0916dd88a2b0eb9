"""Helpers every test package shares."""
from __future__ import annotations

from typing import Callable

import pytest

from harness.cli.main import build_parser


@pytest.fixture
def harness_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str]]:
    """`harness ARGV` in this process through the real parser: (exit code, stdout). A HarnessError
    propagates (harness.cli.main would print it as one line), so a test can check which one."""
    def run(argv: list[str]) -> tuple[int, str]:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        return code, capsys.readouterr().out
    return run
