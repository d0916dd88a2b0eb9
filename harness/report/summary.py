"""summary.md: the page a CI job shows (GitHub step summary, GitLab artifact, plain terminal).

Guest-controlled text (reasons, console lines, gap keys) is put in table cells or code spans
with Markdown's active characters neutralised, so a console cannot inject links or HTML.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.report.diff import RunDiff
from harness.report.results import cell_new_gaps, cell_ok
from harness.report.run import RunData
from harness.runner.result import OUTCOMES

MAX_ROWS = 100   # GitHub step summaries are capped at 1 MiB; index.html has everything
_MD_ACTIVE = re.compile(r"([\\`*_\[\]<>|~])")   # enough: with `[` escaped, `(` cannot make a link
_CTRL = re.compile(r"[\x00-\x1f\x7f]")


def md(text: Any, limit: int = 200) -> str:
    """One line of untrusted text, safe inside a Markdown table cell."""
    s = _CTRL.sub(" ", str(text)).strip()
    if len(s) > limit:
        s = s[:limit - 1] + "…"
    return _MD_ACTIVE.sub(r"\\\1", s)


def _group_new_gaps(run: RunData) -> dict[tuple[str, str, str], list[tuple[str, dict[str, Any]]]]:
    groups: dict[tuple[str, str, str], list[tuple[str, dict[str, Any]]]] = {}
    for c in run.cells:
        for g in cell_new_gaps(c.result):
            ident = (str(g.get("kind", "")), str(g.get("key", "")), str(g.get("access", "")))
            groups.setdefault(ident, []).append((c.key, g))
    return groups


def render_summary(run: RunData, results: dict[str, Any], baseline: RunDiff | None) -> str:
    s = results["summary"]
    out = [f"# Boot matrix {md(run.run_id)}", ""]
    out.append(f"**{s['cells']} cells**, {s['guests']} guests: {s['ok']} ok, {s['not_ok']} not ok"
               + (f", **{s['regressions']} regressed** against {md(baseline.a)}" if baseline else "")
               + (f", {len(_group_new_gaps(run))} new gaps" if s["new_gaps"] else ""))
    expected = s.get("expected_cells")
    if expected is not None and s["cells"] < expected:
        out.append(f"\n**Incomplete: {s['cells']} of {expected} cells finished.**")
    if run.skipped:
        out.append(f"\n_{len(run.skipped)} unreadable cell files skipped (run killed while writing?)_")
    out += ["", "| backend | " + " | ".join(OUTCOMES) + " |", "|---|" + "---:|" * len(OUTCOMES)]
    for backend, counts in sorted(s["by_backend"].items()):
        out.append(f"| {md(backend)} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |")
    out.append("| **all** | " + " | ".join(f"**{s['by_outcome'].get(o, 0)}**" for o in OUTCOMES) + " |")

    failing = [c for c in run.cells if not cell_ok(c.result)]
    out += ["", f"## Failing cells ({len(failing)})", ""]
    if failing:
        out += ["| cell | outcome | reason | last milestone |", "|---|---|---|---|"]
        for c in failing[:MAX_ROWS]:
            r = c.result
            last = r.milestones[-1].name if r.milestones else "-"
            out.append(f"| {md(c.key)} | {r.outcome} | {md(r.reason or (r.failure.message if r.failure else ''))} "
                       f"| {md(last)} |")
        if len(failing) > MAX_ROWS:
            out.append(f"\n… and {len(failing) - MAX_ROWS} more (see index.html)")
    else:
        out.append("None.")

    new = _group_new_gaps(run)
    out += ["", f"## New gaps ({len(new)})", ""]
    if new:
        out += ["| kind | key | access | count | cells | phases | fates | first cell |",
                "|---|---|---|---:|---:|---|---|---|"]
        for (kind, key, access), rows in new.items():
            out.append(f"| {md(kind)} | {md(key)} | {md(access)} | {sum(int(g.get('count', 1)) for _, g in rows)} "
                       f"| {len(rows)} | {md(', '.join(sorted({str(g.get('phase')) for _, g in rows})))} "
                       f"| {md(', '.join(sorted({str(g.get('fate', '')) for _, g in rows})))} | {md(rows[0][0])} |")
    else:
        out.append("None: every gap is in its guest's baseline.")

    if baseline is not None:
        out += ["", f"## Regressions against {md(baseline.a)} ({len(baseline.regressions)})", ""]
        out += [f"Timing method: {m}." for m in baseline.methods]
        out.append("")
        if baseline.regressions:
            out += ["| cell | why |", "|---|---|"]
            for change in baseline.regressions:
                out.append(f"| {md(change.cell_id)} | {md('; '.join(change.verdict.reasons()), 400)} |")
        else:
            out.append("None.")
        fixed = [(c.cell_id, g) for c in baseline.cells for g in c.gaps_fixed]
        if fixed:
            out += ["", "Gaps fixed since the baseline: "
                    + ", ".join(f"{md(g['kind'])} {md(g['key'])} ({md(cid)})" for cid, g in fixed)]
    out += ["", f"Full report: `{str(run.run_dir / 'index.html').replace('`', '')}`", ""]
    return "\n".join(out)


def write_summary(run: RunData, results: dict[str, Any], baseline: RunDiff | None, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_summary(run, results, baseline))
    tmp.replace(path)
    return path
