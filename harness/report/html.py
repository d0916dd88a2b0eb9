"""index.html: one static, self-contained page per run (inline CSS/JS, works from file://).

The stylesheet and scripts are package data (harness/report/static/), inlined into each page.

Sections: the matrix heatmap (guests x backend/cpu profile/gap policy, coloured by outcome),
the run-wide gap ledger, repeated-run timing statistics, the baseline diff, then one section per
cell: boot timeline (inline SVG), exits per phase, gap table, flight recorder, near miss, console.

Console text, reasons, gap keys and anything else that came from a guest is escaped with
html.escape and stripped of control characters (shown as Unicode control pictures), so a guest
printing `<script>` gets text, never markup. The page's script only reads the DOM it was given.
"""
from __future__ import annotations

import functools
import html
import importlib.resources
import re
import urllib.parse
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from harness.console.clean import strip_escapes
from harness.gaps.baseline import GapDiff
from harness.gaps.culprit import Culprit
from harness.model.files import write_atomic
from harness.model.result import OUTCOMES, Phase, ended_as_expected
from harness.model.tries import passed_on_retry
from harness.model.verdict import cell_ok, known_issue_note
from harness.report.diff import RunDiff
from harness.report.hosts import host_of
from harness.report.run import CellView, RunData

# Console bytes embedded per cell (the tail): enough to see a boot, small enough that a page of a
# hundred cells stays loadable. The full log is linked.
CONSOLE_MAX_BYTES = 512 * 1024
CONSOLE_MAX_BYTES_OK = 128 * 1024
_CTRL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def esc(value: Any) -> str:
    return html.escape(_CTRL.sub(lambda m: chr(0x2400 + ord(m.group()) if m.group() != "\x7f" else 0x2421),
                                 str(value)), quote=True)


def _hex(v: Any) -> str:
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else ("" if v is None else str(v))


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if abs(seconds) < 10 else f"{seconds:.2f} s"


def _anchor(view: CellView) -> str:
    return "c-" + view.slug  # slugs are [A-Za-z0-9._-] only (cell_slug)


def _table(columns: Iterable[str | tuple[str, str]], rows: Iterable[str]) -> str:
    """The page's one kind of data table: `columns` are header labels (HTML) or (label, tooltip)
    pairs, `rows` whole <tr> elements."""
    head = "".join(f'<th title="{esc(c[1])}">{c[0]}</th>' if isinstance(c, tuple) else f"<th>{c}</th>"
                   for c in columns)
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _badge(outcome: str, text: str | None = None) -> str:
    o = outcome if outcome in OUTCOMES else "error"
    return f'<span class="badge o-{o}">{esc(text or outcome)}</span>'


# ---------------------------------------------------------------------------- page parts

def _header(run: RunData, results: dict[str, Any]) -> str:
    s = results["summary"]
    badges = " ".join(_badge(o, f"{o} {s['by_outcome'].get(o, 0)}") for o in OUTCOMES if s["by_outcome"].get(o))
    host = run.run.get("host") or {}
    meta = [("run", run.run_id), ("cells", s["cells"]), ("guests", s["guests"]),
            ("generated", results["generated_at"])]
    for k in ("matrix", "tier", "shard", "started_at"):
        if run.run.get(k) is not None:
            meta.append((k, run.run[k]))
    if isinstance(host, dict):
        meta += [(f"host {k}", v) for k, v in list(host.items())[:4]]
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in meta)
    skipped = (f'<p class="warn">{len(run.skipped)} unreadable cell files skipped (the run was probably killed '
               f'while writing): {esc(", ".join(run.skipped))}</p>' if run.skipped else "")
    expected = s.get("expected_cells")
    if expected is not None and s["cells"] < expected:
        skipped += (f'<p class="warn">Incomplete: {s["cells"]} of {expected} cells finished '
                    f'({"the run ended early" if s.get("finished") else "the run is still going or was killed"}).</p>')
    return (f'<header><h1>Boot matrix <span class="runid">{esc(run.run_id)}</span></h1>'
            f'<div class="badges">{badges}</div><dl class="meta">{dl}</dl>{skipped}</header>')


def _column(view: CellView) -> tuple[str, str, str]:
    """backend (+host when not native, spelled as in the cell id: builtin+lab), cpu profile, gap policy."""
    p = view.result.params if isinstance(view.result.params, dict) else {}
    host = host_of(view.result)
    backend = view.result.backend + ("" if host == "native" else f"+{host}")
    return (backend, str(p.get("cpu_profile", "-")), str(p.get("gap_policy", "-")))


def _arch(view: CellView) -> str:
    p = view.result.params if isinstance(view.result.params, dict) else {}
    return str(p.get("arch") or "x86_64")


def _chip_label(view: CellView, group: list[CellView]) -> str:
    """The outcome, plus whatever tells this cell apart from the others in the same matrix square."""
    if len(group) < 2:
        return view.result.outcome
    p = view.result.params if isinstance(view.result.params, dict) else {}
    parts = []
    for key, unit in (("vcpus", "c"), ("memory_mib", "M")):
        values = {str((c.result.params or {}).get(key)) for c in group}
        if len(values) > 1:
            parts.append(f"{p.get(key)}{unit}")
    if any(c.result.repeat_index for c in group):
        parts.append(f"r{view.result.repeat_index}")
    return view.result.outcome + (" " + "/".join(parts) if parts else "")


def _heatmap(run: RunData) -> str:
    """Rows: guests grouped by architecture (one heading row per arch); columns: backend+host,
    cpu profile, gap policy. An aarch64 guest's builtin+lab and qemu-tcg cells share its row."""
    cols = sorted({_column(c) for c in run.cells})
    arch_of = {c.result.guest: _arch(c) for c in run.cells}
    guests = sorted(arch_of, key=lambda g: (arch_of[g], g))
    grid: dict[tuple[str, tuple[str, str, str]], list[CellView]] = defaultdict(list)
    for c in run.cells:
        grid[(c.result.guest, _column(c))].append(c)
    head1 = "".join(f"<th>{esc(b)}</th>" for b, _, _ in cols)
    head2 = "".join(f'<th class="sub">{esc(cp)}<br>{esc(gp)}</th>' for _, cp, gp in cols)
    rows = []
    for i, g in enumerate(guests):
        if i == 0 or arch_of[guests[i - 1]] != arch_of[g]:
            rows.append(f'<tr class="arch"><th colspan="{len(cols) + 1}" data-arch="{esc(arch_of[g])}">'
                        f'{esc(arch_of[g])}</th></tr>')
        tds = []
        for col in cols:
            here = grid.get((g, col), [])
            chips = "".join(
                f'<a class="chip o-{esc(c.result.outcome)}{"" if cell_ok(c.result) else " bad"}" '
                f'href="#{_anchor(c)}" title="{esc(c.key)}: {esc(c.result.reason or c.result.outcome)}">'
                f'{esc(_chip_label(c, here))}</a>' for c in here)
            tds.append(f'<td>{chips or "<span class=none>·</span>"}</td>')
        rows.append(f'<tr data-arch="{esc(arch_of[g])}"><th class="guest">{esc(g)}</th>{"".join(tds)}</tr>')
    legend = " ".join(_badge(o) for o in OUTCOMES)
    return (f'<section id="matrix"><h2>Matrix</h2><p class="legend">{legend} '
            f'<span class="hint">rows: guests by architecture; columns: backend (+host), cpu profile, gap policy; '
            f'click a cell</span></p>'
            f'<div class="scroll"><table class="heat"><thead><tr><th rowspan=2>guest</th>{head1}</tr>'
            f'<tr>{head2}</tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>')


def _cell_links(cells: list[str], keys_to_anchor: dict[str, str], label: str = "") -> str:
    """A folded list of links to cells (`label` is already escaped HTML)."""
    links = " ".join(f'<a href="#{keys_to_anchor[c]}">{esc(c)}</a>' if c in keys_to_anchor else esc(c) for c in cells)
    return (f'<details><summary>{len(cells)} cell{"s" if len(cells) != 1 else ""}{label}</summary>'
            f'<div class="small">{links}</div></details>')


def _run_gaps(results: dict[str, Any], keys_to_anchor: dict[str, str]) -> str:
    gaps = results["gaps"]
    if not gaps:
        return '<section id="gaps"><h2>Gap ledger</h2><p>No gaps recorded.</p></section>'
    rows = []
    for g in gaps:
        cells = _cell_links(g["cells"], keys_to_anchor, f': {esc(", ".join(g["guests"]))}')
        rows.append(f'<tr><td>{esc(g["kind"])}</td><td class="mono">{esc(g["key"])}</td><td>{esc(g["access"])}</td>'
                    f'<td class="num">{g["count"]}</td><td class="mono">{esc(_hex(g["first_rip"]))}</td>'
                    f'<td>{esc(", ".join(g["phases"]))}</td><td>{esc(", ".join(g["policies"]))}</td>'
                    f'<td>{esc(", ".join(g["fates"]))}</td><td>{_ledger_status(g)}</td><td class="cells">{cells}</td>'
                    f'<td class="mono small">{esc(g["id"])}</td></tr>')
    return ('<section id="gaps"><h2>Gap ledger</h2><p class="hint">Every gap of the run, merged over cells '
            '(phase = last milestone reached before the gap was first seen).</p><div class="scroll">'
            + _table(("kind", "key", "access", "count", "first RIP", "phases", "policies", "fates", "baseline",
                      "cells", "id"), rows) + '</div></section>')


def _crash_index(results: dict[str, Any], keys_to_anchor: dict[str, str]) -> str:
    entries = results.get("crashes") or []
    if not entries:
        return '<section id="crashes"><h2>Crashes and warnings</h2><p>No crash or warning reports.</p></section>'
    rows = []
    for e in entries:
        rows.append(f'<tr><td>{esc(e["severity"])}</td><td class="mono">{esc(e["title"])}</td>'
                    f'<td class="num">{len(e["cells"])}</td><td class="small">{esc(e["first_seen"]["at"])}</td>'
                    f'<td class="small">{esc(e["last_seen"]["at"])}</td>'
                    f'<td class="cells">{_cell_links(e["cells"], keys_to_anchor)}</td></tr>')
    return ('<section id="crashes"><h2>Crashes and warnings</h2><p class="hint">One row per title, deduplicated '
            'over cells (titles are stable across runs: `harness crashes RUN-DIR...` merges nights).</p>'
            '<div class="scroll"><table class="data"><thead><tr><th>severity</th><th>title</th><th>cells</th>'
            '<th>first seen</th><th>last seen</th><th>where</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div></section>')


def _reports(view: CellView) -> str:
    r = view.result
    out = ""
    if r.crash is not None:
        out += (f'<details open><summary>Crash: <b>{esc(r.crash.title)}</b></summary>'
                f'<pre class="console small">{esc(r.crash.block)}</pre></details>')
    for w in r.warnings:
        new = " <span class=tag>new</span>" if w.title in r.warning_diff.new else ""
        out += (f'<details><summary>Warning: {esc(w.title)}{new}</summary>'
                f'<pre class="console small">{esc(w.block)}</pre></details>')
    return out


def _ledger_status(g: dict[str, Any]) -> str:
    n = len(g.get("new_in", []))
    if not n:
        return _status_badge("known")
    return f'<span class="tag new" title="not in the baseline of {n} cell(s)">new ×{n}</span>'


def _timing(results: dict[str, Any]) -> str:
    groups = {cid: t for cid, t in results["timing"].items() if t["repeats"] > 1}
    if not groups:
        return ""
    parts = []
    for cid, t in groups.items():
        rows = "".join(
            f'<tr><td>{esc(m["name"])}</td><td class="num">{m["reached"]}/{m["runs"]}</td>'
            + "".join(f'<td class="num">{_ms(m["at"][k]) if m["at"] else "-"}</td>'
                      for k in ("median", "min", "max", "mad"))
            + f'<td class="num">{_ms(m["phase"]["median"]) if m["phase"] else "-"}</td>'
            f'<td class="num">{_ms(m["phase"]["mad"]) if m["phase"] else "-"}</td></tr>'
            for m in t["milestones"])
        parts.append(f'<h3>{esc(cid)} <span class="hint">({t["repeats"]} repeats)</span></h3>'
                     + _table(("milestone", "reached", "median", "min", "max", "MAD", "phase median", "phase MAD"),
                              [rows]))
    return ('<section id="timing"><h2>Repeated runs</h2><p class="hint">Milestone times since VM start over '
            f'the repeats of each cell: median, min, max, median absolute deviation.</p>{"".join(parts)}</section>')


def _baseline(diff: RunDiff | None, keys_to_anchor: dict[str, str]) -> str:
    if diff is None:
        return ""
    methods = "".join(f"<li>{esc(m)}</li>" for m in diff.methods)
    rows = []
    for c in diff.cells:
        if not c.changed and not c.regression:
            continue
        link = (f'<a href="#{keys_to_anchor[c.cell_id]}">{esc(c.cell_id)}</a>' if c.cell_id in keys_to_anchor
                else esc(c.cell_id))
        gaps = ", ".join([f"+{g['kind']} {g['key']}" for g in c.gaps_new] + [f"-{g['kind']} {g['key']}"
                                                                              for g in c.gaps_fixed])
        why = "; ".join(c.verdict.reasons() + [f"milestone {m} gained" for m in c.milestones_gained]
                        + [f"phase {m} faster" for m in c.faster] + ([c.call.describe()] if c.call else []))
        verdict = _badge("fail", "regression") if c.regression else _badge("pass", "changed")
        rows.append(f"<tr><td>{verdict}</td><td>{link}</td><td class=num>{c.verdict.n_new}/{c.verdict.n_base}</td>"
                    f"<td>{esc(c.outcome_a)} → {esc(c.outcome_b)}</td>"
                    f"<td>{esc(why)}</td><td class=mono>{esc(gaps)}</td></tr>")
    table = (_table(("", "cell", ("N", "repeats: this run / baseline"), "outcome", "timing / milestones",
                     "gaps (+new / -fixed)"), rows) if rows else "<p>No cell changed.</p>")
    only = "".join(f"<li>only in baseline: {esc(c)}</li>" for c in diff.only_in_a) + \
        "".join(f"<li>only in this run: {esc(c)}</li>" for c in diff.only_in_b)
    return (f'<section id="baseline"><h2>Against baseline {esc(diff.a)}: {len(diff.regressions)} regressed</h2>'
            f'<p class="hint">Timing method:</p><ul class="hint">{methods}</ul>{table}'
            f'{"<ul>" + only + "</ul>" if only else ""}</section>')


def _link(key: str, anchors: dict[str, str]) -> str:
    return f'<a href="#{anchors[key]}">{esc(key)}</a>' if key in anchors else esc(key)


def _triage(results: dict[str, Any], anchors: dict[str, str]) -> str:
    """Culprits of the failing cells, known issues, flakes: results.json's triage section."""
    t = results.get("triage") or {}
    bad = [c for c in t.get("culprits", []) if not c["ok"]]
    rows = [f'<tr><td>{_badge(c["outcome"])}</td><td>{_link(c["cell"], anchors)}</td>'
            f'<td><b>{esc(c["party"])}</b>{" (suspected)" if c["evidence"] == "suspected" else ""}</td>'
            f'<td class=mono>{esc(c["gap"]["kind"] + " " + str(c["gap"]["key"])) if c.get("gap") else ""}</td>'
            f'<td>{esc(c["why"])}</td></tr>' for c in bad]
    parts = ['<h3>Culprits</h3>' + (_table(("", "cell", "culprit", "gap", "why"), rows) if rows
                                    else "<p>No failing cell.</p>")]
    issues = t.get("known_issues", [])
    rows = [f'<tr><td>{_badge("fail" if k["status"] == "expired" else "pass", k["status"])}</td>'
            f'<td>{_link(k["cell"], anchors)}</td><td>{esc(k["outcome"])}</td>'
            f'<td><a href="{esc(k["url"])}" rel="noreferrer">{esc(k["title"])}</a></td><td>{esc(k["until"])}</td></tr>'
            for k in issues]
    parts.append('<h3>Known issues</h3>' + (_table(("status", "cell", "outcome", "issue", "until"), rows)
                                            if rows else "<p>None.</p>"))
    for title, key in (("Flaky cells", "flakes"), ("Flaky across this run and the baseline", "flakes_across_runs")):
        flakes = t.get(key)
        if flakes is None:
            continue
        rows = [f'<tr><td>{_link(f["cell_id"], anchors)}</td><td class=num>{f["tries"]}</td>'
                f'<td class=num>{f["failed"]}</td><td class=num>{f["rate"]:.0%}</td>'
                f'<td class=num>{f["passed_on_retry"]}</td><td>{esc(", ".join(f["outcomes"]))}</td></tr>'
                for f in flakes]
        parts.append(f'<h3>{title}</h3>' + (_table(("cell", "tries", "failed", "flake rate", "passed on retry",
                                                    "outcomes"), rows) if rows else "<p>None.</p>"))
    return f'<section id="triage"><h2>Triage</h2>{"".join(parts)}</section>'


def _backend_diff(results: dict[str, Any], anchors: dict[str, str]) -> str:
    pairs = results.get("backend_diff") or []
    if not pairs:
        return ""
    parts = []
    for p in pairs:
        rows = "".join(f'<tr><td>{esc(m["milestone"])}</td><td class=num>{_ms(m["t_a"])}</td>'
                       f'<td class=num>{_ms(m["t_b"])}</td><td class=num>{esc(m["ratio"] if m["ratio"] is not None else "")}'
                       f'</td></tr>' for m in p["milestones"])
        d = p["divergence"]
        if d is None:
            verdict = "<p>No divergence: same milestones, same outcome.</p>"
        else:
            where = (f'milestone <b>{esc(d["milestone"])}</b> reached only on {esc(d["reached_by"])}' if d["milestone"]
                     else "every milestone alike")
            gaps = "".join(f'<li>first gap only on {esc(side)}: <span class=mono>{esc(g["kind"])} {esc(g["key"])}'
                           f'</span> (phase {esc(g.get("phase"))})</li>'
                           for side, g in ((p["backend_a"], d["first_gap_only_a"]), (p["backend_b"], d["first_gap_only_b"]))
                           if g)
            exits = "".join(f'<li>exits in that phase on {esc(side)}: <span class=mono>'
                            f'{esc(", ".join(f"{k}={v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])) or "none recorded")}'
                            f'</span></li>' for side, c in ((p["backend_a"], d["exits_a"]), (p["backend_b"], d["exits_b"])))
            verdict = (f'<p>First divergence: {where}; outcome {esc(d["outcome_a"])} vs {esc(d["outcome_b"])}</p>'
                       f'<ul>{exits}{gaps}</ul>')
        parts.append(f'<h3>{esc(p["guest"])}: {_link(p["cell_a"], anchors)} vs {_link(p["cell_b"], anchors)}</h3>'
                     + _table(("milestone", esc(p["backend_a"]), esc(p["backend_b"]), "ratio"), [rows]) + verdict)
    return (f'<section id="backend-diff"><h2>Built-in against QEMU</h2><p class="hint">The same guest on both '
            f'backends in this run: milestone times since VM start and the first divergence.</p>{"".join(parts)}</section>')


# ---------------------------------------------------------------------------- per cell

PHASE_COLOURS = ["#4e79a7", "#59a14f", "#9c755f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#bab0ac"]


def _cell_phases(view: CellView) -> list[Phase]:
    """The cell's phases, as the runner computed them when the cell ended (harness.gaps.phases)."""
    return list(view.result.phases)


def _vm_start(view: CellView) -> float | None:
    return next((e.t for e in view.events() if e.type == "vm-start"), None)


def _gap_marks(view: CellView, start: float | None, x_of: Any, y: float) -> str:
    """A tick per gap at its first sighting (needs the VM start from events.jsonl)."""
    if start is None:
        return ""
    marks = []
    for g in view.result.gaps:
        t = g.get("first_t")
        if not isinstance(t, (int, float)):
            continue
        x = x_of(max(0.0, t - start))
        stopped = g.get("fate") == "stopped"
        marks.append(f'<path d="M{x:.1f} {y} l-4 7 h8 z" class="gapmark{" stop" if stopped else ""}">'
                     f'<title>{esc(g.get("kind"))} {esc(g.get("key"))} first at {_ms(t - start)} '
                     f'(x{esc(g.get("count", 1))})</title></path>')
    return "".join(marks)


def _timeline(view: CellView) -> str:
    r = view.result
    if not r.milestones:
        return '<p class="hint">No milestone reached.</p>'
    end = max([m.t for m in r.milestones] + [r.duration_s or 0.0]) or 1.0
    width, label_w, row_h = 760, 150, 22
    bar_w = width - label_w - 70
    rows, prev = [], 0.0
    for i, m in enumerate(sorted(r.milestones, key=lambda m: m.t)):
        x = label_w + bar_w * prev / end
        w = max(2.0, bar_w * (m.t - prev) / end)
        y = 8 + i * row_h
        rows.append(f'<a href="#{_anchor(view)}-ms-{i}"><text x="{label_w - 8}" y="{y + 14}" text-anchor="end">'
                    f'{esc(m.name)}</text><rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 6}" rx="3" '
                    f'fill="{PHASE_COLOURS[i % len(PHASE_COLOURS)]}"><title>{esc(m.name)}: phase '
                    f'{_ms(m.t - prev)}, at {_ms(m.t)}</title></rect>'
                    f'<text class="dur" x="{x + w + 4:.1f}" y="{y + 14}">{_ms(m.since_previous)}</text></a>')
        prev = m.t
    n = len(r.milestones)
    if not cell_ok(r) and r.duration_s > prev:
        y = 8 + n * row_h
        x, w = label_w + bar_w * prev / end, max(2.0, bar_w * (r.duration_s - prev) / end)
        # what the cell was waiting for when it ended, or how it ended
        waiting = (f"{r.near_miss.waiting_for}?" if r.near_miss else r.failure.kind if r.failure else r.outcome)
        rows.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" class="waiting">{esc(waiting)}</text>'
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 6}" rx="3" fill="url(#hatch)">'
                    f'<title>{esc(r.outcome)} after {_ms(r.duration_s - prev)}</title></rect>')
        n += 1
    height = 8 + n * row_h + 34          # rows, a band for gap marks, the time axis
    marks = _gap_marks(view, _vm_start(view), lambda t: label_w + bar_w * min(t, end) / end, 8 + n * row_h + 1)
    if marks:
        marks += f'<text x="{label_w - 8}" y="{8 + n * row_h + 9}" text-anchor="end" class="tick">gaps</text>'
    ticks = []
    for k in range(6):
        t = end * k / 5
        x = label_w + bar_w * k / 5
        ticks.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="4" y2="{height - 18}" class="grid"/>'
                     f'<text x="{x:.1f}" y="{height - 4}" text-anchor="middle" class="tick">{_ms(t)}</text>')
    return (f'<svg class="timeline" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="boot timeline"><defs><pattern id="hatch" width="6" height="6" '
            f'patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="6" fill="#d64545" '
            f'opacity=".55"/></pattern></defs>{"".join(ticks)}{"".join(rows)}{marks}</svg>')


def _exit_table(phases: list[Phase]) -> str:
    if not phases or not any(p.exit_counts for p in phases):
        return ""
    totals: dict[str, int] = defaultdict(int)
    for p in phases:
        for k, v in p.exit_counts.items():
            totals[k] += v
    reasons = sorted(totals, key=lambda k: -totals[k])[:8]
    biggest = max(sum(p.exit_counts.values()) for p in phases) or 1
    rows = []
    for p in phases:
        total = sum(p.exit_counts.values())
        other = total - sum(p.exit_counts.get(k, 0) for k in reasons)
        cells = "".join(f'<td class="num">{p.exit_counts.get(k, 0)}</td>' for k in reasons)
        rows.append(f'<tr><td>{esc(p.name)}</td><td class="num">{_ms(p.end - p.start)}</td>{cells}'
                    f'<td class="num">{other}</td><td class="num">{total}</td>'
                    f'<td class="num">{_ms(p.user_time_s)}</td><td class="barcell"><span class="bar" '
                    f'style="width:{100 * total / biggest:.0f}%"></span></td></tr>')
    return ('<h4>VM exits per phase <span class="hint">(from 100 ms snapshots: up to 100 ms of exits after a '
            'milestone count in the phase it ends)</span></h4>'
            + _table(["phase", "duration", *(esc(k) for k in reasons), "other", "total", "VMM time", ""], rows))


def _gap_table(view: CellView) -> str:
    r = view.result
    diff = GapDiff.from_dict(r.gap_diff)
    status: dict[tuple[str, str, str], str] = {}
    for name, items in (("known", diff.known), ("new", diff.new)):
        for g in items:
            status[(g.get("kind", ""), g.get("key", ""), g.get("access", ""))] = name
    rows = []
    for g in r.gaps:
        st = status.get((g.get("kind", ""), g.get("key", ""), g.get("access", "")), "")
        rows.append(f'<tr class="st-{esc(st)}"><td>{esc(g.get("kind"))}</td><td class="mono">{esc(g.get("key"))}</td>'
                    f'<td>{esc(g.get("access", ""))}</td><td class="num">{esc(g.get("count", 1))}</td>'
                    f'<td class="mono">{esc(_hex(g.get("first_rip")))}</td><td>{esc(g.get("phase") or "")}</td>'
                    f'<td>{esc(g.get("policy", ""))}</td><td>{esc(g.get("fate", ""))}</td>'
                    f'<td>{_status_badge(st)}</td></tr>')
    for e in diff.fixed:
        rows.append(f'<tr class="st-fixed"><td>{esc(e.get("kind"))}</td><td class="mono">{esc(e.get("key"))}</td>'
                    f'<td>{esc(e.get("access", ""))}</td><td class="num">0</td><td></td><td></td><td></td><td></td>'
                    f'<td>{_status_badge("fixed")}</td></tr>')
    if not rows:
        return "<h4>Gaps</h4><p class=hint>None.</p>"
    return "<h4>Gaps</h4>" + _table(("kind", "key", "access", "count", "first RIP", "phase", "policy", "fate",
                                     "baseline"), rows)


def _status_badge(st: str) -> str:
    return {"new": '<span class="tag new">new</span>', "known": '<span class="tag known">known</span>',
            "fixed": '<span class="tag fixed">fixed</span>'}.get(st, "")


def _flight(view: CellView) -> str:
    fr = view.result.flight_recorder
    if not fr:
        return ""
    keys: list[str] = []
    for rec in fr:
        for k in (rec if isinstance(rec, dict) else {}):
            if k not in keys and len(keys) < 10:
                keys.append(k)
    rows = "".join("<tr>" + "".join(f'<td class="mono">{esc(_hex(rec.get(k)) if isinstance(rec, dict) else "")}</td>'
                                    for k in keys) + "</tr>" for rec in fr[-64:])
    return (f'<details class="flight" open><summary>Flight recorder (last {min(len(fr), 64)} of {len(fr)} '
            f'VM exits)</summary>{_table([esc(k) for k in keys], [rows])}</details>')


def _near_miss(view: CellView) -> str:
    nm = view.result.near_miss
    if nm is None:
        return ""
    closest = (f"<p>Closest console line ({nm.closest_ratio:.0%} alike): <code>{esc(nm.closest_line)}</code></p>"
               if nm.closest_line else "")
    last = esc("\n".join(nm.last_lines))
    return (f'<div class="nearmiss"><h4>Near miss</h4><p>Waiting for <b>{esc(nm.waiting_for)}</b> '
            f'(pattern <code>{esc(nm.pattern)}</code>), last milestone <b>{esc(nm.last_milestone or "none")}</b>.'
            f'</p>{closest}<pre class="console small">{last}</pre></div>')


def _console_text(data: bytes) -> str:
    data = strip_escapes(data).replace(b"\r\n", b"\n").replace(b"\r", b"")
    return esc(data.decode("utf-8", errors="replace"))


def _console(view: CellView) -> str:
    path = view.console_path
    if path is None:
        return '<p class="hint">No console log.</p>'
    size = path.stat().st_size
    bad = not cell_ok(view.result)
    limit = CONSOLE_MAX_BYTES if bad else CONSOLE_MAX_BYTES_OK
    start = max(0, size - limit)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(limit)
    marks = sorted(((m.console_offset, i, m.name) for i, m in enumerate(view.result.milestones)), key=lambda x: x[0])
    parts, pos = [], 0
    note = (f'<p class="hint">Console is {size} bytes; showing the last {limit}.</p>' if start else "")
    for off, i, name in marks:
        rel = off - start
        if rel < 0 or rel > len(data):
            continue
        if rel > pos:
            parts.append(_console_text(data[pos:rel]))
            pos = rel
        parts.append(f'<span class="ms" id="{_anchor(view)}-ms-{i}">◆ {esc(name)}</span>')
    parts.append(_console_text(data[pos:]))
    rel_path = path.relative_to(view.run_dir.resolve()).as_posix()
    link = "/".join(urllib.parse.quote(part) for part in rel_path.split("/"))
    return (f'<details class="consolebox"{" open" if bad else ""}><summary>Console ({size} bytes)</summary>'
            f'<p class="hint">Raw log: <a class="mono" href="{esc(link)}">{esc(rel_path)}</a></p>{note}'
            f'<pre class="console">{"".join(parts)}</pre></details>')


def _commands(view: CellView) -> str:
    """Commands run after the prompt: status, checks, output."""
    items = []
    for c in view.result.commands:
        ok = c.get("ok", not c.get("problems"))
        problems = f' — {esc("; ".join(c.get("problems", [])))}' if not ok else ""
        items.append(f'<details{" open" if not ok else ""}><summary>{_badge("pass" if ok else "fail", "ok" if ok else "failed")} '
                     f'<span class=mono>$ {esc(c.get("command"))}</span> (exit {esc(c.get("exit_status"))}, '
                     f'{_ms(c.get("duration_s"))}){problems}</summary>'
                     f'<pre class="console small">{esc(c.get("output", ""))}</pre></details>')
    return f'<h4>After the prompt</h4>{"".join(items)}' if items else ""


def _cell(view: CellView, culprit: Culprit | None) -> str:
    r = view.result
    params = " ".join(f'<span class="param">{esc(k)}={esc(v)}</span>' for k, v in
                      (r.params.items() if isinstance(r.params, dict) else []))
    failure = (f'<p class="failure"><b>{esc(r.failure.kind)}</b>: {esc(r.failure.message)}</p>'
               if r.failure else "")
    reason = f'<p class="reason">{esc(r.reason)}</p>' if r.reason else ""
    if culprit:
        reason += f'<p class="reason"><b>culprit: {esc(culprit.label())}</b> — {esc(culprit.why)}</p>'
    if known_issue_note(r):
        reason += f'<p class="reason"><b>{esc(known_issue_note(r))}</b></p>'
    if passed_on_retry(r):
        reason += f'<p class="reason"><b>flaky</b>: passed on try {len(r.tries)}</p>'
    cmd = (f'<details><summary>Command</summary><pre class="console small">{esc(" ".join(r.command))}</pre></details>'
           if r.command else "")
    milestones = ", ".join(m.name for m in r.milestones)
    return (f'<section class="cell" id="{_anchor(view)}" data-outcome="{esc(r.outcome)}" data-id="{esc(view.key)}">'
            f'<h3>{_badge(r.outcome)} {esc(view.key)}'
            f'{" <span class=tag>expected</span>" if cell_ok(r) and r.outcome != "pass" else ""}</h3>'
            f'<p class="params">{params} <span class="param">duration={_ms(r.duration_s)}</span> '
            f'<span class="param">attempts={r.attempts}</span></p>{reason}{failure}'
            f'<h4>Boot timeline <span class="hint">({len(r.milestones)}/{len(r.expected_milestones) or len(r.milestones)}'
            f' milestones{": " + esc(milestones) if milestones else ""})</span></h4>{_timeline(view)}'
            f'{_reports(view)}{_exit_table(_cell_phases(view))}{_gap_table(view)}{_near_miss(view)}{_flight(view)}'
            f'{_commands(view)}{_console(view)}{cmd}{_reproduce(view)}<p class="top"><a href="#matrix">↑ matrix</a></p>'
            '</section>')


def _reproduce(view: CellView) -> str:
    """For a cell that did not pass: the commands that take it to another machine and run it again."""
    r = view.result
    if r.outcome == "pass" or not r.repro:
        return ""
    from harness.model.repro import bundle_command
    cell_dir = str(view.work_rel)
    return (f'<div class="repro"><h4>Reproduce</h4><p class="hint">From the run directory:</p>'
            f'<pre class="console small">{esc(bundle_command(cell_dir))}\n'
            f'harness repro {esc(Path(cell_dir).name)}.tar.gz        # on any machine, offline\n'
            f'harness repro {esc(cell_dir)}        # here, from the cell directory alone</pre></div>')


# ---------------------------------------------------------------------------- page

@functools.lru_cache(maxsize=None)
def _static(name: str) -> str:
    """A file of harness/report/static (package data): the page's stylesheet and scripts."""
    return (importlib.resources.files("harness.report") / "static" / name).read_text(encoding="utf-8")


def _filters(run: RunData) -> str:
    present = sorted({c.result.outcome for c in run.cells}, key=lambda o: OUTCOMES.index(o) if o in OUTCOMES else 99)
    boxes = "".join(f'<label><input type="checkbox" data-outcome="{esc(o)}" checked> {_badge(o)}</label>'
                    for o in present)
    return (f'<div class="filters"><b>Cells</b> <span class="hint"><span id="shown">{len(run.cells)}</span> shown'
            f'</span>{boxes}<input type="search" id="q" placeholder="filter by cell id…"></div>')


def render_html(run: RunData, results: dict[str, Any], baseline: RunDiff | None) -> str:
    anchors = {c.key: _anchor(c) for c in run.cells}
    culprits = {c["key"]: Culprit.from_json(c["culprit"]) for c in results.get("cells", []) if c.get("culprit")}
    cells = "".join(_cell(c, culprits.get(c.key)) for c in run.cells) or "<p>No finished cells.</p>"
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>Boot matrix {esc(run.run_id)}</title><style>\n{_static('report.css')}</style>"
            f"<script>\n{_static('errors.js')}</script></head>"
            f"<body>{_header(run, results)}<main><div id=errors hidden></div>{_heatmap(run)}"
            f"{_triage(results, anchors)}{_backend_diff(results, anchors)}{_baseline(baseline, anchors)}{_crash_index(results, anchors)}{_run_gaps(results, anchors)}{_timing(results)}"
            f'<section id="cells-head">{_filters(run)}</section>{cells}</main>'
            f"<script>\n{_static('report.js')}</script></body></html>\n")


def write_html(run: RunData, results: dict[str, Any], baseline: RunDiff | None, path: Path) -> Path:
    write_atomic(path, render_html(run, results, baseline).encode("utf-8"))
    return path
