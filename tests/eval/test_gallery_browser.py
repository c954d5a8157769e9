"""The HTML gallery in a real headless Chromium: images load, and the failure filter (JS) hides the good items.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped with the reason when it is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless browser found (looked for {', '.join(BROWSERS)}); apt-get install -y chromium")


def screenshot(page: Path, query: str, tmp_path: Path, name: str) -> np.ndarray:
    shot = tmp_path / f"{name}.png"
    cmd = [
        _browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
        "--window-size=1400,900", "--disable-background-networking", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
        page.resolve().as_uri() + query,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-800:]}"
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def share_near(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> float:
    """Fraction of pixels within ``tol`` (per channel) of a colour."""
    return float(np.mean(np.all(np.abs(img - np.array(rgb)) <= tol, axis=-1)))


def test_gallery_renders_images_and_filters_failures(judged_run, tmp_path: Path) -> None:
    out, _ = judged_run
    page = out / "gallery.html"
    img = screenshot(page, "", tmp_path, "all")
    assert img.shape[0] >= 800 and img.std() > 20  # not a blank page
    # good1's reference and render are a red square, good2's a blue disc: the <img> files loaded.
    assert share_near(img, (255, 0, 0)) > 0.005
    assert share_near(img, (0, 0, 255)) > 0.005
    failures = screenshot(page, "?filter=fail", tmp_path, "failures")
    assert failures.std() > 20
    assert share_near(failures, (255, 0, 0)) < 0.0005  # good items hidden by the filter
    assert share_near(failures, (0, 170, 0)) > 0.003  # the broken item's green bars are shown
