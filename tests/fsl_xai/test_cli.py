"""The ``fsl-xai`` command's contracts (other scripts call it): output formats and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from fsl_xai.checkpoints import load_checkpoint
from fsl_xai.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_checkpoint(data_dir, tmp_path_factory) -> Path:
    """A real (if barely trained) Conv-4 ProtoNet on the PBC base classes, via `fsl-xai train`."""
    out = tmp_path_factory.mktemp("ckpt") / "pbc.pt"
    code = main(["train", "--dataset", "pbc-blood", "--model", "protonet", "--backbone", "conv4",
                 "--n-way", "3", "--n-shot", "1", "--n-query", "2", "--episodes", "3", "--seed", "0",
                 "--no-val", "--no-progress", "--out", str(out)])
    assert code == 0
    return out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message on stderr"
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_train_writes_a_checkpoint_with_the_pbc_base_split(tiny_checkpoint, capsys):
    model, info = load_checkpoint(tiny_checkpoint)
    assert (info.model, info.backbone, info.in_channels, info.image_size) == ("protonet", "conv4", 3, (28, 28))
    assert info.dataset == "pbc-blood" and info.progress["finished"] and info.progress["episode"] == 3
    assert set(info.class_split["novel"]) == {"lymphocyte", "monocyte", "platelet"}
    assert set(info.classes) == {"basophil", "eosinophil", "erythroblast", "ig", "neutrophil"}


def test_train_prints_where_it_saved(data_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "m.pt"
    code = main(["train", "--dataset", "pbc-blood", "--n-way", "2", "--n-shot", "1", "--n-query", "1",
                 "--episodes", "1", "--no-val", "--no-progress", "--out", str(out)])
    assert code == 0 and out.exists()
    assert f"saved checkpoint to {out.resolve()}" in capsys.readouterr().out


def test_evaluate_json_and_predictions(tiny_checkpoint, tmp_path, capsys):
    preds = tmp_path / "preds.csv"
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "pbc-blood", "--n-way", "3",
                 "--n-shot", "2", "--n-query", "3", "--episodes", "12", "--seed", "1", "--json",
                 "--predictions", str(preds), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out.strip()
    summary = json.loads(out)  # exactly one JSON object on stdout
    assert {"accuracy", "ci95", "episodes", "n_way", "n_shot"} <= summary.keys()
    assert summary["episodes"] == 12 and summary["n_way"] == 3 and summary["n_shot"] == 2
    lo, hi = summary["ci95"]
    assert 0 <= lo <= summary["accuracy"] <= hi <= 1.0001
    assert sorted(summary["classes"]) == ["lymphocyte", "monocyte", "platelet"]  # the novel classes
    table = pd.read_csv(preds)
    assert len(table) == 12 * 3 * 3
    assert {"episode", "sample_id", "true_class", "pred_class", "correct", "margin"} <= set(table.columns)
    assert table["correct"].mean() == pytest.approx(summary["accuracy"])


def test_evaluate_conformal_sets(tiny_checkpoint, tmp_path, capsys):
    preds = tmp_path / "sets.csv"
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "pbc-blood", "--n-shot", "2",
            "--n-query", "3", "--episodes", "30", "--seed", "1", "--no-progress", "--conformal", "0.1"]
    assert main([*args, "--json", "--predictions", str(preds)]) == 0
    summary = json.loads(capsys.readouterr().out)
    conformal = summary["conformal"]
    assert conformal["alpha"] == 0.1 and conformal["n_queries"] == 30 * 9 and conformal["n_episodes"] == 30
    cov, size = conformal["coverage"], conformal["mean_set_size"]
    assert cov["n"] == size["n"] == 270 and cov["method"].startswith(("cluster_bootstrap", "wilson"))
    assert cov["ci95"][0] <= cov["estimate"] <= cov["ci95"][1] and 1 <= size["estimate"] <= 3
    calibration = conformal["calibration"]
    # calibrated on episodes of the val split with the same classes and protocol
    assert (calibration["split"], calibration["episodes"], calibration["seed"]) == ("val", 30, 1)
    assert calibration["n_calibration"] == 270 and calibration["threshold"] > 0
    table = pd.read_csv(preds)
    assert {"pred_set", "set_size"} <= set(table.columns) and table.set_size.between(1, 3).all()
    hit = [t in s.split("|") for t, s in zip(table.true_class, table.pred_set, strict=True)]
    assert sum(hit) / len(hit) == pytest.approx(cov["estimate"])
    # the accuracy is the plain evaluation's: the sets add to it, they change nothing
    assert main([*args[:-2], "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["accuracy"] == summary["accuracy"] and "conformal" not in plain
    # same split: other episodes (seed + 1); text output names coverage and set size
    assert main([*args, "--calibration-split", "test"]) == 0
    out = capsys.readouterr().out
    assert "coverage" in out and "mean set size" in out and "test split, 30 episodes (seed 2)" in out
    assert main([*args[:-1], "1.5"]) == 2
    assert "strictly between 0 and 1" in _one_line_error(capsys)
    assert main([*args[:-1], "0.01"]) == 2  # 30 episodes cannot place a 99% threshold
    assert "at least 99 are needed" in _one_line_error(capsys)


def test_evaluate_is_deterministic_by_seed(tiny_checkpoint, capsys):
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "pbc-blood", "--n-shot", "1",
            "--n-query", "2", "--episodes", "8", "--json", "--no-progress"]
    results = []
    for seed in ("3", "3", "4"):
        assert main([*args, "--seed", seed]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["accuracy"] == results[1]["accuracy"]
    assert results[0]["n_way"] == 3  # default: all novel classes, at most 5


def test_evaluate_data_file_and_classes(tiny_checkpoint, shared_file, capsys):
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data-file",
                 str(shared_file("pbc_blood/pbc_bloodlike_28.npz")), "--classes", "monocyte", "platelet",
                 "--n-way", "2", "--n-shot", "1", "--n-query", "2", "--episodes", "5", "--json", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == ["monocyte", "platelet"] and summary["n_way"] == 2


def test_real_subprocess_evaluate_json(tiny_checkpoint, data_dir):
    env = dict(os.environ, FSL_XAI_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "fsl_xai.cli", "evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset",
         "pbc-blood", "--split", "test", "--n-way", "3", "--n-shot", "1", "--n-query", "2", "--episodes", "6",
         "--seed", "0", "--json", "--threads", "1", "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert {"accuracy", "ci95", "episodes", "n_way", "n_shot"} <= summary.keys()
    assert summary["episodes"] == 6 and len(summary["ci95"]) == 2


def test_unknown_dataset_exits_2_with_a_clear_line(tmp_path, capsys):
    code = main(["train", "--dataset", "no-such-set", "--out", str(tmp_path / "x.pt")])
    assert code == 2
    line = _one_line_error(capsys)
    assert "unknown dataset 'no-such-set'" in line and "pbc-blood" in line


def test_unknown_model_and_backbone_exit_2(tmp_path, capsys):
    assert main(["train", "--dataset", "pbc-blood", "--model", "magicnet", "--out", str(tmp_path / "x.pt")]) == 2
    line = _one_line_error(capsys)
    assert "unknown model 'magicnet'" in line and "protonet" in line
    assert main(["train", "--dataset", "pbc-blood", "--backbone", "vit", "--out", str(tmp_path / "x.pt")]) == 2
    assert "unknown backbone 'vit'" in _one_line_error(capsys)


def test_missing_or_corrupt_checkpoint_exit_2(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--dataset", "pbc-blood"]) == 2
    assert "checkpoint not found" in _one_line_error(capsys)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main(["evaluate", "--checkpoint", str(bad), "--dataset", "pbc-blood"]) == 2
    assert "not a readable checkpoint" in _one_line_error(capsys)


def test_channel_mismatch_says_how_to_fix(tiny_checkpoint, data_dir, capsys):
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "breastmnist", "--n-way", "2",
                 "--episodes", "2", "--no-progress"])
    assert code == 2
    line = _one_line_error(capsys)
    assert "3-channel" in line and "1-channel" in line and "--convert" in line


def test_too_many_shots_exit_2(tiny_checkpoint, data_dir, capsys):
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "pbc-blood", "--n-shot", "400",
                 "--episodes", "2", "--no-progress"])
    assert code == 2
    assert "n_shot" in _one_line_error(capsys)


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--dataset", "pbc-blood"])  # --checkpoint missing
    assert exc.value.code == 2


def test_datasets_table(data_dir, capsys):
    assert main(["datasets", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    header, *lines = out.strip().splitlines()
    assert header.split()[:4] == ["NAME", "LOCAL", "CLASSES", "SIZE"]
    pbc = next(line for line in lines if line.startswith("pbc-blood "))
    assert "present" in pbc and "28x28" in pbc and "CC BY 4.0" in pbc
    assert any("downloadable" in line for line in lines)
    assert main(["datasets", "--json", "--data-dir", str(data_dir)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "status", "classes", "image_size", "licence"} <= rows[0].keys()


def test_lab_prepares_the_default_model_and_starts_jupyterlab_on_notebooks(tmp_path, monkeypatch, capsys):
    import fsl_xai.training as training
    from fsl_xai.checkpoints import CheckpointInfo
    from fsl_xai.testing import tiny_model

    calls = []

    def fake_default_model(dataset, model="protonet", progress=True, cache_dir=None):
        calls.append((dataset, model))
        m = tiny_model(channels=3, width=8)
        return m, CheckpointInfo.for_model(m, val_metrics={"best_val_accuracy": 0.5})

    monkeypatch.setattr(training, "default_model", fake_default_model)
    (tmp_path / "notebooks").mkdir()
    assert main(["lab", "--notebooks", str(tmp_path / "notebooks"), "--port", "8899", "--no-browser",
                 "--dry-run"]) == 0
    out = capsys.readouterr()
    from fsl_xai.cli import NOTEBOOK_DATASETS

    # every notebook dataset present here (the built-in synthetic set always is), in order
    assert [d for d, _ in calls] == [d for d in NOTEBOOK_DATASETS if (d, "protonet") in calls]
    assert calls[-1] == ("synthetic", "protonet")
    assert "-m jupyterlab" in out.out and f"--notebook-dir={tmp_path / 'notebooks'}" in out.out
    assert "--port=8899" in out.out
    calls.clear()
    assert main(["lab", "--notebooks", str(tmp_path / "notebooks"), "--dataset", "pbc-blood", "--dry-run"]) == 0
    assert calls == [("pbc-blood", "protonet")]
    capsys.readouterr()
    assert main(["prepare", "synthetic"]) == 0
    assert calls[-1] == ("synthetic", "protonet") and "is ready" in capsys.readouterr().err
    assert main(["lab", "--notebooks", str(tmp_path / "missing"), "--dry-run"]) == 2
    assert "no notebooks folder" in _one_line_error(capsys)


def test_lab_runs_as_root_and_passes_jupyter_options_through(tmp_path, monkeypatch, capsys):
    import fsl_xai.cli.lab as lab

    monkeypatch.setattr(lab, "prepare", lambda datasets, model: None)
    (tmp_path / "notebooks").mkdir()
    argv = ["lab", "--notebooks", str(tmp_path / "notebooks"), "--ip", "127.0.0.1", "--dry-run", "--",
            "--ServerApp.token=abc", "--ServerApp.open_browser=False"]
    monkeypatch.setattr(lab.os, "geteuid", lambda: 0)
    assert main(argv) == 0
    out = capsys.readouterr()
    cmd = out.out.split()
    assert "--allow-root" in cmd and "--ip=127.0.0.1" in cmd and "--" not in cmd
    assert cmd[-2:] == ["--ServerApp.token=abc", "--ServerApp.open_browser=False"]
    assert "running as root" in out.err
    monkeypatch.setattr(lab.os, "geteuid", lambda: 1000)
    assert main(argv) == 0
    assert "--allow-root" not in capsys.readouterr().out.split()


def test_study_subcommands_plug_in(monkeypatch, capsys):
    fake = types.ModuleType("fsl_xai.study.cli")

    def register(subparsers):
        p = subparsers.add_parser("study", help="trust studies")
        p.add_argument("--name", default="x")
        p.set_defaults(func=lambda args: print(f"study {args.name}") or 0)

    fake.register = register
    monkeypatch.setitem(sys.modules, "fsl_xai.study.cli", fake)
    assert main(["study", "--name", "pilot"]) == 0
    assert "study pilot" in capsys.readouterr().out
