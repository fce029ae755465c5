"""``--backbone timm:NAME | torchscript:PATH | py:MODULE:FUNCTION`` on ``fsl-xai train`` and
``fsl-xai evaluate`` (with a checkpoint, or a frozen network with prototypes), and their errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fsl_xai.checkpoints import load_checkpoint
from fsl_xai.cli import main
from fsl_xai.models.external import TORCHSCRIPT_INPUT_FILE
from fsl_xai.testing import quietly
from tests.fsl_xai.models import _factories as F

PY = "py:tests.fsl_xai.models._factories:"
EPISODE = ["--n-way", "2", "--n-shot", "1", "--n-query", "2", "--no-progress"]



@pytest.fixture(scope="module")
def ts_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli_ts")
    torch.manual_seed(4)
    quietly(torch.jit.save, quietly(torch.jit.script, F.SmallCNN()), str(folder / "cnn.pt"),
             _extra_files={TORCHSCRIPT_INPUT_FILE: json.dumps({"input_size": [1, 32, 32]})})
    traced = quietly(torch.jit.trace, F.MapCNN().eval(), torch.rand(1, 3, 32, 32))
    quietly(torch.jit.save, traced, str(folder / "map.pt"))
    return {"cnn": folder / "cnn.pt", "map": folder / "map.pt"}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err)
    return err[-1]


def _train(backbone: str, out: Path, *extra: str) -> int:
    return main(["train", "--dataset", "synthetic", "--backbone", backbone, "--episodes", "2", "--seed", "0",
                 "--no-val", "--out", str(out), "--n-way", "2", "--n-shot", "1", "--n-query", "1", "--no-progress",
                 *extra])


@pytest.mark.parametrize("kind", ["py", "torchscript"])
def test_train_then_evaluate_an_external_backbone(kind, ts_files, tmp_path, capsys):
    spec = PY + "small_cnn" if kind == "py" else f"torchscript:{ts_files['cnn']}"
    out = tmp_path / "m.pt"
    assert _train(spec, out) == 0
    err = capsys.readouterr().err
    assert f"backbone {spec}: input 1x32x32" in err and "converting synthetic images" in err
    model, info = load_checkpoint(out)
    assert info.backbone == spec and (info.in_channels, info.image_size) == (1, (32, 32))
    assert info.progress["finished"] and info.backbone_params["transform"]["channels"] == 1
    code = main(["evaluate", "--checkpoint", str(out), "--dataset", "synthetic", "--classes", "round", "ring",
                 "--episodes", "4", "--convert", "--json", *EPISODE])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backbone"] == spec and summary["input_transform"]["image_size"] == [32, 32]
    assert summary["n_predictions"] == 4 * 2 * 2 and 0 <= summary["accuracy"] <= 1
    assert summary["model_fingerprint"] == model.fingerprint()


def test_evaluate_a_frozen_network_with_prototypes(ts_files, capsys):
    code = main(["evaluate", "--backbone", f"torchscript:{ts_files['map']}", "--dataset", "synthetic",
                 "--input-channels", "3", "--episodes", "3", "--convert", "--json", *EPISODE])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["checkpoint"] is None and summary["model"] == "protonet"
    transform = summary["input_transform"]  # the network states nothing: the data's size, the option's channels
    assert (transform["channels"], transform["image_size"]) == (3, [64, 64])
    assert transform["sources"] == {"image_size": "default", "channels": "option", "normalisation": "default"}
    assert summary["n_predictions"] == 3 * 2 * 2 and summary["ci95"][0] <= summary["accuracy"] <= summary["ci95"][1]
    assert "Grad-CAM layer output_map" in captured.err


def test_evaluate_options_state_the_transform(capsys):
    code = main(["evaluate", "--backbone", PY + "small_vit", "--dataset", "synthetic", "--episodes", "2",
                 "--input-size", "32", "--normalise", "half", "--convert", "--json", *EPISODE])
    assert code == 0
    transform = json.loads(capsys.readouterr().out)["input_transform"]
    assert transform["mean"] == [0.5] and transform["std"] == [0.5]
    assert transform["sources"] == {"image_size": "option", "channels": "model", "normalisation": "option"}


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--backbone", "py:no_such_package.nets:make"], "cannot import module 'no_such_package.nets'"),
    (["train", "--backbone", "torchscript:/no/such/net.pt"], "file not found"),
    (["train", "--backbone", "onnx:model.onnx"], "backbone spec 'onnx:model.onnx' is not understood"),
    (["train", "--backbone", "py:just_a_module"], "py:MODULE:FUNCTION"),
    (["train", "--backbone", PY + "not_a_module"], "not a torch nn.Module"),
    (["train", "--backbone", PY + "three_d_output"], r"it must return embeddings \(N, D\) or a spatial map"),
    (["train", "--backbone", PY + "map_cnn", "--input-channels", "1"],
     r"fails on 1-channel 64x64 images \(RuntimeError: .*to have 3 channels"),
    (["train", "--backbone", "conv4", "--input-size", "32"], "--input-size apply to external backbones"),
    (["train", "--backbone", PY + "small_cnn", "--normalise", "1", "2", "3"], "--normalise 1 2 3 is not understood"),
    (["evaluate", "--backbone", "conv4"], "without a checkpoint would have random weights"),
    (["evaluate", "--backbone", PY + "small_cnn"], "expects 1-channel 32x32 images but synthetic has .*--convert"),
])
def test_backbone_errors_are_one_line(args, message, tmp_path, capsys):
    if args[0] == "train":
        full = [*args, "--dataset", "synthetic", "--episodes", "1", "--no-val", "--no-progress",
                "--out", str(tmp_path / "x.pt")]
    else:
        full = [*args, "--dataset", "synthetic", "--episodes", "1", "--no-progress"]
    assert main(full) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"fsl-xai {args[0]}: error:")
    assert re.search(message, line), line
    assert not (tmp_path / "x.pt").exists()


def test_external_options_need_an_external_backbone_on_evaluate(ts_files, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert _train(PY + "small_cnn", out) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--dataset", "synthetic", "--normalise", "imagenet",
                 "--no-progress"]) == 2
    assert "a checkpoint states its backbone's input" in _one_line_error(capsys)


def test_checkpoint_and_backbone_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", "a.pt", "--backbone", PY + "small_cnn", "--dataset", "synthetic"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def _timm_importable() -> bool:
    try:
        import timm  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(_timm_importable(), reason="timm imports here; the missing-timm message cannot be shown")
def test_timm_without_timm_says_how_to_install_it(tmp_path, capsys):
    code = main(["train", "--dataset", "synthetic", "--backbone", "timm:resnet18", "--episodes", "1", "--no-val",
                 "--no-progress", "--out", str(tmp_path / "x.pt")])
    assert code == 2 and "pip install timm" in _one_line_error(capsys)


@pytest.mark.skipif(not _timm_importable(),
                    reason="timm is not importable here (it needs torchvision, which does not import with this torch)")
# resnet10t's layer4 is 1x1 at 32 px, not a map: its layer3 (2x2) is the last one
@pytest.mark.parametrize(("name", "layer"), [("resnet10t", "net.layer3"), ("vit_tiny_patch16_224", "token_map")])
def test_timm_train_then_evaluate_on_grey_images(name, layer, tmp_path, capsys):  # pragma: no cover - needs timm
    """timm: a CNN and a ViT, both on 1-channel 32x32 images (the ViT is built for that size; the
    model's ImageNet normalisation is averaged to one channel), trained, then evaluated."""
    from fsl_xai.explain import explain

    out = tmp_path / "m.pt"
    assert _train(f"timm:{name}", out, "--input-size", "32", "--input-channels", "1") == 0
    err = capsys.readouterr().err
    assert f"backbone timm:{name}: input 1x32x32" in err and "averaged over its channels" in err
    assert f"Grad-CAM layer {layer}" in err
    code = main(["evaluate", "--checkpoint", str(out), "--dataset", "synthetic", "--classes", "round", "ring",
                 "--episodes", "2", "--convert", "--json", *EPISODE])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backbone"] == f"timm:{name}" and summary["input_transform"]["image_size"] == [32, 32]
    model, _ = load_checkpoint(out)
    assert model.backbone.default_cam_layer == layer
    fitted = model.eval().fit(torch.rand(4, 1, 32, 32), torch.tensor([0, 0, 1, 1]))
    cam = explain(fitted, torch.rand(1, 1, 32, 32), method="gradcam")
    assert cam.params["layer"] == layer and cam.maps.shape == (1, 32, 32) and abs(cam.maps).max() > 0
