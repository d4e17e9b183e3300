"""report.html opens in a real browser (headless Chromium) with its plots decoded.

Chromium is required: CI installs it (.ci/run), and without it this test fails and says how
to install it. Set QGRAPH_NO_BROWSER=1 to skip it on a machine that cannot have one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from qgraph.cli.main import main
from tests.test_report import detector_head

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")

#: marks, after the page's load event, how many images it has and how many decoded
_CHECK = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var m = document.createElement('pre'); m.id = 'qgraph-check';
  m.textContent = 'images ' + imgs.length + ' decoded ' + ok; document.body.appendChild(m);
});</script>"""


def _browser() -> str:
    if os.environ.get("QGRAPH_NO_BROWSER") == "1":
        pytest.skip("QGRAPH_NO_BROWSER=1: report.html is not opened in a browser")
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        pytest.fail("no Chromium to open report.html: install it (`apt-get install -y chromium` on Debian, as .ci/run "
                    "does) or set QGRAPH_NO_BROWSER=1 to skip this test")
    return found


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    import numpy as np
    import onnx

    proto, calib = detector_head()
    tmp = tmp_path_factory.mktemp("html")
    onnx.save(proto, tmp / "det.onnx")
    np.savez(tmp / "calib.npz", **calib)
    assert main(["compile", str(tmp / "det.onnx"), "--calib", str(tmp / "calib.npz"), "-o", str(tmp / "out")]) == 0
    return tmp / "out"


def test_html_is_self_contained_with_warnings_first(report_dir):
    page = (report_dir / "report.html").read_text()
    assert "mixed-ranges" in page and page.index("Warnings") < page.index("<img")
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing to fetch: opens anywhere, offline
    imgs = re.findall(r'<img[^>]*src="data:image/png;base64,', page)
    assert len(imgs) >= 2  # the output scatter and the per-layer SQNR chart


def test_plots_use_no_pyplot_state(report_dir):
    """Rendering touches no process-wide matplotlib state (pyplot's figure manager, the backend)."""
    import matplotlib

    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    import qgraph

    proto, calib = detector_head()
    qgraph.quantize(proto, calib).report.html()
    assert matplotlib.get_backend() == backend
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_chromium_renders_the_plots(report_dir, tmp_path):
    browser = _browser()
    page = (report_dir / "report.html").read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", _CHECK + "</body>"))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r"images (\d+) decoded (\d+)", run.stdout)
    assert found, f"Chromium did not run the page's check (rc {run.returncode}): {run.stderr[-2000:]}"
    total, decoded = int(found.group(1)), int(found.group(2))
    assert total >= 2 and decoded == total, run.stdout[-2000:]
