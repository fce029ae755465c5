"""A checkpoint with a backbone from outside the project, opened in the Voila app in a real browser.

Two small networks are written here (nothing downloaded): a TorchScript archive that returns its
spatial map and states its input (3x28x28, mean/std) in the archive, and a ``py:MODULE:FUNCTION``
factory of a CNN that returns embeddings. ``fsl-xai train --backbone ...`` meta-trains a checkpoint
with each on the real RetinaMNIST npz (a few episodes); the TorchScript file is then deleted, since
the checkpoint carries the network itself. The app opens the npz as "your data" with each checkpoint
file, through its own controls, and the test checks what a user must see: the new episode, the
Grad-CAM map (on the backbone's default layer) with its title, the distances, and a header that
names the model and says honestly where its validation score was measured; with no error box and
nothing asked of another machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

RENDER_MS = 240_000  # kernel start + imports on two busy cores
STEP_MS = 180_000  # one open embeds 400 images and validates on 100 episodes; the cores are shared
TRAIN_TIMEOUT_S = 300
IGNORE = [r"Failed to load resource: the server responded with a status of 404 .*(favicon|translations)"]

#: the networks, as a module the kernel and the CLI import (its folder goes on PYTHONPATH)
NETS = textwrap.dedent('''
    import torch
    from torch import nn


    class MapNet(nn.Module):
        """3x28x28 images -> a spatial map (N, 16, 7, 7); scripted, its input stated in the archive."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))

        def forward(self, x):
            return self.body(x)


    class EmbNet(nn.Module):
        """3x28x28 images -> embeddings (N, 16); states its input as attributes."""

        input_size = (3, 28, 28)
        mean = (0.5, 0.5, 0.5)
        std = (0.25, 0.25, 0.25)

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.pool(self.features(x)).flatten(1)


    def emb_net():
        return EmbNet()
''')

CELL = """
from fsl_xai.data.synthetic import make_synthetic
from fsl_xai.testing import tiny_model
from widgets import Workbench
from widgets.state import WorkbenchState

state = WorkbenchState(n_way=3, n_shot=2, n_query=2)
state.load("synthetic", images=make_synthetic(n_per_class=12, size=32, n_classes=4, seed=0, split="test"),
           model=tiny_model(channels=1, size=32), progress=False)
Workbench(state, episodes=20, methods=["gradcam"], badges=False)
"""


def _notebook(folder: Path) -> Path:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": CELL}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = folder / "external_backbone.ipynb"
    path.write_text(json.dumps(nb))
    return path


def _write_networks(folder: Path) -> Path:
    """The module ``ext_nets`` in ``folder``, and the TorchScript archive of its MapNet (returned)."""
    import torch

    from fsl_xai.models.external import TORCHSCRIPT_INPUT_FILE

    (folder / "ext_nets.py").write_text(NETS)
    sys.path.insert(0, str(folder))
    try:
        import ext_nets  # type: ignore[import-not-found]

        torch.manual_seed(0)
        archive = folder / "mapnet.pt"
        stated = {"input_size": [3, 28, 28], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; it is what users export
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(ext_nets.MapNet().eval())
            torch.jit.save(scripted, str(archive), _extra_files={TORCHSCRIPT_INPUT_FILE: json.dumps(stated)})
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("ext_nets", None)
    return archive


def _start_training(backbone: str, data: Path, out: Path, env: dict[str, str]) -> subprocess.Popen:
    cli = Path(sys.executable).with_name("fsl-xai")
    argv = [str(cli)] if cli.is_file() else [sys.executable, "-c",
                                             "from fsl_xai.cli import main; raise SystemExit(main())"]
    argv += ["train", "--dataset", str(data), "--backbone", backbone, "--episodes", "12", "--val-every", "6",
             "--n-way", "2", "--n-shot", "2", "--n-query", "3", "--seed", "0", "--threads", "1", "--no-progress",
             "--out", str(out)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=TRAIN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    assert process.returncode == 0, f"fsl-xai train failed:\n{output}"
    return output


def _heatmap_hrefs(page) -> str:
    return " ".join(img.get_attribute("src") or "" for img in page.locator(".fsl-heatmap-figure img").all())


def _bars(page) -> str:
    return " ".join(page.locator(".fsl-distance-bars .fsl-dist-value").all_text_contents())


def _open_checkpoint(page, own, checkpoint: Path, before: dict[str, str], new_episode: bool = True) -> None:
    """Type the checkpoint's path, click open, and wait until every view shows the new model (and,
    with ``new_episode``, a new episode: the same data and seed draw the same one for another model)."""
    own.get_by_placeholder("path of a checkpoint (.pt) written by `fsl-xai train`").fill(str(checkpoint))
    own.locator("button", has_text=re.compile(r"^\s*open\s*$")).click()
    info = page.locator(".fsl-model-info").first
    expect(info).not_to_have_text(before["info"], timeout=STEP_MS)
    expect(own).to_contain_text("opened retinamnist: 400 images, 5 classes", timeout=STEP_MS)
    # the episode: its header changes, and the selected query is one of RetinaMNIST's grades 0-4
    header = page.locator(".fsl-support-header").first
    expect(header).to_contain_text("episode", timeout=STEP_MS)
    if new_episode:
        expect(header).not_to_have_text(before["header"], timeout=STEP_MS)
    expect(page.locator(".fsl-heatmap-caption").first).to_contain_text(
        re.compile(r"query #\d+: true [0-4], predicted [0-4] \(margin"), timeout=STEP_MS)
    # the Grad-CAM map, redrawn, with its title; the distance bars, redrawn
    _wait_for_change(page, f"the heatmap of {checkpoint.name}", """([before]) => {
        const el = document.querySelector('.fsl-heatmap-figure');
        if (!el) return false;
        const hrefs = Array.from(el.querySelectorAll('img')).map(i => i.getAttribute('src') || '').join(' ');
        return hrefs.length > 0 && hrefs !== before; }""", before["heat"])
    expect(page.locator(".fsl-heatmap-figure").first).to_contain_text(re.compile(r"Grad-CAM — why [0-4]"))
    _wait_for_change(page, f"the distance bars of {checkpoint.name}", """([before]) => {
        const t = Array.from(document.querySelectorAll('.fsl-distance-bars .fsl-dist-value'))
          .map(t => t.textContent).join(' ');
        return t.length > 0 && t !== before; }""", before["bars"])


def _wait_for_change(page, what: str, script: str, before: str) -> None:
    try:
        page.wait_for_function(script, arg=[before], timeout=STEP_MS)
    except PlaywrightTimeout:
        raise AssertionError(f"{what} did not change within {STEP_MS / 1000:.0f} s") from None


def _snapshot(page) -> dict[str, str]:
    return {"info": page.locator(".fsl-model-info").first.inner_text(),
            "header": page.locator(".fsl-support-header").first.inner_text(),
            "heat": _heatmap_hrefs(page), "bars": _bars(page)}


def _no_error_box(page) -> None:
    boxes = page.locator(".fsl-error")
    texts = [t.strip() for t in boxes.all_inner_texts()]
    assert texts and not any(texts), f"an error box shows: {[t for t in texts if t]}"


def _header_names_backbone(info_text: str, spec_prefix: str) -> bool:
    return spec_prefix in info_text and "3x28x28" in info_text


def test_external_backbone_checkpoints_in_voila(servers, page, page_errors, tmp_path, monkeypatch, shared_file,
                                               cache_dir):
    data = shared_file("medmnist_official/retinamnist.npz")
    nets = tmp_path / "nets"
    nets.mkdir()
    archive = _write_networks(nets)
    # the kernel and the CLI import the py: factory's module from here
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(nets), os.environ.get("PYTHONPATH", "")) if p))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ts_ckpt, py_ckpt = tmp_path / "ts.pt", tmp_path / "py.pt"
    # train both while Voila starts
    training = [_start_training(f"torchscript:{archive}", data, ts_ckpt, env),
                _start_training("py:ext_nets:emb_net", data, py_ckpt, env)]
    try:
        app = servers.voila(_notebook(tmp_path))
        ts_log, py_log = (_finish(p) for p in training)
    finally:
        for p in training:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert "input 3x28x28, mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25] (channels: model" in ts_log
    assert "Grad-CAM layer output_map" in ts_log
    assert "Grad-CAM layer net.features" in py_log
    archive.unlink()  # the checkpoint holds the TorchScript network itself

    page.goto(app.url, timeout=RENDER_MS, wait_until="commit")
    own = page.locator(".fsl-own-data").first
    expect(own).to_be_visible(timeout=RENDER_MS)
    expect(page.locator(".fsl-heatmap-caption").first).to_contain_text("query #", timeout=STEP_MS)
    expect(page.locator(".fsl-distance-bars .fsl-dist-value").first).to_be_attached(timeout=STEP_MS)
    page.get_by_placeholder("path of an .npz file, an image folder or a DICOM folder").fill(str(data))

    _open_checkpoint(page, own, ts_ckpt, _snapshot(page))
    info = page.locator(".fsl-model-info").first
    expect(info).to_contain_text("retinamnist · model protonet")
    # honest: the score is the one measured here, on the data on screen, and says on what
    expect(info).to_contain_text(re.compile(r"validation accuracy [\d.]+% \(n=\d+, 95% CI .*measured on "
                                            r"retinamnist val split"))
    expect(info).to_contain_text("all seen by the model in training")
    _no_error_box(page)
    ts_info = info.inner_text()

    _open_checkpoint(page, own, py_ckpt, _snapshot(page), new_episode=False)
    expect(info).to_contain_text("retinamnist · model protonet")
    expect(info).to_contain_text("measured on retinamnist val split")
    _no_error_box(page)
    py_info = info.inner_text()
    page_errors.assert_none(ignore=IGNORE)

    # The header names the backbone as trained and the input it takes
    assert _header_names_backbone(ts_info, "torchscript:"), ts_info
    assert _header_names_backbone(py_info, "py:ext_nets:emb_net"), py_info
