"""Opening your own images in the Voila app, in a real browser: a wrong path gives one inline message
with its details folded away; an image folder opens with the model on screen; the default model for
such images is trained only on request, shows its progress and stops on "cancel"."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import expect

RENDER_MS = 180_000
STEP_MS = 60_000
IGNORE = [r"Failed to load resource: the server responded with a status of 404 .*(favicon|translations)"]

CELL = """
from fsl_xai.data.synthetic import make_synthetic
from fsl_xai.testing import tiny_model
from widgets.state import WorkbenchState
from widgets.dataset_model import DatasetModelPicker

state = WorkbenchState(n_way=3, n_shot=2, n_query=2)
state.load("synthetic", images=make_synthetic(n_per_class=12, size=32, n_classes=4, seed=0, split="test"),
           model=tiny_model(channels=1, size=32))
DatasetModelPicker(state)
"""


def _notebook(folder: Path) -> Path:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                     "source": CELL}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = folder / "open_own.ipynb"
    path.write_text(json.dumps(nb))
    return path


def _images(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for k, c in enumerate(("cyst", "mass", "scar")):
        (root / c).mkdir(parents=True)
        for i in range(6):
            grey = np.clip(40 + 80 * k + rng.integers(-15, 15, (28, 28)), 0, 255).astype(np.uint8)
            Image.fromarray(grey).save(root / c / f"{i}.png")
    return root


def test_open_own_data_in_voila(servers, page, page_errors, tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_XAI_CACHE_DIR", str(tmp_path / "empty-cache"))  # no default model cached
    folder = _images(tmp_path / "clinic_scans")
    app = servers.voila(_notebook(tmp_path))
    page.goto(app.url, timeout=RENDER_MS, wait_until="commit")
    own = page.locator(".fsl-own-data").first
    expect(own).to_be_visible(timeout=RENDER_MS)
    open_button = own.locator("button", has_text=re.compile(r"^\s*open\s*$"))
    data = page.get_by_placeholder("path of an .npz file, an image folder or a DICOM folder")
    error = page.locator(".fsl-error").first

    data.fill(str(tmp_path / "no such folder"))
    open_button.click()
    expect(error).to_contain_text("does not exist", timeout=STEP_MS)
    expect(error.locator("details")).to_have_count(1)
    expect(error.locator("pre")).not_to_be_visible()  # the traceback is folded away

    data.fill(str(folder))
    open_button.click()
    expect(page.locator(".fsl-model-info").first).to_contain_text("clinic_scans", timeout=STEP_MS)
    expect(own).to_contain_text("18 images, 3 classes", timeout=STEP_MS)
    expect(error).to_have_text("")

    model_source = own.locator("select").filter(has=page.locator("option", has_text="the model on screen"))
    model_source.select_option(label="the default model for such images")
    open_button.click()
    expect(own).to_contain_text("takes several minutes", timeout=STEP_MS)
    own.locator("button", has_text="train default model").click()
    expect(own).to_contain_text("training:", timeout=STEP_MS)
    own.locator("button", has_text="cancel").click()
    expect(own).to_contain_text("training cancelled", timeout=STEP_MS)
    expect(page.locator(".fsl-model-info").first).to_contain_text("clinic_scans")  # still the session on screen
    page_errors.assert_none(ignore=IGNORE)
