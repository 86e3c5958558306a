"""Open the fixture report.html in headless Chromium (no network) and check every embedded image decodes.

The report's inline script sets <body data-images-loaded="N"> once all N images have loaded with a non-zero
natural width; Chromium's --dump-dom prints the DOM after that. Skipped where Chromium is not installed
(`make browser` installs Debian's package).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dde_bench.report.plots import PLOTS
from tests.report_fixtures import rendered_fixture_report


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow
def test_report_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium not installed (run `make browser` or `apt-get install chromium`)")
    html_path = rendered_fixture_report() / "report.html"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        html_path.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    m = re.search(r'<body[^>]*data-images-loaded="(\d+)"', dom)
    assert m, "the images did not all load: " + proc.stderr[-1000:]
    assert (
        int(m.group(1)) == len(list(html_path.parent.glob("plots/*.png"))) == len(PLOTS) - 1
    )  # no energy on CPU
    assert "Accuracy and speedup over the teacher" in dom
