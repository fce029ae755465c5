"""Every registered explanation method on every kind of external backbone: it works, or it says
clearly why it cannot. Also the default layer (Grad-CAM, similarity maps, concept activations)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fsl_xai.errors import ModelError
from fsl_xai.explain import explain, similarity_map
from fsl_xai.explain.concepts import layer_activations
from fsl_xai.explain.core import conv_layers, default_layer, resolve_layer
from fsl_xai.explain.methods import METHODS
from fsl_xai.models import make_backbone, make_model
from fsl_xai.models.external import TORCHSCRIPT_INPUT_FILE
from fsl_xai.testing import quietly
from tests.fsl_xai.models import _factories as F

PY = "py:tests.fsl_xai.models._factories:"
#: cheap settings, so that the whole grid runs in seconds
CHEAP = {"integrated_gradients": {"n_steps": 4}, "gradient_shap": {"n_samples": 2},
         "smoothgrad": {"nt_samples": 2}, "smoothgrad_ig": {"nt_samples": 2, "n_steps": 4}}
#: (backbone kind, method) -> what the refusal must say; every other pair must work
REFUSED = {
    ("vit", "deeplift"): "deeplift has no rule for .*MultiheadAttention",
    ("vit", "guided_backprop"): "passes only positive gradients back through nn.ReLU modules.*has no nn.ReLU",
    ("vit", "guided_gradcam"): "passes only positive gradients back through nn.ReLU modules.*has no nn.ReLU",
    ("torchscript", "deeplift"): "is TorchScript and its modules run inside compiled code",
    ("torchscript", "guided_backprop"): "is TorchScript and its modules run inside compiled code",
    ("torchscript", "guided_gradcam"): "is TorchScript and its modules run inside compiled code",
    ("torchscript", "gradcam"): "has no layer for layer methods .*compiled TorchScript code",
    ("torchscript_map", "deeplift"): "is TorchScript",
    ("torchscript_map", "guided_backprop"): "is TorchScript",
    ("torchscript_map", "guided_gradcam"): "is TorchScript",
}
KINDS = ("cnn", "vit", "map_cnn", "torchscript", "torchscript_map")



@pytest.fixture(scope="module")
def ts_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ts_explain")
    torch.manual_seed(2)
    stated = json.dumps({"input_size": [1, 32, 32]})
    quietly(torch.jit.save, quietly(torch.jit.script, F.SmallCNN()), str(folder / "cnn.pt"),
             _extra_files={TORCHSCRIPT_INPUT_FILE: stated})
    traced = quietly(torch.jit.trace, F.MapCNN().eval(), torch.rand(1, 3, 32, 32))
    quietly(torch.jit.save, traced, str(folder / "map.pt"))
    return folder


@pytest.fixture(scope="module")
def episodes(ts_folder):
    """kind -> (fitted episode, two query images); 3 classes of 2 random support images each."""
    specs = {"cnn": (PY + "small_cnn", 1), "vit": (PY + "small_vit", 1), "map_cnn": (PY + "map_cnn", 3),
             "torchscript": (f"torchscript:{ts_folder / 'cnn.pt'}", 1),
             "torchscript_map": (f"torchscript:{ts_folder / 'map.pt'}", 3)}
    out = {}
    for kind, (spec, c) in specs.items():
        torch.manual_seed(0)
        model = make_model("protonet", make_backbone(spec, c, 32)).eval()
        support = torch.rand(6, c, 32, 32)
        out[kind] = (model.fit(support, torch.tensor([0, 0, 1, 1, 2, 2])), torch.rand(2, c, 32, 32))
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_works_or_says_why_not(episodes, kind, method):
    fitted, queries = episodes[kind]
    refusal = REFUSED.get((kind, method))
    if refusal is not None:
        with pytest.raises(ModelError, match=refusal):
            explain(fitted, queries, method=method, **CHEAP.get(method, {}))
        return
    result = explain(fitted, queries, method=method, **CHEAP.get(method, {}))
    assert result.maps.shape == (2, 32, 32) and np.isfinite(result.maps).all()
    assert np.abs(result.maps).max() > 0, f"{method} on {kind} gave an all-zero map"
    if METHODS[method].layer_method:
        assert result.params["layer"] == default_layer(fitted)


def test_default_layers(episodes):
    expected = {"cnn": "net.features", "vit": "token_map", "map_cnn": "output_map", "torchscript_map": "output_map"}
    for kind, layer in expected.items():
        fitted, _ = episodes[kind]
        assert default_layer(fitted) == layer
        assert resolve_layer(fitted)[0] == f"backbone.{layer}" and layer in conv_layers(fitted)
    assert conv_layers(episodes["torchscript"][0]) == []


def test_a_plain_module_backbone_gets_its_layer_from_a_dry_run():
    """A backbone that is a bare nn.Module stating its input, with no default layer of its own."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    net.in_channels, net.image_size = 1, (16, 16)
    fitted = make_model("protonet", net).eval().fit(torch.rand(4, 1, 16, 16), torch.tensor([0, 0, 1, 1]))
    assert default_layer(fitted) == "4"  # the last ReLU: the pooling's 1x1 output is not a map
    assert explain(fitted, torch.rand(1, 1, 16, 16), method="gradcam").maps.shape == (1, 16, 16)
    del net.in_channels
    with pytest.raises(ModelError, match="has no default layer for layer methods; pass layer="):
        default_layer(fitted)


def test_vit_token_map_feeds_gradcam_and_concepts(episodes):
    fitted, queries = episodes["vit"]
    acts = layer_activations(fitted, queries)  # the default layer's output, flattened
    assert acts.shape == (2, 24 * 4 * 4)
    cam = explain(fitted, queries, method="gradcam")
    # Grad-CAM's map is constant on each of the 4x4 patches before upsampling: it varies across the image
    assert cam.maps[0, :8, :8].std() < cam.maps[0].std()


@pytest.mark.parametrize("kind", ["cnn", "vit", "map_cnn", "torchscript_map"])
def test_similarity_maps_on_external_backbones(episodes, kind):
    fitted, queries = episodes[kind]
    sim = similarity_map(fitted, queries[0])
    assert sim.maps.shape == (3, 32, 32) and np.isfinite(sim.maps).all()


def test_similarity_map_on_a_torchscript_embedding_network_says_why_not(episodes):
    fitted, queries = episodes["torchscript"]
    with pytest.raises(ModelError, match="no spatial feature map"):
        similarity_map(fitted, queries[0])
