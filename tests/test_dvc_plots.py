"""`dvc plots show` renders its curves on a machine without internet (issue 18): .dvc/config names our HTML
template (.dvc/plots_template.html), which carries vega, vega-lite and vega-embed inline instead of loading
them from DVC's CDN. Checked with the real `dvc` and a headless Chromium whose network is off."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser import screenshot
from PIL import Image

from tood.report import plots_template

REPO = Path(__file__).resolve().parents[1]
LINE = np.array([0x94, 0x5D, 0xD6])  # the first colour of DVC's default palette (dvc_render.vega): our curve


def test_the_template_inlines_the_versions_dvc_asks_for_and_loads_nothing():
    page = plots_template.TEMPLATE.read_text(encoding="utf8")
    inlined = dict(re.findall(r'<script data-package="([\w-]+)@([\d.]+)">', page))
    assert inlined == plots_template.dvc_versions()  # a dvc_render upgrade that moves a version fails here
    assert not re.search(r"<script[^>]*\ssrc=", page) and "{scripts}" not in page  # DVC's CDN tags
    assert "{plot_divs}" in page
    config = (REPO / ".dvc" / "config").read_text()
    assert re.search(r"^\s*html_template = plots_template.html$", config, flags=re.MULTILINE), config


def _dvc(args: list[str], repo: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")} | {"DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> Path:
    """A DVC repo with one loss-curve plot declared as dvc.yaml declares ours, and this repo's .dvc/config."""
    repo = tmp_path_factory.mktemp("plots_repo")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(["init", "-q"], repo)
    for name in ("config", "plots_template.html"):
        shutil.copy(REPO / ".dvc" / name, repo / ".dvc" / name)
    curve = "\n".join(f"{s},{2.5 * 0.99**s:.4f}" for s in range(0, 400, 4))
    (repo / "curves.csv").write_text("step,loss\n" + curve + "\n")
    stage = "stages:\n  train:\n    cmd: 'true'\n    plots:\n      - curves.csv:\n          x: step\n          y: loss\n"
    (repo / "dvc.yaml").write_text(stage)
    return repo


def _curve_pixels(png: Path) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)  # (H, W, 3)
    return int((np.abs(pixels - LINE).max(axis=-1) < 40).sum())


@pytest.mark.slow
def test_plots_show_draws_the_curve_with_the_network_off(plots_repo, chromium, tmp_path):
    _dvc(["plots", "show", "-o", str(tmp_path / "plots")], plots_repo)
    page = (tmp_path / "plots" / "index.html").read_text(encoding="utf8")
    assert "cdn.jsdelivr.net" not in page
    png = screenshot(chromium, (tmp_path / "plots" / "index.html").as_uri(), tmp_path / "p.png", offline=True)
    assert _curve_pixels(png) > 100  # the line is drawn (a blank page has none of its colour)


@pytest.mark.slow
def test_without_the_template_the_same_page_is_blank_offline(plots_repo, chromium, tmp_path):
    """The control: DVC's own page, same browser flags, draws nothing (so the check above can fail)."""
    (plots_repo / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    try:
        _dvc(["plots", "show", "-o", str(tmp_path / "plots")], plots_repo)
    finally:
        shutil.copy(REPO / ".dvc" / "config", plots_repo / ".dvc" / "config")
    png = screenshot(chromium, (tmp_path / "plots" / "index.html").as_uri(), tmp_path / "p.png", offline=True)
    assert _curve_pixels(png) == 0
