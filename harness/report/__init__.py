"""Reports of a run directory: results.json, junit.xml, summary.md, index.html.

Everything is built from the run directory's files alone (harness.model.result), so a run
killed halfway reports the cells that finished. `write_reports` is what the runner calls at the
end of a run and what `harness report RUN` calls afterwards.
"""
from __future__ import annotations

from pathlib import Path

from harness.model.files import write_json_atomic
from harness.report.diff import RunDiff, diff_results, diff_runs
from harness.report.merge import merge_runs
from harness.report.run import load_run

__all__ = ["write_reports", "merge_runs", "diff_runs", "RunDiff", "load_run"]


def write_reports(run_dir: Path, baseline_dir: Path | None = None) -> dict[str, Path]:
    """Write results.json, junit.xml, summary.md and index.html into `run_dir`; return their paths."""
    from harness.report.html import write_html
    from harness.report.junit import write_junit
    from harness.report.results import build_results
    from harness.report.summary import write_summary

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    from harness.report.backend_diff import backend_diffs
    from harness.report.triage import build_triage

    baseline: RunDiff | None = None
    base = None
    if baseline_dir is not None:
        base = load_run(Path(baseline_dir))
        baseline = diff_results(base.run_id, base.results, run.run_id, run.results)
    results = build_results(run, baseline)
    results["triage"] = build_triage(run, base.results if base else None)
    results["backend_diff"] = [pair.to_json() for pair in backend_diffs(run)]
    paths = {
        "results": run_dir / "results.json",
        "junit": run_dir / "junit.xml",
        "summary": run_dir / "summary.md",
        "html": run_dir / "index.html",
    }
    write_json_atomic(paths["results"], results)
    write_junit(run, paths["junit"])
    write_summary(run, results, baseline, paths["summary"])
    write_html(run, results, baseline, paths["html"])
    for path in paths.values():
        path.chmod(0o644)  # CI artifact uploaders and web servers run as other users
    return paths
