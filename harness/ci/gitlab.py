"""GitLab CI pipeline for the nightly matrix (schema: check-jsonschema vendor.gitlab-ci)."""
from __future__ import annotations

from typing import Any

from harness.ci.plan import BASELINE_DIR, MERGED_DIR, Plan

SHARD, TOTAL = "$CI_NODE_INDEX", "$CI_NODE_TOTAL"
RULES = [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}, {"if": '$CI_PIPELINE_SOURCE == "web"'}]


def _lines(steps: list[Any]) -> list[str]:
    return [line for s in steps for line in s.run.splitlines()]


def pipeline(plan: Plan) -> dict[str, Any]:
    shard_dir = plan.shard_dir(SHARD)
    shard = {
        "stage": "boot",
        "image": "debian:12",
        "tags": ["kvm"],                       # a runner with /dev/kvm
        "parallel": plan.shards,
        "timeout": f"{plan.timeout_minutes} minutes",
        "rules": RULES,
        "script": _lines(plan.setup + [plan.shard_step(SHARD, TOTAL)]),
        "artifacts": {"when": "always", "expire_in": "7 days", "paths": [shard_dir],
                      "reports": {"junit": f"{shard_dir}/junit.xml"}},
    }
    merge = {
        "stage": "report",
        "image": "debian:12",
        "needs": [{"job": "shard", "artifacts": True}],
        "rules": [{**rule, "when": "always"} for rule in RULES],    # merge what the shards left, failed or not
        # The cache holds only a good night: GitLab saves a job's cache when the job succeeds,
        # and the verdict fails the job on a bad one.
        "cache": {"key": "harness-last-good", "paths": [BASELINE_DIR], "policy": "pull-push"},
        "script": _lines(plan.setup + plan.merge_steps("reports/shard-*")),
        "artifacts": {"when": "always", "expire_in": "30 days", "expose_as": "harness report",
                      "paths": [MERGED_DIR], "reports": {"junit": f"{MERGED_DIR}/junit.xml"}},
    }
    return {"stages": ["boot", "report"], "shard": shard, "merge": merge}
