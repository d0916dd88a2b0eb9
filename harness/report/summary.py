"""summary.md: the page a CI job shows (GitHub step summary, GitLab artifact, plain terminal).

Guest-controlled text (reasons, console lines, gap keys) is put in table cells or code spans
with Markdown's active characters neutralised, so a console cannot inject links or HTML.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.gaps.culprit import Culprit
from harness.model.files import write_atomic
from harness.model.result import OUTCOMES
from harness.model.verdict import cell_ok
from harness.report.diff import RunDiff
from harness.report.results import cell_new_gaps
from harness.report.run import RunData

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
    culprits = {c["key"]: c.get("culprit") for c in results.get("cells", [])}
    out += ["", f"## Failing cells ({len(failing)})", ""]
    if failing:
        out += ["| cell | outcome | culprit | reason | last milestone |", "|---|---|---|---|---|"]
        for c in failing[:MAX_ROWS]:
            r = c.result
            last = r.milestones[-1].name if r.milestones else "-"
            culprit = culprits.get(c.key)
            out.append(f"| {md(c.key)} | {r.outcome} | {md(Culprit.from_json(culprit).label() if culprit else '-')} "
                       f"| {md(r.reason or (r.failure.message if r.failure else ''))} | {md(last)} |")
        if len(failing) > MAX_ROWS:
            out.append(f"\n… and {len(failing) - MAX_ROWS} more (see index.html)")
    else:
        out.append("None.")

    out += triage_markdown(results.get("triage") or {})
    out += backend_diff_markdown(results.get("backend_diff") or [])
    from harness.report.crashes import crash_index, render_markdown
    crashes = crash_index([run])
    out += ["", f"## Crashes and warnings ({len(crashes)})", ""] + render_markdown(crashes, md)

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
                why = change.verdict.reasons() + ([change.call.describe()] if change.call else [])
                out.append(f"| {md(change.cell_id)} | {md('; '.join(why), 600)} |")
        else:
            out.append("None.")
        held = [c for c in baseline.cells if c.call and not c.call.confirmed]
        if held:
            out += ["", "New failures not called regressions:", ""]
            out += [f"- {md(c.cell_id)}: {md(c.call.describe(), 400)}" for c in held]
        fixed = [(c.cell_id, g) for c in baseline.cells for g in c.gaps_fixed]
        if fixed:
            out += ["", "Gaps fixed since the baseline: "
                    + ", ".join(f"{md(g['kind'])} {md(g['key'])} ({md(cid)})" for cid, g in fixed)]
    from harness.report.hosts import render_markdown as hosts_markdown
    out += hosts_markdown(run.results, md)
    out += ["", f"Full report: `{str(run.run_dir / 'index.html').replace('`', '')}`", ""]
    return "\n".join(out)


def triage_markdown(triage: dict[str, Any]) -> list[str]:
    """Known issues and flakes (culprits are a column of the failing cells)."""
    out: list[str] = []
    by_party = triage.get("by_party") or {}
    if any(by_party.values()):
        out += ["", "Culprits of the failing cells: " + ", ".join(f"{n} {p}" for p, n in by_party.items() if n)]
    issues = triage.get("known_issues") or []
    out += ["", f"## Known issues ({len(issues)})", ""]
    if issues:
        out += ["| status | cell | outcome | issue | until |", "|---|---|---|---|---|"]
        for k in issues:
            status = {"expired": "**EXPIRED**", "fixed": "fixed"}.get(k["status"], k["status"])
            out.append(f"| {status} | {md(k['cell'])} | {k['outcome']} | {md(k['title'])} <{md(k['url'])}> "
                       f"| {md(k['until'])} |")
    else:
        out.append("None.")
    for title, key in (("Flaky cells", "flakes"), ("Flaky across this run and the baseline", "flakes_across_runs")):
        flakes = triage.get(key)
        if flakes is None:
            continue
        out += ["", f"## {title} ({len(flakes)})", ""]
        if flakes:
            out += ["| cell | tries | failed | flake rate | passed on retry | outcomes |", "|---|---:|---:|---:|---:|---|"]
            for f in flakes:
                out.append(f"| {md(f['cell_id'])} | {f['tries']} | {f['failed']} | {f['rate']:.0%} "
                           f"| {f['passed_on_retry']} | {md(', '.join(f['outcomes']))} |")
        else:
            out.append("None.")
    return out


def backend_diff_markdown(pairs: list[dict[str, Any]]) -> list[str]:
    """Built-in against QEMU, per guest run on both: milestone times and the first divergence."""
    if not pairs:
        return []
    out = ["", f"## Built-in against QEMU ({len(pairs)} pairs)", ""]
    out += ["| guest | cells | milestone times (builtin / qemu, s) | first divergence |", "|---|---|---|---|"]
    for p in pairs[:MAX_ROWS]:
        times = "; ".join(f"{md(m['milestone'])} {_t(m['t_a'])} / {_t(m['t_b'])}" for m in p["milestones"])
        d = p["divergence"]
        if d is None:
            where = "none"
        else:
            where = (f"{md(d['milestone'])} reached only on {md(d['reached_by'])}" if d["milestone"]
                     else "outcome only") + f" ({d['outcome_a']} vs {d['outcome_b']})"
            gap = d.get("first_gap_only_a")
            if gap:
                where += f"; first gap only on {md(p['backend_a'])}: {md(gap['kind'])} {md(gap['key'])}"
            exits = ", ".join(f"{md(k)}={v}" for k, v in sorted(d["exits_a"].items(), key=lambda kv: -kv[1])[:4])
            if exits:
                where += f"; {md(p['backend_a'])} exits there: {exits}"
        out.append(f"| {md(p['guest'])} | {md(p['cell_a'])} vs {md(p['backend_b'])} | {times} | {where} |")
    return out


def _t(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_summary(run: RunData, results: dict[str, Any], baseline: RunDiff | None, path: Path) -> Path:
    write_atomic(path, render_summary(run, results, baseline).encode())
    return path
