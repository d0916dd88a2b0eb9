"""The HTML report in a real browser: the script runs without errors and every cell is there."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fakerun import make_cell, make_run, xrstor_gap
from harness.report import write_reports
from harness.report.run import load_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless chromium (/usr/bin/chromium) absent")]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    base, run = make_run(tmp / "base", "base"), make_run(tmp / "run", "nightly")
    for d in (base, run):
        for pol in ("emulate", "gp", "zero"):
            make_cell(d, policy=pol, times=[0.05, 0.2, 0.45 + (0.3 if d is run and pol == "gp" else 0), 0.8])
        make_cell(d, guest="linux-amd64-pvh", outcome="gap", reached=2, gaps=[xrstor_gap()],
                  console_extra="<script>document.title='pwned'</script>\n")
        make_cell(d, guest="netbsd-10", backend="qemu-tcg", outcome="timeout", reached=1, gaps=[])
    return tmp, run, write_reports(run, base)["html"]


def test_page_script_runs_clean_and_shows_every_cell(report):
    tmp, run, page = report
    assert 'data-ready="1"' not in page.read_text()          # only the script sets it
    res = chromium(tmp, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
                   page.as_uri())
    dom = res.stdout
    assert re.search(r'<body[^>]*data-ready="1"', dom), res.stderr[-2000:]
    errors = re.search(r'<div id="errors"[^>]*>(.*?)</div>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == ""
    assert "Uncaught" not in res.stderr and "pwned" not in dom.split("<body")[0]
    for view in load_run(run).cells:
        assert f'id="c-{view.slug}"' in dom
    assert "&lt;script&gt;document.title" in dom


def test_screenshot(report):
    tmp, _, page = report
    shot = tmp / "report.png"
    chromium(tmp, "--window-size=1280,2000", "--hide-scrollbars", f"--screenshot={shot}", page.as_uri())
    assert shot.exists() and shot.stat().st_size > 20000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = Path("/tmp/harness-report-screenshot.png")
    shutil.copy(shot, keep)   # for a human to look at
