"""`harness` command line: one subcommand a module, errors as one line and a non-zero exit."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from harness.errors import HarnessError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Boot guest operating systems, match their "
                                     "consoles against boot milestones, and record emulation gaps.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from harness.cli import (assets_cmd, attach_cmd, boot_cmd, ci_cmd, crashes_cmd, gaps_cmd, lab_cmd, repro_cmd,
                             report_cmd, run_cmd)
    for module in (run_cmd, boot_cmd, assets_cmd, gaps_cmd, report_cmd, ci_cmd, lab_cmd, repro_cmd, attach_cmd,
                   crashes_cmd):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    trailing: list[str] | None = None
    if "--" in argv:   # words after `--` go to the subcommand as they are (harness boot K -- uname -a)
        cut = argv.index("--")
        argv, trailing = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if trailing is not None:
        if not hasattr(args, "guest_command"):
            parser.error(f"`harness {args.command}` takes nothing after --")
        args.guest_command = trailing
    try:
        return int(args.func(args) or 0)
    except HarnessError as e:
        print(e.one_line(), file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:   # `harness gaps | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
