"""junit.xml for CI systems: a testsuite per backend, a testcase per cell.

`error` outcomes (infrastructure) become <error>, other unexpected outcomes <failure>, with the
reason, the failure, the near-miss and the last console lines as text. Console text is guest
controlled: characters XML 1.0 cannot carry are replaced, so the file always parses.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.gaps.culprit import GUEST, Culprit
from harness.model.files import atomic_file
from harness.model.guest import CommandResult
from harness.model.result import ERROR
from harness.model.tries import passed_on_retry, tries_of
from harness.model.verdict import cell_ok, known_issue_note
from harness.report.culprits import run_culprits
from harness.report.results import cell_new_gaps
from harness.report.run import CellView, RunData

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
LAST_LINES = 20


def xml_safe(text: str) -> str:
    return _XML_BAD.sub("\ufffd", text)


def _details(view: CellView) -> str:
    r = view.result
    out = [f"cell: {r.cell_id}", f"outcome: {r.outcome}", f"reason: {r.reason}"]
    if r.failure:
        out.append(f"failure: {r.failure.kind}: {r.failure.message}")
    nm = r.near_miss
    if nm:
        out.append(f"near miss: waiting for milestone {nm.waiting_for!r} (pattern {nm.pattern!r}), "
                   f"last milestone {nm.last_milestone!r}")
        if nm.closest_line:
            out.append(f"closest console line ({nm.closest_ratio:.0%} alike): {nm.closest_line}")
    for g in cell_new_gaps(r):
        out.append(f"new gap: {g.get('kind')} {g.get('key')} x{g.get('count', 1)} phase {g.get('phase')}")
    lines = (nm.last_lines if nm and nm.last_lines else None) or view.console_tail_lines(LAST_LINES)
    if lines:
        out.append("--- last console lines ---")
        out.extend(lines[-LAST_LINES:])
    return xml_safe("\n".join(out))


def _testcase(parent: ET.Element, view: CellView, culprit: Culprit | None) -> tuple[int, int]:
    r = view.result
    tc = ET.SubElement(parent, "testcase", classname=xml_safe(f"{r.backend}.{r.guest}"), name=xml_safe(view.key),
                       time=f"{r.duration_s:.3f}")
    failures = errors = 0
    _properties(tc, view, culprit)
    if not cell_ok(r):
        tag = "error" if r.outcome == ERROR else "failure"
        # type= is whose fault it is (guest | hypervisor | harness): what a CI's test view groups by
        el = ET.SubElement(tc, tag, message=xml_safe(f"{r.outcome}: {r.reason}"[:500]),
                           type=culprit.party if culprit else r.outcome)
        el.text = (f"culprit: {culprit.label()}: {culprit.why}\n" if culprit else "") + _details(view)
        failures, errors = (0, 1) if tag == "error" else (1, 0)
    elif passed_on_retry(r):
        # Surefire's rerun convention, which Jenkins and GitLab show as "flaky": the test passed,
        # and each failed try is kept beside it.
        for t in tries_of(r)[:-1]:
            flaky = ET.SubElement(tc, "flakyFailure", message=xml_safe(f"{t.outcome}: {t.reason}"[:500]),
                                  type=t.outcome)
            flaky.text = xml_safe(f"passed on retry; this try's console: {t.console_log}")
    console = view.console_path
    out = ET.SubElement(tc, "system-out")
    out.text = xml_safe(f"console: {console if console else '(none)'}\nparams: {r.params}\n")
    return failures, errors


def _command_cases(parent: ET.Element, view: CellView) -> tuple[int, int, float]:
    """One testcase per command run after the prompt: its output, exit status and checks."""
    r = view.result
    failures, total = 0, 0.0
    for data in r.commands:
        c = CommandResult.from_json(data)
        tc = ET.SubElement(parent, "testcase", classname=xml_safe(f"{r.backend}.{r.guest}.{view.key}"),
                           name=xml_safe(c.command), time=f"{c.duration_s:.3f}")
        if not c.ok:
            el = ET.SubElement(tc, "failure", message=xml_safe("; ".join(c.problems)[:500]), type=GUEST)
            el.text = xml_safe(f"exit status: {c.exit_status}\n" + "\n".join(c.problems))
            failures += 1
        out = ET.SubElement(tc, "system-out")
        out.text = xml_safe(f"$ {c.command}\n{c.output}\n[exit status {c.exit_status}]\n")
        total += c.duration_s
    return len(r.commands), failures, total


def _properties(tc: ET.Element, view: CellView, culprit: Culprit | None) -> None:
    r = view.result
    props: list[tuple[str, str]] = []
    if passed_on_retry(r):
        props.append(("flaky", f"passed on retry (try {len(tries_of(r))})"))
    note = known_issue_note(r)
    if note:
        props.append(("known_issue", note))
    if culprit:
        props.append(("culprit", culprit.label()))
    if props:
        el = ET.SubElement(tc, "properties")
        for name, value in props:
            ET.SubElement(el, "property", name=name, value=xml_safe(value))


def build_junit(run: RunData) -> ET.ElementTree:
    root = ET.Element("testsuites", name=xml_safe(f"harness {run.run_id}"))
    totals = [0, 0, 0, 0.0]
    by_backend: dict[str, list[CellView]] = {}
    culprits = run_culprits(run)
    for c in run.cells:
        by_backend.setdefault(c.result.backend, []).append(c)
    for backend, cells in sorted(by_backend.items()):
        suite = ET.SubElement(root, "testsuite", name=xml_safe(backend))
        f = e = n = 0
        t = 0.0
        for c in cells:
            df, de = _testcase(suite, c, culprits.get(c.key))
            nc, fc, _ = _command_cases(suite, c)   # command time is part of the cell's duration
            f, e, t, n = f + df + fc, e + de, t + c.result.duration_s, n + 1 + nc
        suite.attrib.update(tests=str(n), failures=str(f), errors=str(e), skipped="0", time=f"{t:.3f}")
        totals = [totals[0] + n, totals[1] + f, totals[2] + e, totals[3] + t]
    root.attrib.update(tests=str(totals[0]), failures=str(totals[1]), errors=str(totals[2]), time=f"{totals[3]:.3f}")
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(run: RunData, path: Path) -> Path:
    with atomic_file(path) as f:
        build_junit(run).write(f, encoding="utf-8", xml_declaration=True)
    return path
