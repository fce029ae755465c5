"""`fsl-xai export-model`: what it prints, what the bundle holds, the size of a Conv-4 bundle, the model
card, the domain guard, refusals, and that nothing half-made is ever left at --out."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from fsl_xai.checkpoints import CheckpointInfo, save_checkpoint
from fsl_xai.cli import main
from fsl_xai.data.registry import load_dataset
from fsl_xai.guard import fit_guard
from fsl_xai.testing import tiny_model

from .conftest import PBC_CLASSES

MB = 1_000_000
BUNDLE_FILES = {"MODEL_CARD.md", "bundle.json", "model.onnx", "model_card.json", "predict.py", "vectors.npz"}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err)
    return err[-1]


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "a hidden temporary folder was left"


def _checkpoint(path: Path, model_name: str = "protonet", **options) -> Path:
    model = tiny_model(channels=1, size=64, width=8, model=model_name, **options)
    info = CheckpointInfo.for_model(model, dataset="synthetic", classes=())
    return save_checkpoint(path, model, info)


def _export(checkpoint: Path, out: Path, *extra: str) -> int:
    return main(["export-model", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--n-shot", "2",
                 "--episodes", "5", "--n-query", "3", "--no-progress", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("synthetic") / "m.pt")


@pytest.fixture(scope="module")
def synthetic_bundle(synthetic_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic-bundle") / "bundle"
    assert _export(synthetic_checkpoint, out) == 0
    return out


def test_conv4_bundle_prints_parity_and_size_and_is_at_most_5_mb(pbc64_bundle):
    out, printed = pbc64_bundle
    assert {p.name for p in out.iterdir()} == BUNDLE_FILES
    size = sum(p.stat().st_size for p in out.iterdir())
    assert size <= 5 * MB
    diff = re.search(r"largest difference ([0-9.e+-]+)", printed)
    assert diff and float(diff.group(1)) <= 1e-4
    shown = re.search(r"bundle written to .*: ([0-9.]+) MB \((\d+) bytes", printed)
    assert shown and int(shown.group(2)) == size
    spec = json.loads((out / "bundle.json").read_text())
    assert spec["classes"] == PBC_CLASSES
    assert spec["transform"].items() >= {"layout": "NCHW", "dtype": "float32", "channels": 3, "height": 64,
                                         "width": 64}.items()
    assert spec["rule"]["name"] == "squared_euclidean"


def test_model_card_has_training_data_validation_with_n_and_interval(pbc64_bundle, pbc64_checkpoint):
    out, _ = pbc64_bundle
    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["dataset"] == "pbc-blood-64"
    assert set(card["training"]["classes"]) == {"basophil", "eosinophil", "erythroblast", "ig", "neutrophil"}
    episodes = card["validation"]["episodes"]
    assert episodes["n_episodes"] == 20 and episodes["n_queries"] == 20 * 3 * 5
    low, high = episodes["ci95"]
    assert low <= episodes["accuracy"] <= high
    own = card["validation"]["this_support_set"]
    assert own["n"] == 3 * 40 - 3 * 5 and own["method"] == "wilson" and own["ci95"][0] <= own["estimate"]
    assert card["parity"]["max_diff"] <= 1e-4 and card["parity"]["n_images"] == 3 * 40
    assert card["domain_guard"]["available"] is False
    text = (out / "MODEL_CARD.md").read_text()
    assert "pbc-blood-64" in text and "95% CI" in text and f"n = {own['n']} images" in text
    # no identifying values: sample ids and file names of the images stay out of the bundle
    ids = load_dataset("pbc-blood-64", split="test", progress=False).metadata
    everything = "".join(p.read_text() for p in out.iterdir() if p.suffix in (".json", ".md"))
    assert not any(str(v) in everything for v in ids["sample_id"].tolist() + ids["filenames"].tolist())


def test_guard_threshold_goes_into_the_card(synthetic_checkpoint, tmp_path, capsys):
    checkpoint = synthetic_checkpoint
    model = tiny_model(channels=1, size=64, width=8)
    guard = fit_guard(model, load_dataset("synthetic", split="train", progress=False),
                      load_dataset("synthetic", split="val", progress=False))
    guard.save(tmp_path / "guard.json")
    assert _export(checkpoint, tmp_path / "b", "--guard", str(tmp_path / "guard.json")) == 0
    card = json.loads((tmp_path / "b" / "model_card.json").read_text())
    assert card["domain_guard"]["available"] and card["domain_guard"]["threshold"] == pytest.approx(guard.threshold)
    assert f"Threshold {guard.threshold:.4f}" in (tmp_path / "b" / "MODEL_CARD.md").read_text()

    other = tiny_model(channels=1, size=64, width=8, seed=1)
    fit_guard(other, load_dataset("synthetic", split="train", progress=False),
              load_dataset("synthetic", split="val", progress=False)).save(tmp_path / "other.json")
    assert _export(checkpoint, tmp_path / "c", "--guard", str(tmp_path / "other.json")) == 2
    assert "another model's embeddings" in _one_line_error(capsys)
    assert not (tmp_path / "c").exists()


def test_existing_out_needs_force_and_force_replaces_only_a_bundle(synthetic_checkpoint, synthetic_bundle,
                                                                   tmp_path, capsys):
    out = tmp_path / "bundle"
    shutil.copytree(synthetic_bundle, out)
    before = (out / "model_card.json").read_bytes()
    assert _export(synthetic_checkpoint, out, "--seed", "1") == 2
    assert "exists; pass --force" in _one_line_error(capsys)
    assert (out / "model_card.json").read_bytes() == before
    capsys.readouterr()
    assert _export(synthetic_checkpoint, out, "--seed", "1", "--force", "--json") == 0
    summary = json.loads(capsys.readouterr().out)  # --json: exactly one JSON object
    assert summary["size_bytes"] == sum(p.stat().st_size for p in out.iterdir())
    assert summary["parity"]["max_diff"] <= 1e-4
    card = json.loads((out / "model_card.json").read_text())
    assert card["support_set"]["seed"] == 1 and {p.name for p in out.iterdir()} == BUNDLE_FILES
    _no_leftovers(tmp_path)

    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _export(synthetic_checkpoint, mine, "--force") == 2
    assert "holds no fsl-xai bundle" in _one_line_error(capsys)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_refused_model_leaves_nothing_and_names_what_is_supported(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "t.pt", "transductive", iterations=2)
    assert _export(checkpoint, tmp_path / "b") == 2
    message = _one_line_error(capsys)
    assert "transductive" in message and "supported" in message and "protonet" in message
    assert not (tmp_path / "b").exists()
    _no_leftovers(tmp_path)


def test_failure_while_building_leaves_nothing_half_made(synthetic_checkpoint, synthetic_bundle, tmp_path, capsys,
                                                         monkeypatch):
    import fsl_xai.deploy.onnx_export as onnx_export

    out = tmp_path / "bundle"
    shutil.copytree(synthetic_bundle, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", -1.0)  # every check now fails, after the ONNX file is written
    assert _export(synthetic_checkpoint, out, "--seed", "5", "--force") == 2
    assert "onnxruntime's outputs differ" in _one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _no_leftovers(tmp_path)


def test_bad_protocol_is_a_one_line_error(synthetic_checkpoint, tmp_path, capsys):
    checkpoint = synthetic_checkpoint
    assert _export(checkpoint, tmp_path / "b", "--classes", "round") == 2
    assert "at least two classes" in _one_line_error(capsys)
    assert main(["export-model", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--n-shot", "500",
                 "--no-progress", "--out", str(tmp_path / "b")]) == 2
    assert "n_shot" in _one_line_error(capsys)
    assert not (tmp_path / "b").exists()
    # the support set must be drawn from images the model can read: 3-channel PBC for a grey model
    assert main(["export-model", "--checkpoint", str(checkpoint), "--dataset", "pbc-blood-64", "--n-shot", "2",
                 "--no-progress", "--out", str(tmp_path / "b")]) == 2
    assert "--convert" in _one_line_error(capsys)


def test_an_exported_model_is_not_changed(tmp_path):
    checkpoint = _checkpoint(tmp_path / "m.pt", "finetune", steps=5)
    before = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert _export(checkpoint, tmp_path / "b") == 0
    after = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["rule"]["name"] == "linear"


def test_torch_export_based_exporter_also_matches_torch(tmp_path):
    """The exporter used where torch no longer has the TorchScript one."""
    import numpy as np

    from fsl_xai.deploy.onnx_export import check_parity, export_backbone
    from fsl_xai.deploy.predict import Bundle
    from fsl_xai.deploy.rules import scoring_rule

    images = load_dataset("synthetic", split="test", progress=False)
    model = tiny_model(channels=1, size=64, width=8)
    fitted = model.fit(torch.from_numpy(images.images[:8]), torch.arange(8) % 2)  # two classes of 4 images
    assert "dynamo=True" in export_backbone(model, tmp_path / "model.onnx", torch.from_numpy(images.images[:2]),
                                            dynamo=True)
    rule, arrays = scoring_rule(fitted)
    np.savez(tmp_path / "vectors.npz", **arrays)
    spec = {"model": "model.onnx", "input": "images", "arrays": "vectors.npz", "classes": ["a", "b"], "rule": rule,
            "transform": {"channels": 1, "height": 64, "width": 64}}
    (tmp_path / "bundle.json").write_text(json.dumps(spec))
    parity, _ = check_parity(Bundle(tmp_path), fitted, images.images[:40])
    assert parity.max_diff <= 1e-4 and parity.n_images == 40


def test_support_from_a_medmnist_file_converted_to_the_checkpoint(synthetic_checkpoint, shared_file, tmp_path,
                                                                  capsys):
    """--data-file with --convert: BreastMNIST ultrasound (28 px grey) for a 64 px grey model."""
    data = shared_file("medmnist_official/breastmnist.npz")
    out = tmp_path / "breast"
    args = ["export-model", "--checkpoint", str(synthetic_checkpoint), "--data-file", str(data), "--n-shot", "3",
            "--episodes", "5", "--n-query", "3", "--no-progress", "--out", str(out)]
    assert main(args) == 2 and "--convert" in _one_line_error(capsys)
    assert main([*args, "--convert"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["support_set"]["file"] == "breastmnist.npz" and card["support_set"]["split"] == "test"
    assert len(card["classes"]) == 2 and card["input"]["height"] == 64 and card["parity"]["max_diff"] <= 1e-4
