"""report.html renders in a real headless Chromium: every image decodes, the table is there.

CI needs the Debian/Ubuntu package `chromium` (Debian) or `chromium-browser` (Ubuntu; a snap
shim there); without a binary these tests skip and say why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuromask_onnx import report
from neuromask_onnx.metrics import Curve

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((found for b in BROWSERS if (found := shutil.which(b))), None)
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no chromium binary on PATH (apt-get install chromium)")


def test_ci_has_a_browser() -> None:
    """CI installs chromium (.ci/run): there, a missing browser is a failure, not a skip."""
    if BROWSER is None and os.environ.get("CI"):
        pytest.fail("CI=true but no chromium on PATH; .ci/run should have installed it")


def _dom(page: Path, profile: Path) -> str:
    assert BROWSER is not None
    done = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _check(dom: str) -> tuple[int, int]:
    m = re.search(r'id="nm-image-check"[^>]*data-images="(\d+)"[^>]*data-broken="(\d+)"', dom)
    if m is None:  # attribute order as serialised
        m2 = re.search(r'data-broken="(\d+)"[^>]*data-images="(\d+)"', dom)
        assert m2 is not None, "the page's image check did not run"
        return int(m2.group(2)), int(m2.group(1))
    return int(m.group(1)), int(m.group(2))


def _results(corrupt: bool = False) -> list[report.InputResult]:
    rng = np.random.default_rng(0)
    curve = Curve(np.linspace(0, 1, 5), np.array([0.9, 0.5, 0.3, 0.2, 0.1]), 0.35)
    ins = Curve(np.linspace(0, 1, 5), np.array([0.1, 0.6, 0.8, 0.9, 0.9]), 0.7)
    img = Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8))
    res = report.InputResult("cat <1>", 3, "tabby", 0.9, img)
    for name in ("saliency", "rise"):
        res.methods.append(report.MethodResult(name, rng.random((16, 16)), 0.5,
                                               {"deletion_auc": 0.35, "insertion_auc": 0.7},
                                               curve, ins))
    return [res]


@needs_browser
def test_report_renders_without_broken_images(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(report.render(_results()), encoding="utf-8")
    dom = _dom(page, tmp_path / "profile")
    images, broken = _check(dom)
    assert (images, broken) == (3, 0)
    assert '<table id="nm-summary">' in dom
    assert "deletion_auc" in dom
    assert dom.count("<svg") == 2
    assert "cat &lt;1&gt;" in dom


@needs_browser
def test_broken_image_is_detected(tmp_path: Path) -> None:
    """The check itself can fail: a corrupt PNG payload is counted as broken."""
    page = tmp_path / "report.html"
    html = report.render(_results())
    html = html.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1)
    page.write_text(html, encoding="utf-8")
    assert _check(_dom(page, tmp_path / "profile")) == (3, 1)
