"""What a nightly pipeline does, engine-independent: setup, N shard jobs, one merge job.

shard K:  harness run --shard K/N into reports/shard-K (kept as an artifact even when cells fail)
merge:    harness report merge reports/shard-* -> reports/nightly; the report against the last good
          run (reports/last-good, restored from the engine's cache) when there is one; the verdict;
          on success reports/nightly becomes reports/last-good, which the engine caches for the
          next night. A failed night never replaces the baseline.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from harness.errors import ConfigError

HARNESS = ".venv/bin/harness"          # scripts/setup.sh puts the harness there
SHARD_DIR = "reports/shard-{k}"
MERGED_DIR = "reports/nightly"
BASELINE_DIR = "reports/last-good"
MAX_SHARDS = 64


@dataclass(frozen=True)
class Step:
    name: str
    run: str                  # shell lines, newline-separated
    host_setup: bool = False  # prepares the machine (packages, /dev/kvm): not part of the run itself


@dataclass
class Plan:
    shards: int
    tier: str = "nightly"
    matrix: str = "matrix.yaml"
    jobs: str = "auto"
    retry_failures: int = 1   # a failing cell boots once more: flakes are told apart from regressions
    cron: str = "0 2 * * *"
    timeout_minutes: int = 90
    setup: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(f"--shards {self.shards}: between 1 and {MAX_SHARDS}", "e.g. --shards 4")
        if self.tier not in ("quick", "nightly"):
            raise ConfigError(f"--tier {self.tier!r}", "use quick or nightly")
        self.setup = [Step("Set up the harness", "bash scripts/setup.sh", host_setup=True)]

    def shard_dir(self, k: str) -> str:
        return SHARD_DIR.format(k=k)

    def shard_step(self, k: str, n: str) -> Step:
        """`k`/`n` are the engine's expressions for this job's shard index and count."""
        argv = [HARNESS, "run", "--matrix", self.matrix, "--tier", self.tier, "-j", self.jobs,
                "--shard", f"{k}/{n}", "--report-dir", self.shard_dir(k), "--no-live"]
        if self.retry_failures:
            argv += ["--retry-failures", str(self.retry_failures)]
        # Failing cells must not stop the artifact upload: the merge job gives the verdict.
        return Step("Run shard", f"{_join(argv)} || echo \"shard {k}/{n}: some cells did not end as expected\"")

    def merge_steps(self, shard_dirs: str) -> list[Step]:
        report = _join([HARNESS, "report", MERGED_DIR])
        return [
            Step("Merge the shards", _join([HARNESS, "report", "merge"]) + f" {shard_dirs} --out {MERGED_DIR}"),
            Step("Report against the last good run",
                 f"if [ -f {BASELINE_DIR}/run.json ]; then {report} --baseline {BASELINE_DIR}; else {report}; fi"),
            Step("Verdict; a good night becomes the baseline",
                 f"{_join([HARNESS, 'ci', 'verdict', MERGED_DIR])}\n"
                 f"rm -rf {BASELINE_DIR} && cp -r {MERGED_DIR} {BASELINE_DIR}"),
        ]

    def shard_numbers(self) -> list[int]:
        return list(range(1, self.shards + 1))


def _join(argv: list[str]) -> str:
    """A shell line; words holding an engine expression or variable ($...) stay unquoted so they expand."""
    return " ".join(a if "$" in a else shlex.quote(a) for a in argv)
