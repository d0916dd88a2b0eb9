"""Near-miss reports: when a milestone times out, say how close the console came.

The closest line is chosen by difflib's ratio between each recent console line and the
pattern's literal text (regex syntax stripped), which finds e.g. `~ #` when `/ #` was expected
(the prompt change that timed out every KernelCI job, kernelci-core 3176).
"""
from __future__ import annotations

import difflib
import re

from harness.model.result import NearMiss

_REGEX_SYNTAX = re.compile(r"\\[dDsSwWbB]|\\(.)|[\^$.*+?()\[\]{}|]")


def literal_text(pattern: str) -> str:
    """The characters a regex would match literally, in order (escapes resolved, syntax dropped)."""
    return _REGEX_SYNTAX.sub(lambda m: m.group(1) or "", pattern)


def closest_line(lines: list[str], pattern: str) -> tuple[str | None, float]:
    target = literal_text(pattern).strip()
    best, best_ratio = None, 0.0
    for line in lines:
        candidate = line.strip()
        if not candidate:
            continue
        matcher = difflib.SequenceMatcher(None, target, candidate)
        # Score the best-matching window of the line, so a long line holding the text still ranks high.
        ratio = max(matcher.ratio(), _window_ratio(target, candidate))
        if ratio > best_ratio:
            best, best_ratio = line, ratio
    return best, round(best_ratio, 3)


def _window_ratio(target: str, line: str) -> float:
    if not target or len(line) <= len(target):
        return 0.0
    blocks = difflib.SequenceMatcher(None, target, line).get_matching_blocks()
    matched = sum(b.size for b in blocks)
    return matched / len(target) * 0.95  # a window match is slightly below an exact line match


def near_miss(waiting_for: str, pattern: str, last_milestone: str | None, lines: list[str]) -> NearMiss:
    line, ratio = closest_line(lines, pattern)
    return NearMiss(waiting_for=waiting_for, pattern=pattern, last_milestone=last_milestone,
                    last_lines=lines[-20:], closest_line=line, closest_ratio=ratio)
