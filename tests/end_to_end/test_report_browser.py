"""report.html in a real browser: headless Chromium (the system's package) renders the report of
a small synthetic sweep without console or script errors, draws a page that is not blank, and
its metric menu switches the curves shown, chosen through the URL hash and by the menu itself.

Chromium writes console messages to stderr (``--enable-logging=stderr``) and the page writes any
script error into its own error box, so both are checked. Without a Chromium binary the test is
skipped here; CI installs one (``.ci/run``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import matplotlib.image
import numpy as np
import pytest
from run_folders import two_by_two

from mixerlab.experiments.cli.compare import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
pytestmark = [
    pytest.mark.slow,  # a browser start is a few seconds
    pytest.mark.skipif(
        BROWSER is None,
        reason="no Chromium binary on PATH: install it (apt-get install chromium) to check "
        "report.html in a browser; CI does",
    ),
]
# ``INFO:CONSOLE`` lines: every console message and uncaught error of the page.
CONSOLE = re.compile(r":CONSOLE[:(].*")


def browse(tmp_path: Path, url: str, *flags: str) -> tuple[str, str]:
    """Load ``url`` in headless Chromium; returns the DOM after load and the console lines."""
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",  # CI containers run as root, where the sandbox cannot start
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1100,1400",
        *flags,
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, "\n".join(CONSOLE.findall(done.stderr))


def shown_metrics(dom: str) -> list[str]:
    return re.findall(r'<figure data-metric="([^"]+)">', dom)  # hidden ones carry hidden=""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    two_by_two(root / "runs")
    assert main([str(root / "runs"), "--out", str(root / "out")]) == 0
    return root / "out" / "report.html"


def test_the_report_renders_without_errors_and_is_not_blank(report, tmp_path):
    shot = tmp_path / "report.png"
    dom, console = browse(tmp_path, report.as_uri(), f"--screenshot={shot}")
    assert not console, console
    assert '<pre id="script-errors" hidden=""></pre>' in dom  # nothing caught by the page
    assert shown_metrics(dom) == ["val/loss"]  # the selection metric; every other one hidden
    assert dom.count("<figure data-metric=") == 3  # train/loss, val/acc, val/loss
    pixels = matplotlib.image.imread(shot)  # decodes as a PNG
    assert pixels.shape[:2] == (1400, 1100)
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 50  # text, tables and curves, not one flat colour


def test_the_url_hash_chooses_the_metric(report, tmp_path):
    dom, console = browse(tmp_path, f"{report.as_uri()}#metric={quote('val/acc', safe='')}")
    assert not console, console
    assert shown_metrics(dom) == ["val/acc"]


def test_choosing_in_the_menu_switches_the_curves_and_the_link(report, tmp_path):
    """A copy of the report with a script that does what a reader does: pick train/loss."""
    choose = (
        "<script>var menu = document.getElementById('metric'); menu.value = 'train/loss';"
        "menu.dispatchEvent(new Event('change')); document.title = window.location.hash;</script>"
    )
    page = tmp_path / "report.html"
    page.write_text(report.read_text().replace("</body>", f"{choose}</body>"))
    dom, console = browse(tmp_path, page.as_uri())
    assert not console, console
    assert shown_metrics(dom) == ["train/loss"]
    assert f"<title>#metric={quote('train/loss', safe='')}</title>" in dom


def test_a_script_error_is_caught_and_shown(report, tmp_path):
    """The check above would see a broken page: its error lands in the box and the console."""
    page = tmp_path / "report.html"
    page.write_text(
        report.read_text().replace("</body>", "<script>undefinedCall();</script></body>")
    )
    dom, console = browse(tmp_path, page.as_uri())
    assert "undefinedCall is not defined" in console
    assert re.search(r'<pre id="script-errors">script error: [^<]*undefinedCall', dom)


def test_the_mixing_maps_section_shows_its_figure(trained_runs, tmp_path):
    """``compare --maps`` on two really trained runs: the section renders without errors and
    its embedded PNG decodes and is laid out on the page (the probe script reports both)."""
    assert main([*map(str, trained_runs), "--maps", "--out", str(tmp_path / "out")]) == 0
    probe = (
        "<script>window.addEventListener('load', function () {"
        "var image = document.querySelector('#mixing-maps + figure.maps img');"
        "document.title = image.naturalWidth + 'x' + image.naturalHeight + ' drawn ' +"
        " Math.round(image.getBoundingClientRect().width); });</script>"
    )
    page = tmp_path / "report.html"
    page.write_text(
        (tmp_path / "out" / "report.html").read_text().replace("</body>", f"{probe}</body>")
    )
    dom, console = browse(tmp_path, page.as_uri())
    assert not console, console
    assert '<pre id="script-errors" hidden=""></pre>' in dom
    size = re.search(r"<title>(\d+)x(\d+) drawn (\d+)</title>", dom)
    assert size, dom[:500]
    width, height, drawn = map(int, size.groups())
    assert width > 500 and height > 300 and drawn > 500  # two rows of panels, laid out
