"""``fsl-xai guard``: one JSON object with the guard's AUROC on real data, and clear errors.

The checkpoint is a Conv-4 ProtoNet trained for a few episodes here, so the numbers do not depend
on bit-exact trained weights: the assertions are properties with wide margins (measured: AUROC
1.000 against RetinaMNIST and MedNIST, 4-5% of held-in test images flagged).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fsl_xai.cli import main
from fsl_xai.guard import DomainGuard
from fsl_xai.testing import make_imageset

KEYS = {"auroc", "fpr_at_95_tpr", "n_in", "n_ood", "threshold", "method", "k", "in_flag_rate", "ood_flag_rate"}


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory) -> Path:
    """A barely trained Conv-4 ProtoNet on the PBC base classes (28 px RGB), via `fsl-xai train`."""
    out = tmp_path_factory.mktemp("guard-ckpt") / "pbc.pt"
    code = main(["train", "--dataset", "pbc-blood", "--n-way", "3", "--n-shot", "1", "--n-query", "2",
                 "--episodes", "3", "--seed", "0", "--no-val", "--no-progress", "--out", str(out)])
    assert code == 0
    return out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err)
    return err[-1]


def test_guard_json_against_another_modality(checkpoint, tmp_path, capsys):
    card = tmp_path / "guard.json"
    code = main(["guard", "--checkpoint", str(checkpoint), "--dataset", "pbc-blood", "--split", "test",
                 "--ood-dataset", "retinamnist", "--json", "--no-progress", "--save-guard", str(card)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert KEYS <= summary.keys()
    assert (summary["n_in"], summary["n_ood"]) == (3417, 400)  # PBC test split, RetinaMNIST test split
    assert summary["auroc"] > 0.9 and summary["fpr_at_95_tpr"] < 0.3
    assert (summary["method"], summary["k"], summary["quantile"]) == ("knn", 5, 0.95)
    assert (summary["n_reference"], summary["n_calibration"]) == (11965, 1710)  # train and val splits
    assert 0.01 < summary["in_flag_rate"] < 0.12  # calibrated for 5% on the val split
    assert summary["ood_flag_rate"] > 0.8
    guard = DomainGuard.load(card)  # the saved guard is the one measured, and can score
    assert guard.threshold == summary["threshold"] and guard.reference_ is not None
    assert summary["guard_file"] == str(card)


def test_guard_data_files_convert_and_plain_output(checkpoint, shared_file, capsys):
    pbc = shared_file("pbc_blood/pbc_bloodlike_28.npz")
    mednist = shared_file("mednist/mednist_64_500perclass.npz")  # 64 px grey: needs --convert
    args = ["guard", "--checkpoint", str(checkpoint), "--data-file", str(pbc), "--ood-data-file", str(mednist),
            "--no-progress"]
    assert main(args) == 2
    line = _one_line_error(capsys)
    assert "--convert" in line and "1-channel 64x64" in line
    assert main([*args, "--convert", "--k", "3"]) == 0
    out = capsys.readouterr().out.strip()
    assert "AUROC" in out and "k=3" in out and "of 600 mednist_64_500perclass test images" in out
    auc = float(out.split("AUROC ")[1].split(",")[0])
    assert auc > 0.9


def test_guard_holds_calibration_out_of_train_without_a_val_split(checkpoint, tmp_path, capsys):
    images = make_imageset(n_classes=2, n_per_class=100, channels=3, size=28, seed=0)
    pixels = np.round(images.images.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    labels = images.labels.reshape(-1, 1).astype(np.uint8)
    own = tmp_path / "own.npz"
    np.savez(own, train_images=pixels[::2], train_labels=labels[::2], test_images=pixels[1::2],
             test_labels=labels[1::2])
    code = main(["guard", "--checkpoint", str(checkpoint), "--data-file", str(own), "--ood-dataset", "synthetic",
                 "--convert", "--json", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n_reference"], summary["n_calibration"], summary["n_in"]) == (80, 20, 100)
    assert "20% of the train split (seed 0)" in summary["calibration_data"]


def test_guard_refuses_a_split_it_was_fitted_on(checkpoint, capsys):
    code = main(["guard", "--checkpoint", str(checkpoint), "--dataset", "pbc-blood", "--split", "val",
                 "--ood-dataset", "retinamnist", "--json"])
    assert code == 2
    assert "--split test" in _one_line_error(capsys)


def test_guard_needs_an_out_of_distribution_set(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["guard", "--checkpoint", str(checkpoint), "--dataset", "pbc-blood", "--json"])
    assert exit_info.value.code == 2
    assert "--ood-dataset" in capsys.readouterr().err


def test_evaluate_with_a_saved_guard(checkpoint, tmp_path, capsys):
    card = tmp_path / "guard.json"
    assert main(["guard", "--checkpoint", str(checkpoint), "--dataset", "pbc-blood", "--ood-dataset", "retinamnist",
                 "--json", "--no-progress", "--save-guard", str(card)]) == 0
    capsys.readouterr()
    preds = tmp_path / "preds.csv"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--dataset", "pbc-blood", "--n-shot", "2", "--n-query", "3",
            "--episodes", "20", "--no-progress"]
    assert main([*args, "--guard", str(card), "--json", "--predictions", str(preds)]) == 0
    summary = json.loads(capsys.readouterr().out)
    guard = summary["guard"]
    table = pd.read_csv(preds)
    assert {"ood_score", "ood_flag"} <= set(table.columns) and len(table) == 20 * 9 == guard["n_queries"]
    assert guard["n_flagged"] == table.ood_flag.sum() == summary["flagged_included"]
    assert guard["n_flagged"] < 0.2 * len(table)  # held-in queries: about 5% flagged
    assert guard["threshold"] == DomainGuard.load(card).threshold and guard["file"] == str(card)
    with_flagged, without = guard["accuracy_with_flagged"], guard["accuracy_without_flagged"]
    assert with_flagged["flagged_included"] == guard["n_flagged"] and without["flagged_included"] == 0
    assert with_flagged["n"] == 180 and without["n"] == 180 - guard["n_flagged"]
    assert with_flagged["estimate"] == pytest.approx(table.correct.mean())
    assert without["estimate"] == pytest.approx(table.correct[~table.ood_flag].mean())
    assert guard["flagged_rate"]["estimate"] == pytest.approx(table.ood_flag.mean())
    for interval in (with_flagged, without, guard["flagged_rate"]):
        low, high = interval["ci95"]
        assert low <= interval["estimate"] <= high
    assert main([*args, "--json"]) == 0  # without the guard: the same accuracy, no guard keys
    plain = json.loads(capsys.readouterr().out)
    assert plain["accuracy"] == summary["accuracy"] and "guard" not in plain and "flagged_included" not in plain
    assert main([*args, "--guard", str(card)]) == 0
    assert "flagged queries included" in capsys.readouterr().out
    # a guard of another model is refused with a way out
    other = tmp_path / "other.pt"
    assert main(["train", "--dataset", "pbc-blood", "--n-way", "3", "--n-shot", "1", "--n-query", "2",
                 "--episodes", "1", "--seed", "5", "--no-val", "--no-progress", "--out", str(other)]) == 0
    capsys.readouterr()
    args[2] = str(other)
    assert main([*args, "--guard", str(card)]) == 2
    assert "another model's embeddings" in _one_line_error(capsys)
    card.with_suffix(".npz").unlink()  # a guard without its reference embeddings cannot score
    args[2] = str(checkpoint)
    assert main([*args, "--guard", str(card)]) == 2
    assert ".npz" in _one_line_error(capsys)
