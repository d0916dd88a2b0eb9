"""GitHub Actions workflow for the nightly matrix (schema: check-jsonschema vendor.github-workflows)."""
from __future__ import annotations

from typing import Any

from harness.ci.plan import BASELINE_DIR, MERGED_DIR, Plan, Step

SHARD = "${{ matrix.shard }}"
BASELINE_KEY = "harness-last-good"
# The hosted runners' /dev/kvm belongs to root; this udev rule is GitHub's documented way to open it.
KVM_RULE = ('echo \'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"\' '
            "| sudo tee /etc/udev/rules.d/99-kvm4all.rules\n"
            "sudo udevadm control --reload-rules\nsudo udevadm trigger --name-match=kvm")
HOST_STEPS = [Step("Give the job /dev/kvm", KVM_RULE, host_setup=True)]


def _run(step: Step) -> dict[str, Any]:
    return {"name": step.name, "run": step.run}


def workflow(plan: Plan) -> dict[str, Any]:
    checkout = {"uses": "actions/checkout@v4"}
    setup = [_run(s) for s in HOST_STEPS + plan.setup]
    shard_job = {
        "name": f"shard {SHARD}/{plan.shards}",
        "runs-on": "ubuntu-latest",
        "timeout-minutes": plan.timeout_minutes,
        "strategy": {"fail-fast": False, "matrix": {"shard": plan.shard_numbers()}},
        "steps": [checkout, *setup, _run(plan.shard_step(SHARD, str(plan.shards))),
                  {"name": "Keep the shard's run directory", "if": "always()",
                   "uses": "actions/upload-artifact@v4",
                   "with": {"name": f"shard-{SHARD}", "path": plan.shard_dir(SHARD), "retention-days": 7}}],
    }
    merge_job = {
        "name": "merge and report",
        "needs": "shard",
        "if": "always()",
        "runs-on": "ubuntu-latest",
        "steps": [checkout, *[_run(s) for s in plan.setup],
                  {"name": "Fetch the shards", "uses": "actions/download-artifact@v4",
                   "with": {"pattern": "shard-*", "path": "reports"}},
                  {"name": "Restore the last good run", "uses": "actions/cache/restore@v4",
                   "with": {"path": BASELINE_DIR, "key": f"{BASELINE_KEY}-${{{{ github.run_id }}}}",
                            "restore-keys": f"{BASELINE_KEY}-"}},
                  *[_run(s) for s in plan.merge_steps("reports/shard-*")[:2]],
                  {"name": "Summary", "if": "always()",
                   "run": f"cat {MERGED_DIR}/summary.md >> \"$GITHUB_STEP_SUMMARY\" || true"},
                  {"name": "Keep the report", "if": "always()", "uses": "actions/upload-artifact@v4",
                   "with": {"name": "harness-report", "path": MERGED_DIR}},
                  _run(plan.merge_steps("reports/shard-*")[2]),
                  {"name": "Keep this run as the next night's baseline", "if": "success()",
                   "uses": "actions/cache/save@v4",
                   "with": {"path": BASELINE_DIR, "key": f"{BASELINE_KEY}-${{{{ github.run_id }}}}"}}],
    }
    return {
        "name": "harness nightly",
        "on": {"schedule": [{"cron": plan.cron}], "workflow_dispatch": {}},
        "permissions": {"contents": "read"},
        "jobs": {"shard": shard_job, "merge": merge_job},
    }
