"""The bundle's predictor runs with numpy + onnxruntime alone and predicts what fsl-xai predicts."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsl_xai.checkpoints import load_checkpoint
from fsl_xai.data.registry import load_dataset
from fsl_xai.deploy.bundle import draw_support

from .conftest import PBC_CLASSES

ROOT = Path(__file__).resolve().parents[3]
PREDICTOR = ROOT / "fsl_xai" / "deploy" / "predict.py"
BLOCKER = '''
import sys


class BlockTorchAndFslXai:
    """Make `import torch` and `import fsl_xai` fail, as on a machine that has neither."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "fsl_xai"):
            raise ImportError(f"{name} is not available here (blocked by the test)")
        return None


sys.meta_path.insert(0, BlockTorchAndFslXai())
'''


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a Python in which torch and fsl_xai cannot be imported."""
    folder = tmp_path_factory.mktemp("blocker")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(folder)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_blocker_really_blocks_torch_and_fsl_xai(blocked_env, tmp_path):
    for module in ("torch", "fsl_xai"):
        done = _run(["-c", f"import {module}"], blocked_env, tmp_path)
        assert done.returncode != 0 and "blocked by the test" in done.stderr
    assert _run(["-c", "import numpy, onnxruntime, PIL"], blocked_env, tmp_path).returncode == 0


def test_predictor_source_imports_neither_torch_nor_fsl_xai():
    tree = ast.parse(PREDICTOR.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"json", "sys", "pathlib", "numpy", "onnxruntime", "PIL"}, imported
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))


def test_bundle_carries_the_packaged_predictor(pbc64_bundle):
    out, _ = pbc64_bundle
    assert (out / "predict.py").read_bytes() == PREDICTOR.read_bytes()


def test_standalone_predictor_equals_fsl_xai_on_real_images(pbc64_bundle, pbc64_checkpoint, blocked_env, tmp_path):
    out, _ = pbc64_bundle
    test = load_dataset("pbc-blood-64", split="test", progress=False).select_classes(PBC_CLASSES)
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(len(test), 12, replace=False))
    # real images as the files a user has: 8-bit PNGs (read by Pillow) and one .npy batch
    pixels = np.round(test.images[picked] * 255).astype(np.uint8)
    paths = []
    for i, image in enumerate(pixels[:6]):
        path = tmp_path / f"cell{i}.png"
        Image.fromarray(image.transpose(1, 2, 0)).save(path)
        paths.append(path.name)
    np.save(tmp_path / "batch.npy", pixels[6:].astype(np.float32) / 255)
    paths.append("batch.npy")

    done = _run([str(out / "predict.py"), *paths], blocked_env, tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 12

    # fsl-xai's own answer: the same checkpoint and the same seeded support set, scored by torch
    model, _ = load_checkpoint(pbc64_checkpoint)
    card = json.loads((out / "model_card.json").read_text())
    full = load_dataset("pbc-blood-64", split="test", progress=False)
    names, support, labels = draw_support(full, card["classes"], card["support_set"]["n_shot"],
                                          card["support_set"]["seed"])
    fitted = model.fit(torch.from_numpy(full.images[support]), torch.from_numpy(labels))
    with torch.no_grad():
        expected = fitted(torch.from_numpy(pixels.astype(np.float32) / 255)).double().numpy()
    assert [row["class"] for row in rows] == [names[i] for i in expected.argmax(1)]
    got = np.array([[row["scores"][name] for name in names] for row in rows])
    # printed with 6 decimals; float32 scores are good to about 1e-7 of their size
    assert (np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max() <= 1e-4
