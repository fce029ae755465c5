"""open_images: one call for a MedMNIST-format npz, an image folder (+ CSV) or a DICOM folder, with
the class names the source carries; clear errors for anything else; `--data-file` takes them all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fsl_xai.checkpoints import CheckpointInfo, save_checkpoint
from fsl_xai.cli import main
from fsl_xai.data.open import detect_kind, open_images
from fsl_xai.errors import DataError, DatasetNotFoundError
from fsl_xai.testing import tiny_model

from .conftest import make_npz_bytes

COLOURS = {"cyst": 40, "mass": 200}


def _png(path: Path, grey: int, seed: int, size: int = 12) -> None:
    rng = np.random.default_rng(seed)
    values = np.clip(grey + rng.integers(-20, 20, (size, size)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)


@pytest.fixture
def class_folder(tmp_path) -> Path:
    root = tmp_path / "scans"
    for c, grey in COLOURS.items():
        for i in range(4):
            _png(root / c / f"img{i}.png", grey, seed=i)
    return root


def test_npz_names_come_from_the_file_or_the_registry(tmp_path, shared_file):
    named = tmp_path / "named.npz"
    named.write_bytes(make_npz_bytes(class_names=("benign", "malignant")))
    assert detect_kind(named) == "npz"
    assert open_images(named, split="train").class_names == ("benign", "malignant")
    plain = tmp_path / "plain.npz"
    plain.write_bytes(make_npz_bytes())
    assert open_images(plain).class_names == ("0", "1")  # nothing known: the labels as they are
    # an official MedMNIST file saved anywhere has no class_names: the registry knows them
    copy = tmp_path / "elsewhere" / "breastmnist.npz"
    copy.parent.mkdir()
    shutil.copy(shared_file("medmnist_official/breastmnist.npz"), copy)
    images = open_images(copy, split="val")
    assert images.class_names == ("malignant", "normal, benign") and len(images) == 78
    # a file of another size with that name is not taken for it
    impostor = tmp_path / "other" / "breastmnist.npz"
    impostor.parent.mkdir()
    impostor.write_bytes(make_npz_bytes())
    assert open_images(impostor).class_names == ("0", "1")
    assert len(open_images(named, split="all")) == 18


def test_image_folder_with_class_folders_and_split_folders(class_folder, tmp_path):
    assert detect_kind(class_folder) == "folder"
    images = open_images(class_folder)
    assert images.class_names == ("cyst", "mass") and len(images) == 8
    assert images.images[images.labels == 1].mean() > images.images[images.labels == 0].mean()
    with pytest.raises(DataError, match="no separate validation images"):
        open_images(class_folder, split="val")
    split_root = tmp_path / "splits"
    shutil.copytree(class_folder, split_root / "train")
    shutil.copytree(class_folder / "mass", split_root / "test" / "mass")
    shutil.copytree(class_folder / "cyst", split_root / "test" / "cyst")
    assert len(open_images(split_root, split="train")) == 8
    with pytest.raises(DataError, match="no 'val'"):
        open_images(split_root, split="val")


def test_image_folder_with_a_csv_and_its_split_column(tmp_path):
    root = tmp_path / "flat"
    rows = []
    for i in range(9):
        name = "benign" if i % 3 else "malignant"
        _png(root / f"p{i}.png", 60 if name == "benign" else 190, seed=i)
        rows.append({"path": f"p{i}.png", "label": name, "split": "train" if i < 6 else "test", "site": "A"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)  # the folder's only CSV: found by itself
    train = open_images(root, split="train")
    assert train.class_names == ("benign", "malignant") and len(train) == 6
    assert set(train.metadata["site"]) == {"A"}
    assert len(open_images(root, split="test")) == 3 and len(open_images(root, split="all")) == 9
    with pytest.raises(DataError, match="no rows of split 'val'"):
        open_images(root, split="val")
    elsewhere = tmp_path / "my_labels.csv"
    pd.DataFrame(rows).drop(columns="split").to_csv(elsewhere, index=False)
    assert len(open_images(root, labels_csv=elsewhere)) == 9


def test_dicom_folder_with_class_folders_and_a_csv(tmp_path):
    pytest.importorskip("pydicom")
    from tests.fsl_xai.dicom.conftest import identifying_values, write_identified

    root = tmp_path / "dicoms"
    write_identified(root / "knee" / "a.dcm", "p1", 0)
    write_identified(root / "knee" / "b.dcm", "p1", 1)
    write_identified(root / "head" / "c.dcm", "p2", 2, source="CT_small.dcm")
    (root / "notes.txt").write_text("not an image")
    assert detect_kind(root) == "dicom"
    images = open_images(root, size=16)
    assert images.class_names == ("head", "knee") and images.images.shape == (3, 1, 16, 16)
    text = images.metadata.to_csv()
    assert not [v for v in identifying_values() if v and v in text]
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"file": ["a.dcm", "c.dcm"], "label": ["normal", "lesion"]}).to_csv(csv, index=False)
    labelled = open_images(root, labels_csv=csv, size=16)
    assert labelled.class_names == ("lesion", "normal") and len(labelled) == 2
    assert {f for f, _ in labelled.skipped} >= {"knee/b.dcm", "notes.txt"}


def test_anything_else_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        open_images(tmp_path / "nothing")
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, tiny_model(), CheckpointInfo.for_model(tiny_model()))
    with pytest.raises(DataError, match="checkpoint"):
        open_images(ckpt)
    table = tmp_path / "t.csv"
    table.write_text("path,label\n")
    with pytest.raises(DataError, match="labels"):
        open_images(table)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="corrupt"):
        open_images(broken)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "readme.md").write_text("hi")
    with pytest.raises(DataError, match=r"'\.md'\] and no images or DICOM files"):
        open_images(docs)
    with pytest.raises(DataError, match="unknown split"):
        open_images(docs, split="training")


@pytest.fixture
def grey_checkpoint(tmp_path) -> Path:
    """An untrained grey 16 px Conv-4 ProtoNet (evaluate only needs a model, not a good one)."""
    model = tiny_model(channels=1, size=16)
    path = tmp_path / "grey16.pt"
    save_checkpoint(path, model, CheckpointInfo.for_model(model, classes=("base",)))
    return path


def _evaluate(checkpoint: Path, data: Path, capsys) -> dict:
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--data-file", str(data), "--convert", "--n-way", "2",
                 "--n-shot", "1", "--n-query", "1", "--episodes", "4", "--json", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_cli_data_file_takes_an_image_folder(grey_checkpoint, class_folder, capsys):
    report = _evaluate(grey_checkpoint, class_folder, capsys)
    assert report["classes"] == ["cyst", "mass"] and report["dataset"] == "scans"
    assert report["n_predictions"] == 4 * 2 and 0 <= report["accuracy"] <= 1


def test_cli_data_file_takes_a_dicom_folder(grey_checkpoint, tmp_path, capsys):
    pytest.importorskip("pydicom")
    from tests.fsl_xai.dicom.conftest import identifying_values, write_identified

    root = tmp_path / "dicoms"
    for i, (c, source) in enumerate([("knee", "MR_small.dcm")] * 2 + [("head", "CT_small.dcm")] * 2):
        write_identified(root / c / f"{i}.dcm", "p1" if c == "knee" else "p2", i, source=source)
    report = _evaluate(grey_checkpoint, root, capsys)
    assert report["classes"] == ["head", "knee"] and report["n_predictions"] == 4 * 2
    text = json.dumps(report)
    assert not [v for v in identifying_values() if v and v in text]


def test_cli_data_file_error_is_one_line(grey_checkpoint, tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(grey_checkpoint), "--data-file", str(grey_checkpoint),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "checkpoint, not images" in err[0]
