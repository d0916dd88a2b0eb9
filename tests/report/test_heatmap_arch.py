"""The heatmap puts an aarch64 guest's built-in (in the aarch64 lab) and QEMU cells side by side in
one row, under an aarch64 heading, with the host in the column (builtin+lab apart from builtin).
Read back with a real HTML parser (html.parser), from the file and from headless Chromium's DOM."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fakerun import make_cell, make_run
from harness.report import write_reports

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class HeatTable(HTMLParser):
    """The matrix table as (column headers, rows): each row is (kind, label, [cell texts and hrefs])."""

    def __init__(self) -> None:
        super().__init__()
        self.in_heat = self.in_head = False
        self.columns: list[str] = []
        self.rows: list[tuple[str, str, list[list[str]]]] = []
        self._cell: list[str] | None = None
        self._text: list[str] = []
        self._row_kind = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "heat" in (a.get("class") or "").split():
            self.in_heat = True
        if not self.in_heat:
            return
        if tag == "thead":
            self.in_head = True
        elif tag == "tr" and not self.in_head:
            self._row_kind = "arch" if a.get("class") == "arch" else "guest"
            self.rows.append((self._row_kind, "", []))
        elif tag in ("td", "th"):
            self._cell, self._text = [], []
        elif tag == "a" and self._cell is not None:
            self._cell.append(a.get("href", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if not self.in_heat:
            return
        if tag == "table":
            self.in_heat = False
        elif tag == "thead":
            self.in_head = False
        elif tag in ("td", "th") and self._cell is not None:
            text = "".join(self._text).strip()
            if self.in_head:
                if tag == "th" and "guest" != text and text:
                    self.columns.append(text)
            else:
                kind, label, cells = self.rows[-1]
                if tag == "th":
                    self.rows[-1] = (kind, text, cells)
                else:
                    cells.append([text, *self._cell])
            self._cell = None


def parse_heat(page: str) -> HeatTable:
    table = HeatTable()
    table.feed(page)
    return table


@pytest.fixture
def arm_run(tmp_path):
    run = make_run(tmp_path / "run", "aarch64")
    make_cell(run, guest="fixture-arm64", backend="builtin", host="lab", arch="aarch64")
    make_cell(run, guest="fixture-arm64", backend="qemu-tcg", arch="aarch64")
    make_cell(run, guest="linux-arm64", backend="builtin", host="lab", arch="aarch64", outcome="fail", reached=2)
    make_cell(run, guest="fixture-pvh", backend="builtin")
    make_cell(run, guest="fixture-pvh", backend="qemu-tcg")
    return tmp_path, run, write_reports(run, None)["html"]


def _check(table: HeatTable) -> None:
    top = [c for c in table.columns if "\n" not in c and c in ("builtin", "builtin+lab", "qemu-tcg")]
    assert top == ["builtin", "builtin+lab", "qemu-tcg"], table.columns
    headings = [label for kind, label, _ in table.rows if kind == "arch"]
    assert headings == ["aarch64", "x86_64"]
    rows = {label: cells for kind, label, cells in table.rows if kind == "guest"}
    order = [label for kind, label, _ in table.rows]
    assert order.index("aarch64") < order.index("fixture-arm64") < order.index("x86_64") < order.index("fixture-pvh")
    col = {name: i for i, name in enumerate(top)}
    arm = rows["fixture-arm64"]
    assert arm[col["builtin+lab"]][0] == "pass" and arm[col["builtin+lab"]][1].startswith("#c-fixture-arm64_builtin_lab")
    assert arm[col["qemu-tcg"]][0] == "pass" and arm[col["qemu-tcg"]][1].startswith("#c-fixture-arm64_qemu-tcg")
    assert arm[col["builtin"]] == ["·"]                     # nothing on a native x86 builtin for arm64
    assert rows["linux-arm64"][col["builtin+lab"]][0] == "fail"
    pvh = rows["fixture-pvh"]
    assert pvh[col["builtin"]][0] == "pass" and pvh[col["builtin+lab"]] == ["·"]


def test_heatmap_rows_by_arch_with_lab_and_qemu_side_by_side(arm_run):
    _, _, page = arm_run
    _check(parse_heat(page.read_text()))


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless chromium (/usr/bin/chromium) absent")
def test_heatmap_in_chromium(arm_run):
    tmp, _, page = arm_run
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
            "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(argv, capture_output=True, text=True, timeout=90).stdout
    assert 'data-ready="1"' in dom
    _check(parse_heat(dom))
